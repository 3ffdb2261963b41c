"""Distributed data parallel training on PyTorch's own engine (``torchrun`` + DDP).

``torchrun --standalone --nproc-per-node N -m luser_cli train ...`` (or, across machines,
``torchrun --nnodes M --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT ...``) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:meth:`DistContext.from_env` then initialises the process group from them (NCCL on CUDA, gloo
on CPU). Each rank takes every N-th item of the global batch (:mod:`.sampler`), DDP averages the
gradients, and metrics are reduced across ranks; only rank 0 writes files.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from luser_cli.errors import ConfigError


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @classmethod
    def single(cls) -> DistContext:
        return cls(0, 1, 0, torch.device("cpu"))

    @classmethod
    def from_env(cls, device: str = "auto") -> DistContext:
        """The context ``torchrun`` describes in the environment (a single process otherwise).

        ``device``: ``auto`` (CUDA when present), ``cpu`` or ``cuda`` (an error without CUDA).
        """
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {device!r}; choose auto, cpu or cuda")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        if "RANK" not in os.environ:
            raise ConfigError("WORLD_SIZE is set but RANK is not: launch with torchrun")
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank, world, local, dev)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (the model itself for one process)."""
        if self.world_size <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # The equilibrium layers hand back weight gradients in channels-last strides; for a
        # 1-input-channel convolution those differ from the bucket's, and DDP warns (once per
        # rank) that it copies them. Harmless, and not something a user can act on.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _reduce(self, t: Tensor, op) -> Tensor:
        buf = t.to(self.device, dtype=torch.float64).clone()
        dist.all_reduce(buf, op=op)
        return buf.cpu()

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        return self._reduce(t, dist.ReduceOp.SUM) if self.world_size > 1 else t

    def all_reduce_max(self, t: Tensor) -> Tensor:
        """Element-wise maximum over ranks, where a NaN anywhere wins (so every rank agrees
        that a step was not finite)."""
        if self.world_size <= 1:
            return t
        bad = (~torch.isfinite(t)).to(torch.float64)
        bad = self._reduce(bad, dist.ReduceOp.MAX)
        out = self._reduce(torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0), dist.ReduceOp.MAX)
        return torch.where(bad > 0, torch.full_like(out, float("nan")), out)

    def all_reduce_mean(self, t: Tensor) -> Tensor:
        return self.all_reduce_sum(t) / self.world_size if self.world_size > 1 else t

    def reduce_stats(self, stats: dict[str, float], how: dict[str, str]) -> dict[str, float]:
        """Reduce a dict of per-rank numbers over the ranks (two collectives at most).

        ``how[key]`` is ``"sum"``, ``"max"`` or ``"mean"`` (the default). Every rank must pass
        the same keys.
        """
        if self.world_size <= 1 or not stats:
            return dict(stats)
        keys = sorted(stats)
        out: dict[str, float] = {}
        added = [k for k in keys if how.get(k, "mean") != "max"]
        if added:
            t = self.all_reduce_sum(torch.tensor([stats[k] for k in added], dtype=torch.float64))
            for k, v in zip(added, t.tolist(), strict=True):
                out[k] = v if how.get(k, "mean") == "sum" else v / self.world_size
        maxed = [k for k in keys if how.get(k, "mean") == "max"]
        if maxed:
            t = self.all_reduce_max(torch.tensor([stats[k] for k in maxed], dtype=torch.float64))
            out.update(zip(maxed, t.tolist(), strict=True))
        return {k: float(out[k]) for k in stats}

    def broadcast_from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled between our own processes only)."""
        if self.world_size <= 1:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if self.world_size <= 1:
            return flag
        return bool(self._reduce(torch.tensor([float(flag)]), dist.ReduceOp.MAX)[0] > 0)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
