"""Deterministic data order: which items make up global step ``s``.

The order is a pure function of ``(seed, epoch)``, so a resumed run needs only its step counter
to continue with exactly the batches it would have seen, and ``N`` distributed ranks together
see exactly the global batch of a single-process run (rank ``r`` takes every ``N``-th item).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchPlan:
    """Global-step -> item indices for a data set of ``n_items``."""

    n_items: int
    batch_size: int  # global batch
    seed: int
    rank: int = 0
    world_size: int = 1

    @property
    def steps_per_epoch(self) -> int:
        # Drop the last incomplete batch so every step has the same global batch.
        return max(self.n_items // self.batch_size, 1)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63 - 1))
        return torch.randperm(self.n_items, generator=g)

    def global_batch(self, step: int) -> list[int]:
        """Item indices of the whole (all ranks) batch at ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        start = k * self.batch_size
        idx = perm[start : start + self.batch_size]
        if idx.numel() < self.batch_size:  # data set smaller than one batch: wrap around
            reps = -(-self.batch_size // max(self.n_items, 1))
            idx = perm.repeat(reps)[: self.batch_size]
        return idx.tolist()

    def local_batch(self, step: int) -> list[int]:
        """This rank's share of the global batch."""
        return self.global_batch(step)[self.rank :: self.world_size]
