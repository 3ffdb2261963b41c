"""The shallow equilibrium block of LUSER (paper Table 1 and Eq. 7).

For a stage input ``d`` (``(B, C, H, W)``)::

    u  = Inject(d)                        # SN conv C->32, LReLU, SN conv 32->32, LReLU (once)
    r* = fixed point of r = Mix(Data(r) (+) u),  r(0) = 0
    Data = SN conv C->32, GN, LReLU, SN conv 32->32, GN, LReLU
    Mix  = SN conv 64->64, GN, LReLU, SN conv 64->64, GN, LReLU, SN conv 64->C

and the stage output is ``d + r*`` (the skip connection; the block learns the residual).

The block owns its solver settings (``equilibrium``, an :class:`EquilibriumConfig`), so the
unrolled loop calls it like any prox, ``block(d)``; it returns ``(r*, info)``, the solver
statistics of the solve as values (:func:`luser_cli.solvers.equilibrium.equilibrium`).
"""

from __future__ import annotations

from itertools import islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from luser_cli.models.spectral_norm import power_iteration_, sn_conv
from luser_cli.models.unrolled import conv_layout
from luser_cli.solvers.config import EquilibriumConfig
from luser_cli.solvers.equilibrium import SolveInfo, equilibrium

DATA_GROUPS = 8  # GroupNorm groups in the data layer (4 channels each)
SLOPE = 0.1
#: Starting gain of Mix's last GroupNorm (see :meth:`ShallowEquilibriumBlock._init_contractive`).
INIT_GAIN = 0.01


class _ChannelNormFunction(torch.autograd.Function):
    """GroupNorm with one channel per group on ``(B, C, H, W)``: the forward is PyTorch's; the
    backward runs, per sample, BatchNorm's backward with that sample's statistics (the same
    formula: per-channel statistics over H x W). For channels-last input PyTorch's own GroupNorm
    backward is about 3x slower than this when every group has one channel (measured on one
    AVX-512 core at 64 px x 4: 9.4 ms against 2.9 ms; in NCHW it is fast, but the convolutions
    around it are not)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        b, c, h, w = x.shape
        out, mean, rstd = torch.native_group_norm(x, weight, bias, b, c, h * w, c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        need = [bool(n) for n in ctx.needs_input_grad[:3]]
        dx = torch.empty_like(x) if need[0] else None
        dw = torch.zeros_like(weight) if need[1] else None
        db = torch.zeros_like(weight) if need[2] else None
        for i in range(x.shape[0]):
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                grad[i : i + 1], x[i : i + 1], weight, None, None, mean[i], rstd[i], True,
                ctx.eps, need,
            )  # fmt: skip
            if dx is not None:
                dx[i : i + 1].copy_(gx)
            if dw is not None:
                dw.add_(gw)
            if db is not None:
                db.add_(gb)
        return dx, dw, db, None


class ChannelGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm(C, C)`` (one channel per group, Mix's layers) with a faster backward on
    channels-last input (:class:`_ChannelNormFunction`); otherwise, and under autocast, exactly
    ``nn.GroupNorm``. Same parameters and state-dict keys."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.dim() == 4
            and x.shape[1] > 1
            and x.stride(1) == 1
            and self.num_groups == self.num_channels
            and self.affine
            and not torch.is_autocast_enabled(x.device.type)
        ):
            return _ChannelNormFunction.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def _act() -> nn.LeakyReLU:
    # In place: it follows a convolution or a GroupNorm, whose backward needs their input, not
    # their output, and LeakyReLU's own backward only needs the sign of its output.
    return nn.LeakyReLU(SLOPE, inplace=True)


class ShallowEquilibriumBlock(nn.Module):
    """Learned proximal update of one LUSER stage: ``d -> (r*, info)`` (``r*`` the residual,
    same shape as d; ``info`` its solve's statistics), solved with the settings ``equilibrium``
    (defaults if None). ``jacobian_probe``: power iterations of the Jacobian estimate added to
    ``info`` (0: none; diagnostics). ``jacobian_penalty``: in training, also return the
    differentiable Jacobian regulariser of one sample in ``info`` (``jacobian_frobenius``).
    ``init_gain``: the starting gain of Mix's last GroupNorm (see :meth:`_init_contractive`)."""

    def __init__(
        self,
        channels: int,
        features: int = 32,
        *,
        equilibrium: EquilibriumConfig | None = None,
        init_gain: float = INIT_GAIN,
    ) -> None:
        super().__init__()
        #: Solver settings of the fixed point (plain attribute: not in the state dict).
        self.equilibrium = equilibrium if equilibrium is not None else EquilibriumConfig()
        self.jacobian_probe = 0
        self.jacobian_penalty = False
        f, f2 = features, 2 * features
        self.inject = nn.Sequential(sn_conv(channels, f), _act(), sn_conv(f, f), _act())
        self.data = nn.Sequential(
            sn_conv(channels, f),
            nn.GroupNorm(DATA_GROUPS, f),
            _act(),
            sn_conv(f, f),
            nn.GroupNorm(DATA_GROUPS, f),
            _act(),
        )
        # One channel per group in Mix. Its input holds large per-channel constant offsets (the
        # data layer near r = 0 and the injection both carry them); a group of several channels
        # normalises by a variance dominated by those offsets and squashes the spatial signal:
        # measured, the block then does not learn past the initial estimate at all. Per-channel
        # groups remove each channel's offset; same layers, same parameters as Table 1.
        self.mix = nn.Sequential(
            sn_conv(f2, f2),
            ChannelGroupNorm(f2, f2),
            _act(),
            sn_conv(f2, f2),
            ChannelGroupNorm(f2, f2),
            _act(),
            sn_conv(f2, channels),
        )
        self._init_contractive(init_gain)

    @torch.no_grad()
    def _init_contractive(self, gain: float) -> None:
        """Start from a contractive map that barely changes its input (initialisation only;
        the architecture is Table 1's).

        * GroupNorm right after the first data convolution normalises ``conv(r) + bias`` per
          group; with PyTorch's small default biases and ``r`` near its start ``r(0) = 0`` it
          divides tiny r-driven variations by their own tiny spread and the map is expansive
          (measured ``||J|| ~ 2``: Anderson does not converge). Biases of standard deviation 3
          make the group statistics come from a fixed offset instead (which is also why the
          data layer keeps several channels per group).
        * The residual must start small: every stage adds it to its input, so a residual of the
          image's own size at initialisation is noise added eight times (measured: LUSER-SW
          started at 19x the error of its initial estimate, and the first Adam step blew the
          loss up 4x more). Spectral normalisation fixes the scale of every convolution, so
          the output scale is set by the gain of the last GroupNorm of Mix (``gain``, 0.01 by
          default; it also sets how contractive the map starts: see the preset's
          ``model.init_gain``). Its kernels
          are made zero-mean and its bias zero, so the LeakyReLU's non-zero mean does not
          become a constant offset in every stage's output.

        Measured on a fixed CT batch (32 px, 40 Adam steps at lr 1e-3): final MSE 0.0099 with
        this start against 0.0148 with gain 0.1 and the default last layer (0.0125 at 0.03),
        and the loss then falls from the first step instead of jumping up.
        """
        self.data[0].bias.normal_(0.0, 3.0)
        self.mix[4].weight.fill_(gain)
        last = self.mix[6]
        w = last.parametrizations.weight.original
        w.sub_(w.mean(dim=(2, 3), keepdim=True))
        last.bias.zero_()
        power_iteration_(last, 30)  # sigma's estimate for the changed kernels

    def injection(self, d: Tensor) -> Tensor:
        """The part of the map that does not change during a solve: ``u = Inject(d)``
        (``(B, 32, H, W)``) already through the ``u`` half of Mix's first convolution, bias
        included: ``v = W_u * u + b`` (``(B, 64, H, W)``). See :meth:`step`."""
        first = self.mix[0]
        f = first.in_channels - self.inject[2].out_channels
        return F.conv2d(self.inject(d), first.weight[:, f:], first.bias, padding=first.padding)

    def step(self, r: Tensor, v: Tensor) -> Tensor:
        """One fixed-point map application ``r -> Mix(Data(r) (+) u)``, ``v`` from
        :meth:`injection`.

        Mix's first convolution is linear in its input, so on ``Data(r) (+) u`` it equals
        ``W_r * Data(r) + (W_u * u + b)``: the second term is ``v``, computed once per solve,
        and each iteration convolves only the 32 channels of ``Data(r)`` (and the backward
        solve differentiates only those). Same function and parameters as Table 1's; the values
        agree with convolving the concatenation to float rounding.
        """
        first = self.mix[0]
        f = first.in_channels - self.inject[2].out_channels
        h = self.data(conv_layout(r))
        h = F.conv2d(h, first.weight[:, :f], None, padding=first.padding).add_(v)
        for layer in islice(self.mix, 1, None):
            h = layer(h)
        # Under autocast the convolutions run in bf16; the fixed-point state stays in r's dtype.
        return h.to(r.dtype)

    def forward(self, d: Tensor, z0: Tensor | None = None) -> tuple[Tensor, SolveInfo]:
        """Solve for the residual ``r*`` of stage input ``d`` (``(B, C, H, W)``) from ``z0``
        (zero if None; a warm start, not differentiated); returns ``(r*, info)``."""
        return equilibrium(
            self.step,
            self.injection,
            (d,),
            [p for p in self.parameters() if p.requires_grad],
            d.new_zeros(d.shape) if z0 is None else conv_layout(z0.detach()),
            self.equilibrium,
            probe=self.jacobian_probe,
            # One sample per step: the block treats samples independently (GroupNorm).
            penalty=1 if self.jacobian_penalty and self.training else 0,
        )
