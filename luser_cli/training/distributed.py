"""Distributed data parallel training on PyTorch's own engine (``torchrun`` + DDP).

``torchrun --standalone --nproc-per-node N -m luser_cli train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :meth:`DistContext.from_env` then initialises the process
group (NCCL on CUDA, gloo on CPU). Each rank takes every N-th item of the global batch, DDP
averages the gradients, and metrics are reduced across ranks; only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


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
        """The context ``torchrun`` describes in the environment (a single process otherwise)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
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
        if self.world_size <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _reduce(self, t: Tensor, op) -> Tensor:
        if self.world_size <= 1:
            return t
        buf = t.to(self.device, dtype=torch.float64).clone()
        dist.all_reduce(buf, op=op)
        return buf.cpu()

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        return self._reduce(t, dist.ReduceOp.SUM) if self.world_size > 1 else t

    def all_reduce_max(self, t: Tensor) -> Tensor:
        # NaN must win the max so every rank agrees a step was not finite.
        if self.world_size <= 1:
            return t
        bad = (~torch.isfinite(t)).to(torch.float64)
        bad = self._reduce(bad, dist.ReduceOp.MAX)
        out = self._reduce(torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0), dist.ReduceOp.MAX)
        return torch.where(bad > 0, torch.full_like(out, float("nan")), out)

    def all_reduce_mean(self, t: Tensor) -> Tensor:
        return self.all_reduce_sum(t) / self.world_size if self.world_size > 1 else t

    def any_flag(self, flag: bool) -> bool:
        if self.world_size <= 1:
            return flag
        return bool(self._reduce(torch.tensor([float(flag)]), dist.ReduceOp.MAX)[0] > 0)

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
