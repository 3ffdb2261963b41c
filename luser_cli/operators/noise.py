"""Measurement noise models: ``y_noisy = noise(y_clean, generator)``.

Noise is applied to the clean measurement ``A x``; every model takes an optional
``torch.Generator`` so simulation is reproducible from a seed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NoiseModel(nn.Module):
    """Base class; the identity (noise-free) model."""

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return y

    def describe(self) -> dict[str, float | str]:
        return {"kind": "none"}


class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise with standard deviation ``std`` (measurement units)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = float(std)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.std == 0:
            return y
        n = torch.randn(y.shape, generator=generator, dtype=y.dtype, device="cpu")
        return y + self.std * n.to(y.device)

    def describe(self) -> dict[str, float | str]:
        return {"kind": "gaussian", "std": self.std}


def relative_counts(y: Tensor, mu_max: float) -> Tensor:
    """``N / N0 = exp(-mu_max y)``: the photon count a ray of post-log data ``y`` (normalised
    line integrals, LoDoPaB's convention) had, relative to the unattenuated count."""
    return torch.exp(-mu_max * y)


class PostLogPoisson(NoiseModel):
    """LoDoPaB-CT low-dose noise on post-log data.

    The clean sinogram ``p = A x`` (x normalised so that 1 = ``mu_max`` per metre, A in metres)
    becomes photon counts ``N ~ Poisson(N0 exp(-mu_max p))``; zero counts are replaced by 0.1
    and the returned data are ``-log(N / N0) / mu_max``, exactly as LoDoPaB was generated.
    """

    def __init__(self, photons: float = 4096.0, mu_max: float = 81.35858) -> None:
        super().__init__()
        self.photons = float(photons)
        self.mu_max = float(mu_max)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.photons == 0:
            return y
        rate = (self.photons * relative_counts(y, self.mu_max)).to(torch.float64).cpu()
        counts = torch.poisson(rate, generator=generator)
        counts = torch.where(counts == 0, torch.full_like(counts, 0.1), counts)
        out = -torch.log(counts / self.photons) / self.mu_max
        return out.to(device=y.device, dtype=y.dtype)

    def describe(self) -> dict[str, float | str]:
        return {"kind": "post-log-poisson", "photons": self.photons, "mu_max": self.mu_max}
