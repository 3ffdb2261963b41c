"""The memory probe's CT operator: :class:`RadonStandIn`, a
:class:`~luser_cli.operators.radon.ParallelBeamRadon` whose applications on fake tensors are
shape-and-memory doubles (the ``sim`` oracle's default for CT, ``radon="stand-in"``).

On real tensors it is the real operator (same geometry, buffers, ``||A||^2`` and results), so
it passes the operators' shared property tests; on fake (or meta) tensors ``A`` / ``A_adjoint``
return tensors of the real shapes and dtype, allocate a transient scratch of the real operator's
size and save nothing for backward. The fake-tensor dependency (``torch._subclasses``) lives
here, on the memory probe's side.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor

from luser_cli.memprobe.tracker import StorageTracker
from luser_cli.operators.radon import Backend, CTGeometry, ParallelBeamRadon
from luser_cli.physics import build_operator
from luser_cli.training.config import Preset

__all__ = ["RadonStandIn", "measure_scratch", "stand_in_args"]


def _is_fake(t: Tensor) -> bool:
    """A tensor without data: fake (``FakeTensorMode``) or on the meta device."""
    return isinstance(t, FakeTensor) or t.device.type == "meta"


class _ShapeOnly(torch.autograd.Function):
    """``out = new_empty(out_shape)`` plus a transient scratch of ``scratch`` bytes (live with
    ``out``), saving no tensor for backward; its backward is the same the other way round."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        out_shape: tuple[int, ...],
        scratch: int,
        back_scratch: int,
    ) -> Tensor:
        ctx.in_shape = tuple(x.shape)
        ctx.scratch, ctx.back_scratch = scratch, back_scratch
        out = x.new_empty(out_shape)
        if scratch > 0:  # alive together with the output, as in the real operator
            work = x.new_empty(scratch // x.element_size())
            del work
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        return _ShapeOnly.apply(grad, ctx.in_shape, ctx.back_scratch, ctx.scratch), None, None, None


class RadonStandIn(ParallelBeamRadon):
    """:class:`~luser_cli.operators.radon.ParallelBeamRadon` with a shape-and-memory double of
    its two applications for fake tensors. The real applications run on fake tensors too, with
    the same peak, but slowly at 362 px: an application is split into up to 200 chunks of
    ``grid_sample`` calls (more chunks for larger batches), each a Python decomposition on fake
    tensors (measured: ~13 s for one ``A`` and one ``A^T`` at batch 1, ~70 s at batch 64,
    against a few ms here).

    On fake tensors ``A``: ``(B, 1, N, N)`` -> ``(B, 1, n_angles, n_detectors)`` and
    ``A_adjoint`` (the other way) return tensors of the real operator's shapes and dtype,
    allocate a transient scratch, and save nothing for backward. What that assumes, exactly:

    * the real operator's autograd functions (``_Project`` / ``_BackProject``) save no tensor
      for backward (they keep a reference to the operator only) and their backward is the
      other direction: true of ``radon.py``;
    * its buffers (``angles``, float64, one per angle) are this operator's own;
    * its transient memory within one application (grid buffer, ``grid_sample`` samples of one
      chunk of angles, the concatenated output) is ``scratch(b) = min(s1 (2 + b) / 3,
      max(s1, chunk))`` bytes for a batch of ``b``, with ``s1`` measured on the real
      operator (real tensors, ``grid`` backend) at batch 1 for this geometry
      (:func:`measure_scratch`) and ``chunk`` its per-chunk temporary budget
      (:attr:`~luser_cli.operators.radon.ParallelBeamRadon.chunk_bytes`, 48 MiB): the grid
      backend sizes a chunk of angles by ``(2 + b) * N * itemsize`` bytes per ray up to that
      budget. Measured at 362 px for b = 1..32 the real scratch is 24-46 MiB (model:
      34-48 MiB); at 48 px it is within 6 %. It never meets the peak of a training step anyway
      (the peak is in the network's backward): at 40 and 128 px, training steps with this
      double and with the real operator on fake tensors peak at the same byte;
    * the ``grid`` backend: what ``auto`` picks above ~140 px (the 362 px preset). Below that,
      on a GPU, ``auto`` keeps cached sparse matrices resident instead (~26 MB at 64 px,
      ~106 MB at 128 px), which this double does not count.

    ``scratch_one``: ``(s1 of A, s1 of A^T)`` in bytes; ``norm_sq``: ``||A||^2`` (m^2) computed
    beforehand on real tensors (None: by power iteration on first use, as the real operator).
    """

    def __init__(
        self,
        geometry: CTGeometry,
        scratch_one: tuple[int, int],
        norm_sq: float | None = None,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(geometry, backend)
        self.scratch_one = (int(scratch_one[0]), int(scratch_one[1]))
        if norm_sq is not None:
            self._norm_sq = norm_sq

    @classmethod
    def measured(cls, geometry: CTGeometry, norm_sq: float | None = None) -> RadonStandIn:
        """The stand-in of ``geometry`` with its scratch measured now (real tensors; call
        outside the fake mode)."""
        return cls(geometry, measure_scratch(geometry), norm_sq)

    def scratch(self, batch: int, adjoint: bool) -> int:
        """Transient bytes of one application (``A^T`` if ``adjoint``) to a batch of ``batch``."""
        s1 = self.scratch_one[1 if adjoint else 0]
        return int(min(s1 * (2 + batch) / 3, max(s1, self.chunk_bytes)))

    def _A(self, x: Tensor) -> Tensor:
        if not _is_fake(x):
            return super()._A(x)
        self._check(x, self.image_shape, "images")
        b = x.shape[0]
        shape = (b, *self.measurement_shape())
        return _ShapeOnly.apply(x, shape, self.scratch(b, False), self.scratch(b, True))

    def _A_adjoint(self, y: Tensor) -> Tensor:
        if not _is_fake(y):
            return super()._A_adjoint(y)
        self._check(y, self.measurement_shape(), "sinograms")
        b = y.shape[0]
        shape = (b, *self.image_shape)
        return _ShapeOnly.apply(y, shape, self.scratch(b, True), self.scratch(b, False))


def measure_scratch(geometry: CTGeometry) -> tuple[int, int]:
    """Transient bytes of one real ``A`` and one real ``A^T`` at batch 1 (``grid`` backend,
    float32, real tensors)."""
    op = ParallelBeamRadon(geometry, backend="grid")
    x = torch.zeros(1, *op.image_shape)
    with torch.no_grad(), StorageTracker() as tracker:
        y = op.A(x)
        forward = tracker.peak - tracker.live
        tracker.reset_peak()
        z = op.A_adjoint(y)
        adjoint = tracker.peak - tracker.live
        del z
    return forward, adjoint


def stand_in_args(preset: Preset) -> dict[str, Any]:
    """Constructor arguments of :class:`RadonStandIn` for the CT ``preset`` but ``norm_sq``
    (real tensors; call outside the fake mode). Picklable."""
    real = build_operator(preset.task, preset.image_size, preset.physics)
    geometry = real.geometry  # type: ignore[attr-defined]
    return {"geometry": geometry, "scratch_one": measure_scratch(geometry)}
