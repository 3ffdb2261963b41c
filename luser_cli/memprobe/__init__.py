"""``luser memprobe``: the largest batch that trains on a GPU of N GB, with or without that GPU.

* :mod:`~luser_cli.memprobe.search`: exact binary search with a monotone ``fits(batch)`` oracle;
* :mod:`~luser_cli.memprobe.tracker`: live tensor storage counted by a ``TorchDispatchMode``;
* :mod:`~luser_cli.memprobe.oracles`: ``cuda`` (a real capped GPU) and ``sim`` (fake tensors +
  a stated allowance) oracles, both running one full ``luser train`` step;
* :mod:`~luser_cli.memprobe.probe`: the task x model x capacity table, JSON rows, rendering;
* :mod:`~luser_cli.memprobe.paper`: paper Table 3, for side-by-side output.

Submodules are imported on demand (``import luser_cli.memprobe`` does not import torch).
"""
