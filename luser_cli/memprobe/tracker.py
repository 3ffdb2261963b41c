"""Peak of live tensor storage, tracked by a small ``TorchDispatchMode``.

Every ATen call that runs under :class:`StorageTracker` is inspected on its way out: each output
tensor whose *storage* has not been seen before adds ``storage.nbytes()`` to a running total,
and a ``weakref.finalize`` on that storage subtracts it again when the storage is freed. The
maximum of the running total is the peak of live tensor storage (bytes). Views and in-place
results share an already-counted storage and add nothing; a storage that grows (``resize_``,
``out=`` arguments) is re-measured.

Why not ``torch.distributed._tools.mem_tracker.MemTracker``? It also tracks module hooks and
the autograd engine, and fails as soon as a backward pass calls ``torch.autograd.grad``
("A leaf node was passed to _will_engine_execute_node but we are currently running
autograd.grad()"), which is exactly what the implicit backward of the equilibrium models does.
Counting storages at the dispatcher works for any backward, and on real and fake tensors alike
(under ``FakeTensorMode`` a fake tensor's storage reports the ``nbytes`` it would have).

What is counted: every tensor storage created while the mode is active (parameters and buffers
built inside it, gradients, optimiser state, inputs, activations, autograd's saved tensors,
solver histories, temporaries). What is not: storages created before the mode was entered
(they can be registered with :meth:`StorageTracker.track`), and memory that is not a tensor
(the CUDA context, cuDNN workspaces, allocator rounding: see :mod:`luser_cli.memprobe.allowance`).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_iter
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["StorageTracker", "track_training_state"]

#: Ops that never return a tensor (``tensor.device`` on a fake tensor is one such call).
_NO_TENSOR_OUTPUT = frozenset({torch.ops.prim.device.default})


class _Counter:
    """The live total and its peak, in bytes (held by the finalizers, so it outlives the mode)."""

    __slots__ = ("count", "live", "peak")

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.count = 0  # storages registered

    def add(self, nbytes: int) -> None:
        self.live += nbytes
        if self.live > self.peak:
            self.peak = self.live

    def remove(self, nbytes: list[int]) -> None:
        self.live -= nbytes[0]


class StorageTracker(TorchDispatchMode):
    """Track the live total and the peak of tensor storage (bytes) of everything run inside.

    ``block_bytes`` rounds every storage up to a multiple of it (default 1: exact bytes).

    Usage::

        with FakeTensorMode(), StorageTracker() as tracker:
            ...  # build the model, run a training step
        tracker.peak  # bytes

    The tracker must be entered *inside* ``FakeTensorMode`` (it then sees fake outputs). It is
    not thread safe in the sense of counting storages made by other threads concurrently
    running other work; autograd's backward on CPU runs in the calling thread, and the
    dispatch-mode stack is propagated to autograd's worker threads.
    """

    def __init__(self, block_bytes: int = 1) -> None:
        super().__init__()
        if block_bytes < 1:
            raise ValueError(f"block_bytes must be at least 1, got {block_bytes}")
        #: Every storage is counted rounded up to a multiple of this (512 = the CUDA caching
        #: allocator's smallest block, so the peak compares with ``max_memory_allocated``).
        self.block_bytes = block_bytes
        self._counter = _Counter()
        # storage -> [nbytes] (a one-element list shared with the storage's finalizer)
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()

    # -- results ---------------------------------------------------------------------------------
    @property
    def live(self) -> int:
        """Bytes of tensor storage alive now (of the storages this tracker registered)."""
        return self._counter.live

    @property
    def peak(self) -> int:
        """Largest value ``live`` reached, bytes."""
        return self._counter.peak

    @property
    def storages(self) -> int:
        """Number of distinct storages registered so far."""
        return self._counter.count

    def reset_peak(self) -> None:
        """Restart the peak from the current live total."""
        self._counter.peak = self._counter.live

    # -- registration ----------------------------------------------------------------------------
    def track(self, *tensors: Any) -> None:
        """Register the storages of ``tensors`` (any pytree of tensors), e.g. ones made before
        the mode was entered. Already registered storages are not counted twice."""
        for t in tree_iter(tensors):
            if isinstance(t, Tensor):
                self._register(t)

    def _register(self, t: Tensor) -> None:
        if t.is_sparse or t.layout != torch.strided:
            return  # sparse/CSR tensors have no single storage; none are made in a train step
        try:
            storage = t.untyped_storage()
        except (NotImplementedError, RuntimeError):
            return  # tensors without storage (e.g. some wrapper subclasses)
        nbytes = -(-int(storage.nbytes()) // self.block_bytes) * self.block_bytes
        size = self._sizes.get(storage)
        if size is not None:
            if size[0] != nbytes:  # resized in place (out= or resize_)
                self._counter.add(nbytes - size[0])
                size[0] = nbytes
            return
        size = [nbytes]
        self._sizes[storage] = size
        self._counter.count += 1
        self._counter.add(nbytes)
        weakref.finalize(storage, self._counter.remove, size)

    # -- the dispatch hook -----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if func in _NO_TENSOR_OUTPUT:  # about half the calls under fake tensors
            return out
        for t in tree_iter(out):
            if isinstance(t, Tensor):
                self._register(t)
        return out


def track_training_state(tracker: StorageTracker, model: Any, optimizer: Any, batch: Any) -> None:
    """Register everything alive before a training step: the model's parameters and buffers,
    the optimiser's state, the batch (``x``, ``y``, ``x0``) and its operator's buffers."""
    tracker.track(
        list(model.parameters()),
        list(model.buffers()),
        [s for state in optimizer.state.values() for s in state.values()],
        [batch.x, batch.y, batch.x0],
        list(batch.op.buffers()),
    )
