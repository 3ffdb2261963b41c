"""What a GPU needs beyond the peak of live tensor storage: :class:`Allowance`.

Units: bytes inside; "GB" in the user interface means GiB (``2**30`` bytes, :data:`GIB`), the
unit GPU makers use for memory capacity ("an 8 GB card" holds 8 GiB).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from luser_cli.errors import ConfigError

__all__ = ["GIB", "Allowance"]

GIB = 2**30


@dataclass(frozen=True)
class Allowance:
    """What a GPU needs beyond the peak of live tensor storage (``sim`` backend).

    ``required = context_gb GiB + (1 + fragmentation) * peak``, where ``peak`` counts every
    storage rounded up to ``block_bytes``.

    * ``context_gb`` (default 0.5): memory outside PyTorch's caching allocator that a training
      process holds on the card: the CUDA context with the kernels of PyTorch, cuDNN and cuBLAS
      (about 0.3-0.5 GiB with CUDA's lazy module loading, the default since CUDA 11.7/12), the
      cuBLAS workspaces and cuDNN handles. (cuDNN convolution workspaces are allocated through
      the caching allocator and shrink when memory is short: PyTorch falls back to algorithms
      that need less workspace instead of failing.)
    * ``fragmentation`` (default 0.10): the caching allocator carves blocks out of 2 MiB
      segments (requests up to 1 MiB), 20 MiB segments (1-10 MiB) or segments of the request
      rounded up to 2 MiB (larger); a request fails when no free segment part is large
      enough, so the reserved memory at the peak exceeds the allocated bytes by the partly
      used segments. 10 % is a typical reserved/allocated ratio for training steps dominated by
      large activations.
    * ``block_bytes`` (default 512): every allocation is rounded up to a multiple of 512 bytes
      (the allocator's smallest block), exactly as ``torch.cuda.memory_allocated`` counts it.

    The ``cuda`` backend uses only ``context_gb``: the capacity given to the allocator is
    ``N GiB - context_gb`` (the context of a real N GB card lives in the same N GB).
    """

    context_gb: float = 0.5
    fragmentation: float = 0.10
    block_bytes: int = 512

    def __post_init__(self) -> None:
        if not (math.isfinite(self.context_gb) and self.context_gb >= 0):
            raise ConfigError(f"--context-gb must be a number >= 0, got {self.context_gb}")
        if not (math.isfinite(self.fragmentation) and self.fragmentation >= 0):
            raise ConfigError(f"--fragmentation must be a number >= 0, got {self.fragmentation}")
        if self.block_bytes < 1:
            raise ConfigError(f"block size must be at least 1 byte, got {self.block_bytes}")

    @property
    def context_bytes(self) -> int:
        return round(self.context_gb * GIB)

    def required_bytes(self, peak_bytes: int) -> int:
        """GPU memory a step whose live tensors peak at ``peak_bytes`` needs, bytes."""
        return self.context_bytes + math.ceil(peak_bytes * (1.0 + self.fragmentation))

    def tensor_budget(self, capacity_bytes: int) -> float:
        """The largest peak of live tensors that fits ``capacity_bytes`` (may be negative)."""
        return (capacity_bytes - self.context_bytes) / (1.0 + self.fragmentation)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
