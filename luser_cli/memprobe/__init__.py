"""``luser memprobe``: the largest batch that trains on a GPU of N GB, with or without that GPU.

* :mod:`~luser_cli.memprobe.search`: exact binary search with a monotone ``fits(batch)`` oracle;
* :mod:`~luser_cli.memprobe.tracker`: live tensor storage counted by a ``TorchDispatchMode``;
* :mod:`~luser_cli.memprobe.oracle`: the ``fits(batch)`` protocol both oracles follow, running
  one full ``luser train`` step: :mod:`~luser_cli.memprobe.cuda_oracle` (a real capped GPU) and
  :mod:`~luser_cli.memprobe.sim_oracle` (fake tensors + a stated
  :mod:`~luser_cli.memprobe.allowance`); :mod:`~luser_cli.memprobe.radon_stand_in`: the CT
  operator the ``sim`` oracle runs; :mod:`~luser_cli.memprobe.presets`: which preset is measured;
* :mod:`~luser_cli.memprobe.probe`: the task x model x capacity search, JSON rows;
  :mod:`~luser_cli.memprobe.table`: the rows laid out like paper Table 3;
* :mod:`~luser_cli.memprobe.paper`: paper Table 3, for side-by-side output.

Submodules are imported on demand (``import luser_cli.memprobe`` does not import torch).
"""
