"""The shallow equilibrium block of LUSER (paper Table 1 and Eq. 7).

For a stage input ``d`` (``(B, C, H, W)``)::

    u  = Inject(d)                        # SN conv C->32, LReLU, SN conv 32->32, LReLU (once)
    r* = fixed point of r = Mix(Data(r) (+) u),  r(0) = 0
    Data = SN conv C->32, GN, LReLU, SN conv 32->32, GN, LReLU
    Mix  = SN conv 64->64, GN, LReLU, SN conv 64->64, GN, LReLU, SN conv 64->C

and the stage output is ``d + r*`` (the skip connection; the block learns the residual).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from luser_cli.models.spectral_norm import sn_conv
from luser_cli.solvers.config import EquilibriumConfig
from luser_cli.solvers.equilibrium import equilibrium

GROUPS = 8
SLOPE = 0.1


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(SLOPE)


class ShallowEquilibriumBlock(nn.Module):
    """Learned proximal update of one LUSER stage: ``d -> r*`` (the residual, same shape as d)."""

    def __init__(self, channels: int, features: int = 32) -> None:
        super().__init__()
        f, f2 = features, 2 * features
        self.inject = nn.Sequential(sn_conv(channels, f), _act(), sn_conv(f, f), _act())
        self.data = nn.Sequential(
            sn_conv(channels, f),
            nn.GroupNorm(GROUPS, f),
            _act(),
            sn_conv(f, f),
            nn.GroupNorm(GROUPS, f),
            _act(),
        )
        self.mix = nn.Sequential(
            sn_conv(f2, f2),
            nn.GroupNorm(GROUPS, f2),
            _act(),
            sn_conv(f2, f2),
            nn.GroupNorm(GROUPS, f2),
            _act(),
            sn_conv(f2, channels),
        )
        self._init_contractive()

    @torch.no_grad()
    def _init_contractive(self) -> None:
        """Start from a contractive map (initialisation only; the architecture is Table 1's).

        GroupNorm right after the first data convolution normalises ``conv(r) + bias`` per group;
        with PyTorch's small default biases and ``r`` near its start ``r(0) = 0`` it divides tiny
        r-driven variations by their own tiny spread, and the map is expansive (measured
        ``||J|| ~ 2``: Anderson does not converge). Unit-variance biases make the group
        statistics come from a fixed offset instead, and a gain of 0.1 on the last GroupNorm of
        Mix makes the block start as a small residual update: ``||J|| ~ 0.2-0.4`` and a fixed
        point in 4-6 Anderson iterations at initialisation.
        """
        self.data[0].bias.normal_(0.0, 1.0)
        self.mix[4].weight.fill_(0.1)

    def injection(self, d: Tensor) -> Tensor:
        """``u = Inject(d)``: ``(B, C, H, W) -> (B, 32, H, W)``."""
        return self.inject(d)

    def step(self, r: Tensor, u: Tensor) -> Tensor:
        """One fixed-point map application ``r -> Mix(Data(r) (+) u)``."""
        # Under autocast the convolutions run in bf16; the fixed-point state stays in r's dtype.
        return self.mix(torch.cat([self.data(r), u], dim=1)).to(r.dtype)

    def forward(self, d: Tensor, cfg: EquilibriumConfig, record: list | None = None) -> Tensor:
        """Solve for the residual ``r*`` of stage input ``d`` (``(B, C, H, W)``)."""
        return equilibrium(
            self.step,
            self.injection,
            (d,),
            [p for p in self.parameters() if p.requires_grad],
            d.new_zeros(d.shape),
            cfg,
            record,
        )
