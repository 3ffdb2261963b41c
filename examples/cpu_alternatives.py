"""CPU speed-ups that were tried and measured (issue 19): bfloat16 autocast and torch.compile.

Both are measured in CPU seconds of a one-thread process (``time.process_time``), which hardly
depends on other processes sharing the cores, alternating the two variants so that drifts hit
both alike:

- ``bf16``: one training step (forward, loss, backward; CT 64 px x 4, the shipped preset) of
  LUSER-DW and LU-DnCNN in float32 and under ``luser train --bf16`` (``torch.autocast`` to
  bfloat16), on the same weights and batch; and the relative loss difference.
- ``compile``: the LUSER shallow block's fixed-point map (``ShallowEquilibriumBlock.step``,
  forward and backward, 64 px x 4, channels-last), eager against ``torch.compile`` (inductor,
  needs a C++ compiler), with the compile time and the largest output difference.

Usage::

    python examples/cpu_alternatives.py --json examples/cpu-throughput/alternatives.json
    python examples/cpu_alternatives.py --profile   # torch.profiler table of one LUSER-DW step
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

torch.set_num_threads(1)


def _cpu(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def bf16_case(model_name: str, repeats: int) -> dict:
    from luser_cli.bench.memory import build_real_step
    from luser_cli.memprobe.presets import probe_preset
    from luser_cli.training.step import forward_backward

    preset = probe_preset("ct", 64, None, "shipped")
    model, opt, batch = build_real_step(preset, model_name, 4)
    dev = torch.device("cpu")
    times: dict[bool, list[float]] = {False: [], True: []}
    losses: dict[bool, float] = {}
    for k in range(repeats + 1):  # the first pair warms up
        for bf16 in (False, True):
            t = preset.train.model_copy(update={"bf16": bf16})
            result: dict = {}

            def step(t=t, result=result) -> None:
                result["loss"] = float(forward_backward(model, opt, batch, t, dev)[1].detach())

            seconds = _cpu(step)
            if k:
                times[bf16].append(seconds)
            losses[bf16] = result["loss"]
    f32, b16 = statistics.median(times[False]), statistics.median(times[True])
    return {
        "model": model_name,
        "float32_cpu_s": round(f32, 3),
        "bf16_cpu_s": round(b16, 3),
        "bf16_speedup": round(f32 / b16, 2),
        "loss_rel_diff": abs(losses[True] - losses[False]) / abs(losses[False]),
    }


def compile_case(repeats: int) -> dict:
    from luser_cli.models.shallow_block import ShallowEquilibriumBlock
    from luser_cli.models.unrolled import conv_layout

    torch.manual_seed(0)
    block = ShallowEquilibriumBlock(1)
    d = conv_layout(torch.rand(4, 1, 64, 64))
    r = conv_layout(0.01 * torch.randn(4, 1, 64, 64)).requires_grad_()
    with torch.no_grad():
        v = block.injection(d)

    def fwd_bwd(f) -> None:
        out = f(r, v)
        torch.autograd.grad(out, r, torch.ones_like(out))

    compiled = torch.compile(block.step)
    w0 = time.perf_counter()
    fwd_bwd(compiled)
    compile_wall = time.perf_counter() - w0
    fwd_bwd(block.step)
    eager, comp = [], []
    for _ in range(repeats):
        eager.append(_cpu(lambda: fwd_bwd(block.step)))
        comp.append(_cpu(lambda: fwd_bwd(compiled)))
    with torch.no_grad():
        diff = float((block.step(r, v) - compiled(r, v)).abs().max())
    e, c = statistics.median(eager), statistics.median(comp)
    return {
        "eager_cpu_s": round(e, 4),
        "compiled_cpu_s": round(c, 4),
        "compile_speedup": round(e / c, 2),
        "first_call_wall_s": round(compile_wall, 1),
        "max_abs_diff": diff,
    }


def profile_step() -> str:
    """The torch.profiler operator table (self CPU time) of one LUSER-DW training step (CT,
    64 px x 4, after one untimed step)."""
    from torch.profiler import ProfilerActivity, profile

    from luser_cli.bench.memory import build_real_step
    from luser_cli.memprobe.presets import probe_preset
    from luser_cli.training.step import clip_gradients, forward_backward

    preset = probe_preset("ct", 64, None, "shipped")
    model, opt, batch = build_real_step(preset, "luser-dw", 4)
    t, dev = preset.train, torch.device("cpu")
    forward_backward(model, opt, batch, t, dev)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward_backward(model, opt, batch, t, dev)
        clip_gradients(model, t)
        opt.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", action="store_true", help="print one step's profile and stop")
    args = ap.parse_args()
    if args.profile:
        print(profile_step())
        return
    from luser_cli.bench.machine import load_average, machine_info, now_iso

    doc = {"machine": machine_info(), "date": now_iso(), "load_average_start": load_average()}
    doc["bf16"] = [bf16_case(m, args.repeats) for m in ("luser-dw", "lu-dncnn")]
    try:
        doc["compile"] = compile_case(5 * args.repeats)
    except Exception as e:  # no C++ compiler, or inductor failing: say so, do not hide it
        doc["compile"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    doc["load_average_end"] = load_average()
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
