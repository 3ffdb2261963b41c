"""``luser memprobe``: the batch search, the live-storage tracker, the sim oracle against real
CPU steps, the cuda oracle's logic (mocked: no GPU in CI; on a GPU the sim is also compared
with ``torch.cuda.max_memory_allocated``), the table and the CLI.

Everything runs at 16-64 px with one CPU thread; the sim oracles are shared per module.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from fixtures.cli import assert_clean_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from luser_cli.memprobe import sim_oracle as sim_oracle_mod
from luser_cli.memprobe.allowance import GIB, Allowance
from luser_cli.memprobe.cuda_oracle import CudaOracle
from luser_cli.memprobe.oracle import prime_optimizer
from luser_cli.memprobe.paper import paper_max_batch, paper_rounding
from luser_cli.memprobe.presets import probe_preset
from luser_cli.memprobe.probe import ROW_KEYS, probe_model
from luser_cli.memprobe.radon_stand_in import RadonStandIn
from luser_cli.memprobe.search import max_batch
from luser_cli.memprobe.sim_oracle import SimOracle
from luser_cli.memprobe.tracker import StorageTracker, track_training_state
from luser_cli.models.registry import MODEL_NAMES
from luser_cli.operators.radon import CTGeometry, ParallelBeamRadon
from luser_cli.training.batches import BatchMaker
from luser_cli.training.config import Preset, apply_overrides
from luser_cli.training.step import (
    build_optimizer,
    build_training_model,
    clip_gradients,
    forward_backward,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
BATCH = 2


# -- (1) the search ------------------------------------------------------------------------------
def _threshold(t: int, calls: list[int] | None = None):
    def fits(b: int) -> bool:
        if calls is not None:
            calls.append(b)
        return b <= t

    return fits


@settings(max_examples=300, deadline=None)
@given(
    t=st.integers(0, 5000),
    cap=st.integers(1, 5000),
    guess=st.none() | st.integers(-3, 6000),
    noise=st.none() | st.integers(-40, 40),
)
def test_search_finds_the_exact_boundary(t: int, cap: int, guess: int | None, noise) -> None:
    calls: list[int] = []
    predict = None if noise is None else (lambda lo, hi: t + noise)
    r = max_batch(_threshold(t, calls), cap=cap, guess=guess, predict=predict)
    assert r.max_batch == min(t, cap)
    assert r.cap_reached == (t >= cap)
    assert len(calls) == len(set(calls)), "a batch size was asked twice"
    assert all(1 <= b <= cap for b in calls)
    # exponential search + bisection: O(log) calls after at most 4 predictions
    assert len(calls) <= 4 + 2 * math.ceil(math.log2(cap + 1)) + 2


def test_search_edge_cases() -> None:
    assert max_batch(lambda b: False).max_batch == 0  # batch 1 does not fit
    assert max_batch(lambda b: False).calls == [(1, False)]
    r = max_batch(lambda b: True, cap=4096)
    assert r.max_batch == 4096 and r.cap_reached
    assert max_batch(lambda b: True, cap=1).calls == [(1, True)]
    # classic exponential search from 1, then bisection
    assert [b for b, _ in max_batch(_threshold(10)).calls] == [1, 3, 7, 15, 11, 9, 10]
    # an exact prediction closes the bracket in two calls
    assert max_batch(_threshold(447), predict=lambda lo, hi: 447).calls == [
        (447, True),
        (448, False),
    ]
    with pytest.raises(ValueError):
        max_batch(lambda b: True, cap=0)


def test_paper_rounding_and_numbers() -> None:
    assert [paper_rounding(b) for b in (0, 1, 2, 3, 4, 17)] == [0, 1, 2, 2, 4, 16]
    assert paper_max_batch("ct", "lu-dncnn", 8) == 0
    assert paper_max_batch("mri8x", "deq4ip", 24) == 16
    assert paper_max_batch("ct", "deq4ip", 40) is None


# -- the tracker ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fake", [False, True])
def test_tracker_counts_new_storages_once_and_frees_them(fake: bool) -> None:
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    with mode, StorageTracker() as tr:
        a = torch.empty(1000)  # 4000 B
        view = a.view(10, 100)
        a.add_(1)  # in place: same storage
        b = a * 2  # 4000 B
        assert (tr.live, tr.peak) == (8000, 8000)
        del a, view
        assert tr.live == 4000
        del b
        assert (tr.live, tr.peak) == (0, 8000)
        x = torch.randn(100, requires_grad=True)
        (x.exp() * 2).sum().backward()
        assert tr.live == 800  # x and x.grad
    with StorageTracker(block_bytes=512) as tr:
        c = torch.empty(3)
        assert tr.live == 512
        del c


# -- (2) sim vs real ----------------------------------------------------------------------------
def _real_step_peak(
    task: str, model_name: str, size: int, batch: int, iterations: int, graph: str | None = None
) -> int:
    """Peak of live tensor storage during a REAL training step on CPU (block_bytes 512), built
    the way ``luser train`` builds it (BatchMaker data path); everything alive before the step
    (model, optimiser state, batch, operator) is registered with the tracker."""
    preset = probe_preset(task, size, graph).for_model(model_name)  # as Trainer resolves it
    torch.manual_seed(0)
    maker = BatchMaker.for_preset(preset, torch.device("cpu"))
    op0 = maker.operator()
    if hasattr(op0, "backend"):
        op0.backend = "grid"  # what fake tensors and 362 px CT use
    model = build_training_model(
        preset,
        model_name,
        step_scale=1.0 / maker.norm_sq(),
        equilibrium=sim_oracle_mod.sim_equilibrium(preset.solver, iterations),
    )
    model.train()
    opt = build_optimizer(model, preset.train)
    sim_oracle_mod._gpu_optimizer_defaults(opt)  # as the sim does: the GPU's foreach Adam
    prime_optimizer(model, opt)
    x = torch.rand(batch, maker.task.channels, size, size)
    data = maker.make(x, {"index": torch.arange(batch)}, epoch=0, seed=0)
    if hasattr(data.op, "backend"):
        data.op.backend = "grid"
    del x
    tracker = StorageTracker(block_bytes=512)
    track_training_state(tracker, model, opt, data)
    with tracker:
        out, loss = forward_backward(model, opt, data, preset.train, torch.device("cpu"))
        clip_gradients(model, preset.train)
        opt.step()
        del out, loss
    return tracker.peak


@pytest.fixture(scope="module")
def deblur_oracles() -> dict[str, SimOracle]:
    return {m: SimOracle("deblur", m, SIZE, allowance=Allowance()) for m in MODEL_NAMES}


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_sim_peak_matches_a_real_cpu_step(deblur_oracles, model_name: str) -> None:
    oracle = deblur_oracles[model_name]
    sim = oracle.simulate(BATCH)
    real = _real_step_peak("deblur", model_name, SIZE, BATCH, oracle.iterations)
    assert abs(sim - real) <= 0.10 * real, (sim, real)


@pytest.mark.parametrize(
    ("task", "size", "model_name"), [("mri4x", 24, "deq4ip"), ("ct", 40, "luser-sw")]
)
def test_sim_peak_matches_real_for_mri_and_ct(task: str, size: int, model_name: str) -> None:
    # MRI: per-item masks, operator applied in every fixed-point iteration (DEQ4IP);
    # CT: the Radon stand-in against the real operator (grid backend), where LUSER's small
    # activations make the operator's share largest
    oracle = SimOracle(task, model_name, size)
    sim = oracle.simulate(BATCH)
    real = _real_step_peak(task, model_name, size, BATCH, oracle.iterations)
    assert abs(sim - real) <= 0.10 * real, (sim, real)


@pytest.mark.parametrize("model_name", ["luser-dw", "deq4ip"])
def test_keep_graph_sim_matches_real_and_costs_more(deblur_oracles, model_name: str) -> None:
    """``--fp-graph keep`` (the paper's layout): the sim still matches a real step, and holding
    the block's graph from forward to backward costs more per sample than recomputing it
    (for LUSER's eight layers; DEQ4IP's single layer peaks in backward in both layouts)."""
    keep = SimOracle(
        "deblur", model_name, allowance=Allowance(), preset=probe_preset("deblur", SIZE, "keep")
    )
    sim = keep.simulate(BATCH)
    real = _real_step_peak("deblur", model_name, SIZE, BATCH, keep.iterations, "keep")
    assert abs(sim - real) <= 0.10 * real, (sim, real)
    recompute = deblur_oracles[model_name]
    per_sample = {
        name: (o.simulate(BATCH) - o.static_bytes) / BATCH
        for name, o in (("keep", keep), ("recompute", recompute))
    }
    if model_name == "luser-dw":  # eight stages' graphs alive at once
        assert per_sample["keep"] > 1.5 * per_sample["recompute"], per_sample
    else:  # one equilibrium: its peak is in backward, where the graph exists either way
        assert per_sample["keep"] >= 0.99 * per_sample["recompute"], per_sample


# -- (3) growth with the batch; LU-DnCNN vs LUSER -------------------------------------------------
def test_sim_peak_grows_with_batch_and_lu_dncnn_costs_most(deblur_oracles) -> None:
    for name in ("lu-dncnn", "luser-sw"):
        oracle = deblur_oracles[name]
        peaks = [oracle.simulate(b) for b in (1, BATCH)]  # the first sets static_bytes
        assert oracle.static_bytes is not None
        assert oracle.static_bytes < peaks[0] < peaks[1], (name, oracle.static_bytes, peaks)
    # per-sample bytes above the static part (parameters, gradients, Adam state)
    per_sample = {
        name: (o.simulate(BATCH) - o.static_bytes) / BATCH for name, o in deblur_oracles.items()
    }
    assert per_sample["lu-dncnn"] > 4 * per_sample["luser-sw"]
    assert per_sample["lu-dncnn"] > 4 * per_sample["luser-dw"]
    assert per_sample["lu-dncnn"] > per_sample["deq4ip"]
    # parameters + Adam's two moments (4 bytes each) at least
    n = deblur_oracles["luser-dw"].parameters
    assert deblur_oracles["luser-dw"].static_bytes >= 3 * 4 * n
    # predictions from the measured peaks land on the boundary
    oracle = deblur_oracles["lu-dncnn"]
    capacity = oracle.allowance.required_bytes(oracle.simulate(BATCH)) + 1
    assert oracle.guess(capacity) in (BATCH - 1, BATCH, BATCH + 1)


# -- (4) the fixed iteration count does not move the peak ----------------------------------------
@pytest.mark.parametrize(("model_name", "counts"), [("luser-sw", (2, 3)), ("deq4ip", (3,))])
def test_fixed_iteration_count_does_not_change_the_peak(
    deblur_oracles, model_name: str, counts: tuple[int, ...]
) -> None:
    reference = deblur_oracles[model_name]  # SIM_ITERATIONS (1) per solve
    peaks = [reference.simulate(BATCH)]
    peaks += [SimOracle("deblur", model_name, SIZE, iterations=k).simulate(BATCH) for k in counts]
    assert max(peaks) <= 1.01 * min(peaks), peaks


# -- the allowance, the cuda oracle (mocked) and the table -------------------------------------
def test_allowance() -> None:
    a = Allowance(context_gb=0.5, fragmentation=0.1)
    assert a.required_bytes(GIB) == GIB // 2 + math.ceil(1.1 * GIB)
    assert a.tensor_budget(a.required_bytes(10 * GIB)) == pytest.approx(10 * GIB, rel=1e-9)
    with pytest.raises(Exception, match="context"):
        Allowance(context_gb=-1)


class _FakeCuda:
    """A pretend GPU: a step of ``b`` samples needs ``static + b * per_sample`` bytes and raises
    OutOfMemoryError above the cap set by ``set_per_process_memory_fraction``."""

    total = 80 * GIB
    static = 1 * GIB
    per_sample = 3 * GIB

    def __init__(self) -> None:
        self.fraction = 1.0
        self.peak = 0
        self.calls: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "set_per_process_memory_fraction", self.set_fraction)
        monkeypatch.setattr(cuda, "empty_cache", lambda: self.calls.append("empty_cache"))
        monkeypatch.setattr(cuda, "synchronize", lambda *a: None)
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda *a: self.reset())
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda *a: self.peak)
        monkeypatch.setattr(cuda, "memory_allocated", lambda *a: self.static)
        monkeypatch.setattr(cuda, "get_device_name", lambda *a: "FakeGPU")
        monkeypatch.setattr(
            cuda, "get_device_properties", lambda *a: type("P", (), {"total_memory": self.total})
        )
        monkeypatch.setattr(CudaOracle, "_open", lambda oracle: self.open(oracle))
        monkeypatch.setattr(CudaOracle, "_step", lambda oracle, s, b: self.step(oracle, s, b))

    def set_fraction(self, fraction: float, device=None) -> None:
        self.fraction = fraction

    def reset(self) -> None:
        self.calls.append("reset")
        self.peak = self.static

    def open(self, oracle: CudaOracle) -> dict:
        oracle._parameters, oracle.static_bytes = 123, self.static
        oracle._session = {"optimizer": torch.optim.SGD([torch.zeros(1, requires_grad=True)])}
        return oracle._session

    def step(self, oracle: CudaOracle, session: dict, batch: int) -> None:
        need = self.static + batch * self.per_sample
        if need > self.fraction * self.total:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (pretend)")
        self.peak = need


def test_cuda_oracle_logic_with_a_pretend_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = _FakeCuda()
    gpu.install(monkeypatch)
    oracle = CudaOracle("deblur", "lu-dncnn", 16, allowance=Allowance(context_gb=0.5))
    rows = probe_model(oracle, [8.0, 24.0, 0.5])
    # an 8 GB card gives the allocator 7.5 GiB: 1 + 3 b <= 7.5 -> b = 2; 24 GB: b = 7
    assert [r["max_batch"] for r in rows] == [2, 7, 0]
    assert rows[0]["peak_gb_at_max"] == pytest.approx(7.0)
    assert rows[2]["peak_gb_at_max"] is None and rows[2]["backend"] == "cuda"
    assert gpu.fraction == 1.0  # the cap is lifted after each probe
    assert "empty_cache" in gpu.calls and "reset" in gpu.calls  # freed between probes
    assert oracle.fits(1, 100 * GIB)  # known from the 8 GB probe: no new step
    fresh = CudaOracle("deblur", "lu-dncnn", 16)
    with pytest.raises(Exception, match="more than this GPU"):
        fresh.fits(1, 100 * GIB)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_sim_peak_matches_cuda_max_memory_allocated(model_name: str) -> None:
    # On a GPU: the cuda oracle's torch.cuda.max_memory_allocated of one training step vs the
    # simulated peak. cuDNN convolution workspaces come through the caching allocator, so the
    # GPU figure may be somewhat higher; the tolerance says how much is acceptable.
    cuda = CudaOracle("deblur", model_name, 64)
    assert cuda.fits(BATCH, 8 * GIB)
    real = cuda.peak_bytes(BATCH)
    sim = SimOracle("deblur", model_name, 64).simulate(BATCH)
    print(f"{model_name}: sim {sim / 2**20:.1f} MiB, cuda {real / 2**20:.1f} MiB")
    assert abs(sim - real) <= 0.25 * real, (sim, real)


# -- DEQ4IP as `luser train` builds it for a new run ---------------------------------------------
class _Built(Exception):
    """Raised by the patched model builder once it has recorded what the trainer passed."""


def _trainer_preset(
    monkeypatch: pytest.MonkeyPatch, preset: Preset, model_name: str, run: Path
) -> Preset:
    """The preset ``Trainer`` (``luser train``) hands to ``build_training_model`` for a new
    ``model_name`` run of ``preset`` (stopped there: nothing is trained)."""
    from luser_cli.training import loop

    seen: dict[str, Preset] = {}

    def capture(p: Preset, name: str, **kwargs) -> None:
        assert name == model_name
        seen["preset"] = p
        raise _Built

    with monkeypatch.context() as m:
        m.setattr(loop, "build_training_model", capture)
        with pytest.raises(_Built):
            loop.Trainer(preset, model_name, run, device="cpu", progress=False, log=lambda _: None)
    return seen["preset"]


@pytest.mark.parametrize(
    ("task", "recipe"), [("ct", "paper"), ("ct", "shipped"), ("mri4x", "shipped")]
)
def test_memprobe_builds_the_deq4ip_that_training_builds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, task: str, recipe: str
) -> None:
    """Both oracles probe the DEQ4IP a new ``luser train`` run trains (fixed-affine norm and
    data-step anchor filled in by the trainer), not the preset's unset fields (the original
    BatchNorm-with-batch-statistics map of old checkpoints)."""
    base = probe_preset(task, 16, recipe=recipe)
    trained = _trainer_preset(monkeypatch, base, "deq4ip", tmp_path / "run")
    expected = build_training_model(trained, "deq4ip", step_scale=1.0)
    assert expected.norm == "fixed" and expected.anchor > 0  # the contractive DEQ4IP
    old = build_training_model(base, "deq4ip", step_scale=1.0)
    assert (old.norm, old.anchor) != (expected.norm, expected.anchor)  # so the test can fail

    sim = SimOracle(task, "deq4ip", preset=base)
    assert sim.preset.model == trained.model and sim.preset.solver == trained.solver
    model = sim._open()["model"]
    assert (type(model), model.norm, model.anchor) == (
        type(expected),
        expected.norm,
        expected.anchor,
    )
    default = SimOracle(task, "deq4ip", 16) if recipe == "shipped" else sim  # no preset given
    assert default.preset.model == trained.model

    # the cuda oracle, built on the CPU with a pretend GPU
    for name in (
        "set_per_process_memory_fraction",
        "empty_cache",
        "synchronize",
        "reset_peak_memory_stats",
    ):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 0)
    cuda = CudaOracle(task, "deq4ip", preset=base, device="cpu")
    assert cuda.preset.model == trained.model
    model = cuda._open()["model"]
    assert (model.norm, model.anchor) == (expected.norm, expected.anchor)


def test_memprobe_leaves_other_models_as_training_builds_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = probe_preset("ct", 16, recipe="paper")
    for name in ("lu-dncnn", "luser-dw"):
        trained = _trainer_preset(monkeypatch, base, name, tmp_path / name)
        assert SimOracle("ct", name, preset=base).preset.model == trained.model == base.model


def test_cuda_backend_without_a_gpu_is_a_clean_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(Exception, match="needs a CUDA GPU"):
        CudaOracle("deblur", "lu-dncnn", 16)


# -- (5) the CLI ---------------------------------------------------------------------------------
def test_cli_writes_json_rows_and_a_table(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    md = tmp_path / "table.md"
    code, stdout, stderr = run_cli(
        ["memprobe", "--gpu-gb", "0.25", "2", "--task", "deblur", "--model", "lu-dncnn",
         "--image-size", "16", "--backend", "sim", "--json", out, "--markdown", md,
         "--no-progress", "--threads", "1", "--cap", "8"]
    )  # fmt: skip
    assert code == 0, stderr
    assert "Max training batch size" in stdout and "LU-DnCNN" in stdout and "paper" in stdout
    data = json.loads(out.read_text())
    assert data["backend"] == "sim" and data["allowance"]["context_gb"] == 0.5
    assert len(data["rows"]) == 2
    for row in data["rows"]:
        assert set(ROW_KEYS) <= set(row)
    first, second = data["rows"]
    assert (first["gpu_gb"], first["max_batch"], first["peak_gb_at_max"]) == (0.25, 0, None)
    assert (second["max_batch"], second["cap_reached"]) == (8, True)  # 2 GB fit more than 8
    assert 0 < second["required_gb_at_max"] <= 2.0
    text = md.read_text()
    assert "| deblur (16 px) | #Params |" in text and "–" in text and "luser memprobe" in text
    assert "`--fp-graph recompute`" in text and first["fp_graph"] is None  # LU-DnCNN: no DEQ


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--task", "xray"], "unknown task"),
        (["--model", "unet"], "unknown model"),
        (["--gpu-gb", "-8"], "--gpu-gb"),
        (["--gpu-gb", "0"], "--gpu-gb"),
        (["--gpu-gb", "eight"], "--gpu-gb"),
        (["--backend", "tpu"], "backend"),
        (["--context-gb", "-1"], "context"),
        (["--fp-graph", "both"], "--fp-graph"),
        (["--recipe", "ours"], "--recipe must be one of shipped, paper"),
        (["--task", "ct", "banana"], "unexpected argument"),
    ],
)
def test_cli_bad_arguments_give_one_line_errors(args: list[str], expect: str) -> None:
    code, _, err = run_cli(["memprobe", *args, "--no-progress"])
    assert_clean_error(code, err, expect=expect)


def test_radon_stand_in_is_the_real_operator_on_real_tensors_and_a_double_on_fake_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real tensors: the stand-in computes what ``ParallelBeamRadon`` computes (the shared
    operator property suite in test_operators.py runs on it). Fake tensors: shapes only, a
    transient scratch of :meth:`RadonStandIn.scratch` bytes, never the real application."""
    geometry = CTGeometry.lodopab(16)
    real, stand_in = ParallelBeamRadon(geometry), RadonStandIn.measured(geometry)
    assert stand_in.chunk_bytes == real.chunk_bytes > 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *real.image_shape, generator=g, dtype=torch.float64)
    y = torch.randn(2, *real.measurement_shape(), generator=g, dtype=torch.float64)
    assert torch.equal(stand_in.A(x), real.A(x))
    assert torch.equal(stand_in.A_adjoint(y), real.A_adjoint(y))
    assert stand_in.norm_sq() == real.norm_sq()
    assert RadonStandIn(geometry, (0, 0), norm_sq=2.5).norm_sq() == 2.5

    def no_real_application(*args: object) -> None:
        raise AssertionError("the real operator ran on fake tensors")

    monkeypatch.setattr(ParallelBeamRadon, "_project", no_real_application)
    monkeypatch.setattr(ParallelBeamRadon, "_back_project", no_real_application)
    with FakeTensorMode(), StorageTracker() as tracker:
        op = RadonStandIn(geometry, stand_in.scratch_one)
        fx = torch.empty(3, *op.image_shape, requires_grad=True)
        before = tracker.live
        fy = op.A(fx)
        assert fy.shape == (3, *real.measurement_shape()) and fy.dtype == fx.dtype
        assert tracker.peak - tracker.live == op.scratch(3, adjoint=False) // 4 * 4
        assert tracker.live - before == fy.numel() * 4
        op.A_adjoint(fy).sum().backward()
        assert fx.grad is not None and fx.grad.shape == fx.shape


def test_sim_runs_a_ct_preset_that_starts_from_the_fbp() -> None:
    """The FBP start runs on the Radon stand-in; it is made without grad before the step, so
    the step's peak is the default's."""
    peaks = []
    for initial in ("auto", "fbp"):
        preset = apply_overrides(probe_preset("ct", 24), {"model.initial": initial})
        peaks.append(SimOracle("ct", "luser-dw", 24, preset=preset).simulate(2))
    assert peaks[0] == peaks[1] > 0


def test_sim_runs_the_fbp_data_step_on_the_stand_in() -> None:
    """``model.data_step = "fbp"`` filters each stage's residual sinogram (an FFT, on fake
    tensors) before ``A^T``: it runs on the stand-in and peaks close to the gradient step,
    never below it (the filter only adds sinogram-sized temporaries)."""
    peaks = []
    for step, power in (("gradient", 0.0), ("fbp", 0.0), ("fbp", 0.5)):
        overrides = {"model.data_step": step, "model.ray_weight_power": power}
        preset = apply_overrides(probe_preset("ct", 24), overrides)
        peaks.append(SimOracle("ct", "luser-dw", 24, preset=preset).simulate(2))
    assert peaks[0] <= peaks[1] <= 1.1 * peaks[0]
    assert peaks[1] <= peaks[2] <= 1.1 * peaks[0]  # the ray weights: one more sinogram


def test_recipe_picks_the_shipped_or_the_paper_preset() -> None:
    """``--recipe shipped`` probes what ``luser train`` trains (ct.toml: weighted FBP steps),
    ``--recipe paper`` the paper's recipe that Table 3 measured (ct-paper.toml)."""
    from luser_cli.memprobe.probe import run_probe

    shipped, paper = probe_preset("ct", 24), probe_preset("ct", 24, recipe="paper")
    assert (shipped.model.data_step, shipped.model.ray_weight_power) == ("fbp", 0.5)
    assert (paper.model.data_step, paper.model.initial) == ("gradient", "auto")
    assert probe_preset("mri4x", recipe="paper") == probe_preset("mri4x")
    for recipe, name in (("paper", "ct-paper"), ("shipped", "ct")):
        rows = run_probe(
            ["ct"], ["luser-sw"], [0.25], image_size=16, backend="sim", cap=2, recipe=recipe
        )
        assert [r["preset"] for r in rows] == [name]
