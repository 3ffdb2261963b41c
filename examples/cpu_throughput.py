"""CPU throughput (issue 19): training-step time old vs new, and training under contention.

Two measurements, each a JSON with the machine, its load average before and after, and every
setting, because on a shared CPU every time depends on what else runs:

``steps``: one training step (forward, loss, backward, clipping, Adam) of a model as ``luser
train`` builds it, timed in the code of a baseline commit (``--baseline``, unpacked with ``git
archive`` into a temporary folder, nothing in the working tree touched) and in the working tree,
on the same initial weights and batch (the baseline run saves them, the new run loads them), in
alternating fresh processes with the same threads and ``OMP_WAIT_POLICY``. Reports wall and CPU
seconds per step (CPU seconds of a one-thread run hardly depend on other processes sharing the
cores: it is the honest number on a busy machine) and how far the new losses and weights are
from the old ones::

    python examples/cpu_throughput.py steps --json examples/cpu-throughput/steps.json

``contention``: steps per second of ``luser-dw`` and ``lu-dncnn`` training (CT, 64 px, batch 4)
and TV reconstructions per second (CT, 64 px), next to 0, 1 and 2 busy processes (pure-Python
spin loops started here), for the thread settings ``torch`` (what luser did before: torch's
default thread count and OpenMP's default wait policy), ``luser`` (the start-up defaults of
``luser_cli.runtime``), ``threads-1`` (``--threads 1``); ``best`` is the fastest of them::

    python examples/cpu_throughput.py contention --json examples/cpu-throughput/contention.json

Each measured case runs in a fresh process (``worker``), started as the CLI starts: the thread
settings are chosen before torch is imported.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("torch", "luser", "threads-1")
WORKLOADS = ("luser-dw", "lu-dncnn", "tv")
BUSY_LOOP = "while True: pass"
EXACT = {"tol": 1e-12, "max_iter": 8}


# --------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> None:
    """One contention case in this fresh process; prints one JSON line."""
    startup = None
    if args.setting.startswith("spin-"):  # OpenMP's default policy, spinning N iterations
        os.environ["GOMP_SPINCOUNT"] = args.setting.removeprefix("spin-")
    elif args.setting != "torch":  # before torch is imported, as the CLI does
        from luser_cli import runtime

        argv = ["--threads", "1"] if args.setting == "threads-1" else []
        startup = runtime.configure_process(argv)
    import torch

    if startup is not None:
        from luser_cli import runtime

        runtime.apply_threads(startup)
    out = {
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if args.kind == "tv":
        out.update(_tv_case(args))
    else:
        out.update(_train_case(args, torch))
    print(json.dumps(out), flush=True)


def _train_case(args: argparse.Namespace, torch) -> dict:
    from luser_cli.bench.memory import build_real_step
    from luser_cli.memprobe.presets import probe_preset
    from luser_cli.training.step import clip_gradients, forward_backward

    preset = probe_preset(args.task, args.size, None, "shipped")
    model, opt, b = build_real_step(preset, args.kind, args.batch)
    t, dev = preset.train, torch.device("cpu")
    walls = []
    for k in range(args.warmup + args.steps):
        w0 = time.perf_counter()
        forward_backward(model, opt, b, t, dev)
        clip_gradients(model, t)
        opt.step()
        if k >= args.warmup:
            walls.append(time.perf_counter() - w0)
    return {"wall_s": walls, "steps_per_s": len(walls) / sum(walls)}


def _tv_case(args: argparse.Namespace) -> dict:
    import torch

    from luser_cli.bench.memory import build_real_step
    from luser_cli.classical.methods import reconstruct_classical
    from luser_cli.memprobe.presets import probe_preset

    preset = probe_preset(args.task, args.size, None, "shipped")
    _, _, b = build_real_step(preset, "luser-dw", 1)
    walls = []
    with torch.no_grad():
        for k in range(args.warmup + args.steps):
            w0 = time.perf_counter()
            reconstruct_classical("tv", args.task, b.op, b.y)
            if k >= args.warmup:
                walls.append(time.perf_counter() - w0)
    return {"wall_s": walls, "steps_per_s": len(walls) / sum(walls)}


# --------------------------------------------------------------------------------- helpers
def _run(
    args: list[str],
    pythonpath: Path | None,
    env_extra: dict | None = None,
    timeout: float | None = None,
) -> dict:
    """``python cpu_throughput.py ARGS`` in a fresh process with no thread variables set but
    ``env_extra``; returns the JSON of its last stdout line (``{"timed_out": seconds}`` when it
    ran past ``timeout``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.pop("OMP_WAIT_POLICY", None)
    env.update(env_extra or {})
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"timed_out": timeout}
    if proc.returncode != 0:
        raise RuntimeError(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> dict:
    sys.path.insert(0, str(ROOT))
    from luser_cli.bench.machine import load_average, machine_info, now_iso

    info = machine_info()
    info["date"] = now_iso()
    info["load_average_start"] = load_average()
    affinity = getattr(os, "sched_getaffinity", None)
    info["affinity_cpus"] = len(affinity(0)) if affinity else None
    others = subprocess.run(
        ["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True
    ).stdout.splitlines()[1:6]
    info["busiest_processes_at_start"] = [line.strip()[:160] for line in others]
    return info


# --------------------------------------------------------------------------------- steps
def ab_worker(args: argparse.Namespace) -> None:
    """Old and new training steps of one case, alternating in this one process on the same
    weights and batch (restored after every step), so both meet the same machine load."""
    import copy

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.baseline_dir)
    pkgs = {"old": "luser_base", "new": "luser_cli"}
    task, model_name, size, batch = args.case.split(":")

    def build(pkg: str, exact: bool = False):
        mem = importlib.import_module(f"{pkg}.bench.memory")
        try:  # the preset helper's module since the memprobe split (issue 18)
            oracles = importlib.import_module(f"{pkg}.memprobe.presets")
        except ModuleNotFoundError:  # an older copy of the package
            oracles = importlib.import_module(f"{pkg}.memprobe.oracles")
        config = importlib.import_module(f"{pkg}.training.config")
        step = importlib.import_module(f"{pkg}.training.step")
        preset = oracles.probe_preset(task, int(size), None, "shipped")
        if exact:  # float64, solves of exactly EXACT["max_iter"] evaluations
            fixed = {
                f"solver.{d}.{k}": v for d in ("forward", "backward") for k, v in EXACT.items()
            }
            preset = config.apply_overrides(preset, fixed)
        model, opt, b = mem.build_real_step(preset, model_name, int(batch))
        if exact:
            model.double()
            b.op = b.op.double()
            b.x, b.y, b.x0 = b.x.double(), b.y.double(), b.x0.double()
        return {"model": model, "opt": opt, "batch": b, "train": preset.train, "step": step}

    def share(cases: dict) -> None:  # the new model starts from the old one's weights and batch
        old, new = cases["old"], cases["new"]
        new["model"].load_state_dict(old["model"].state_dict())
        nb, ob = new["batch"], old["batch"]
        nb.x, nb.y, nb.x0 = ob.x, ob.y, ob.x0

    def run(c: dict, optimizer_step: bool = True) -> tuple[float, float, float, Tensor]:
        model, opt, b, t, step = c["model"], c["opt"], c["batch"], c["train"], c["step"]
        saved_model = copy.deepcopy(model.state_dict())
        saved_opt = copy.deepcopy(opt.state_dict())
        w0, c0 = time.perf_counter(), time.process_time()
        _, loss = step.forward_backward(model, opt, b, t, torch.device("cpu"))
        grads = [
            p.grad.detach().flatten().clone() for p in model.parameters() if p.grad is not None
        ]
        if optimizer_step:
            step.clip_gradients(model, t)
            opt.step()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        model.load_state_dict(saved_model)
        opt.load_state_dict(saved_opt)
        return wall, cpu, float(loss.detach()), torch.cat(grads)

    cases = {name: build(pkg) for name, pkg in pkgs.items()}
    share(cases)
    out: dict = {name: {"wall_s": [], "cpu_s": []} for name in pkgs}
    first: dict = {}
    for rep in range(args.warmup + args.repeats):
        for name in pkgs:
            wall, cpu, loss, grad = run(cases[name])
            if rep == 0:
                first[name] = (loss, grad)
            if rep >= args.warmup:
                out[name]["wall_s"].append(wall)
                out[name]["cpu_s"].append(cpu)
        print(json.dumps({n: out[n]["cpu_s"][-1:] for n in pkgs}), file=sys.stderr, flush=True)
    if first:
        (lo, go), (ln, gn) = first["old"], first["new"]
        out["loss_rel_diff"] = abs(ln - lo) / abs(lo)
        out["grad_rel_l2_diff"] = float((gn - go).norm() / go.norm())
    out["fp_iterations"] = {
        name: [
            [int(i) for i in r["forward_iterations"].tolist()] for r in cases[name]["model"].records
        ]
        for name in pkgs
    }
    del cases
    if args.exact:
        exact = {name: build(pkg, exact=True) for name, pkg in pkgs.items()}
        share(exact)
        go, gn = run(exact["old"], False)[3], run(exact["new"], False)[3]
        out["float64_grad_rel_l2_diff"] = float((gn - go).norm() / go.norm())
    print(json.dumps(out), flush=True)


def cmd_steps(args: argparse.Namespace) -> dict:
    doc: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "cases": []}
    doc["machine"] = _machine()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", args.baseline], capture_output=True, text=True
    ).stdout.strip()
    doc["baseline"] = commit
    doc["settings"] = {
        "threads": args.threads,
        "OMP_WAIT_POLICY": "PASSIVE",
        "warmup_pairs": args.warmup,
        "timed_pairs": args.repeats,
    }
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    with tempfile.TemporaryDirectory() as tmp:
        base = _unpack(commit, Path(tmp))
        for case in args.cases:
            task, model, size, batch = case.split(":")
            extra = ["--case", case, "--baseline-dir", str(base), "--threads", str(args.threads)]
            extra += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            res = _run(["ab", *extra], ROOT, env)
            row = {"case": case, "task": task, "model": model, "image_size": int(size)}
            row["batch"] = int(batch)
            for name in ("old", "new"):
                row[f"{name}_wall_s"] = [round(w, 3) for w in res[name]["wall_s"]]
                row[f"{name}_cpu_s"] = [round(c, 3) for c in res[name]["cpu_s"]]
                row[f"{name}_wall_s_median"] = round(statistics.median(res[name]["wall_s"]), 3)
                row[f"{name}_cpu_s_median"] = round(statistics.median(res[name]["cpu_s"]), 3)
            row["speedup_wall"] = round(row["old_wall_s_median"] / row["new_wall_s_median"], 2)
            row["speedup_cpu"] = round(row["old_cpu_s_median"] / row["new_cpu_s_median"], 2)
            for key in ("loss_rel_diff", "grad_rel_l2_diff"):
                row[key] = res[key]
            row["fp_forward_iterations_equal"] = (
                res["fp_iterations"]["old"] == res["fp_iterations"]["new"]
            )
            doc["cases"].append(row)
            print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), flush=True)
        if args.exact_case:  # float64 runs no oneDNN kernels: small, or it takes minutes
            extra = ["--case", args.exact_case, "--baseline-dir", str(base), "--exact"]
            res = _run(["ab", *extra, "--repeats", "0", "--warmup", "0"], ROOT, env)
            doc["exact_check"] = {
                "case": args.exact_case,
                "dtype": "float64",
                "solver": EXACT,
                "first_step_grad_rel_l2_diff": res["float64_grad_rel_l2_diff"],
            }
    doc["machine"]["load_average_end"] = _load()
    return doc


def _unpack(commit: str, dest: Path) -> Path:
    """The baseline's ``luser_cli`` (renamed ``luser_base``, so that it imports next to the
    working tree's) and ``presets`` under ``dest/baseline`` (``git archive``)."""
    tar_path = dest / "baseline.tar"
    with open(tar_path, "wb") as f:
        cmd = ["git", "-C", str(ROOT), "archive", commit, "luser_cli", "presets"]
        subprocess.run(cmd, stdout=f, check=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest / "baseline", filter="data")
    pkg = dest / "baseline" / "luser_cli"
    for path in pkg.rglob("*.py"):
        path.write_text(path.read_text(encoding="utf-8").replace("luser_cli", "luser_base"))
    pkg.rename(dest / "baseline" / "luser_base")
    return dest / "baseline"


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------------- contention
def cmd_contention(args: argparse.Namespace) -> dict:
    doc: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "rows": []}
    doc["machine"] = _machine()
    doc["settings"] = {"steps": args.steps, "warmup": 1, "image_size": args.size, "batch": 4}
    doc["settings_order"] = list(args.settings)
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
        try:
            time.sleep(1.0 if busy else 0.0)
            for work in args.workloads:
                kind, batch = (work, "4") if work != "tv" else ("tv", "1")
                row = {"busy": busy, "workload": work, "load_average": _load()}
                for setting in args.settings:
                    extra = ["--kind", kind, "--task", "ct", "--size", str(args.size)]
                    extra += ["--batch", batch, "--steps", str(args.steps), "--warmup", "1"]
                    res = _run(["worker", "--setting", setting, *extra], ROOT, None, args.timeout)
                    if "timed_out" in res:  # a case stuck behind spinning threads
                        row[setting], row[f"{setting}_timed_out_s"] = None, args.timeout
                        row[f"{setting}_threads"] = "?"
                        continue
                    row[setting] = round(res["steps_per_s"], 4)
                    row[f"{setting}_threads"] = res["torch_threads"]
                    row[f"{setting}_wait_policy"] = res["omp_wait_policy"]
                best = max(args.settings, key=lambda s: row[s] or 0.0)
                row["best"], row["best_setting"] = row[best], best
                doc["rows"].append(row)
                print(json.dumps(row), flush=True)
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    doc["machine"]["load_average_end"] = _load()
    return doc


def _markdown(doc: dict, kind: str) -> str:
    m = doc["machine"]
    head = (
        f"{m.get('cpu')} ({m.get('affinity_cpus')} CPUs), torch {m.get('torch')}, "
        f"{doc['machine']['date']}, load average {m['load_average_start']} at the start, "
        f"{m.get('load_average_end')} at the end.\n\n"
    )
    if kind == "steps":
        lines = [
            f"Baseline {doc['baseline'][:10]} against the working tree, "
            f"{doc['settings']['threads']} thread(s), old and new steps alternating in one "
            "process on the same weights and batch (medians of "
            f"{doc['settings']['timed_pairs']} pairs).\n",
            "| case | old s/step (wall / CPU) | new s/step (wall / CPU) | speed-up wall / CPU "
            "| loss rel. diff | 1st-step gradient rel. diff | same FP iterations |",
            "|---|--:|--:|--:|--:|--:|---|",
        ]
        for r in doc["cases"]:
            lines.append(
                f"| {r['model']} {r['task']} {r['image_size']} px x {r['batch']} "
                f"| {r['old_wall_s_median']} / {r['old_cpu_s_median']} "
                f"| {r['new_wall_s_median']} / {r['new_cpu_s_median']} "
                f"| {r['speedup_wall']}x / {r['speedup_cpu']}x "
                f"| {r['loss_rel_diff']:.1e} | {r['grad_rel_l2_diff']:.1e} "
                f"| {'yes' if r['fp_forward_iterations_equal'] else 'no'} |"
            )
        if "exact_check" in doc:
            e = doc["exact_check"]
            lines.append(
                f"\nSame function: the first-step gradients of {e['case']} in float64 with "
                f"{e['solver']['max_iter']}-iteration solves, new against old, differ by "
                f"{e['first_step_grad_rel_l2_diff']:.1e} (relative L2)."
            )
        return head + "\n".join(lines) + "\n"
    used = [s for s in SETTINGS if any(s in r for r in doc["rows"])]
    settings = doc.get("settings_order") or used
    lines = [
        "| busy processes | workload | " + " | ".join(settings) + " | best |",
        "|--:|---|" + "--:|" * (len(settings) + 1),
    ]
    for r in doc["rows"]:
        cells = [
            f"{r[s]:.3f} ({r[f'{s}_threads']} thr)"
            if r[s] is not None
            else f"not done in {r[f'{s}_timed_out_s']:.0f} s"
            for s in settings
        ]
        lines.append(
            f"| {r['busy']} | {r['workload']} | " + " | ".join(cells) + f" | {r['best']:.3f} |"
        )
    checks = []
    for r in doc["rows"]:
        if r.get("luser") and r.get("best") and r.get("threads-1"):
            where = "alone" if r["busy"] == 0 else f"next to {r['busy']} busy"
            checks.append(
                f"- {r['workload']}, {where}: the default (`luser`) reaches "
                f"{r['luser'] / r['best']:.0%} of the best setting; `--threads 1` is "
                f"{r['threads-1'] / r['luser']:.2f}x the default's speed"
            )
    text = "(steps or TV reconstructions per second)\n\n" + "\n".join(lines) + "\n"
    return head + text + ("\n" + "\n".join(checks) + "\n" if checks else "")


def _setting(text: str) -> str:
    """A thread setting: one of :data:`SETTINGS`, or ``spin-N`` (torch's thread count and
    OpenMP's default wait policy with ``GOMP_SPINCOUNT=N``: spin N iterations, then sleep)."""
    if text in SETTINGS or (text.startswith("spin-") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"unknown setting {text!r}: {', '.join(SETTINGS)} or spin-N")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("worker", help="internal: one contention case in this process")
    w.add_argument("--setting", default="luser", type=_setting)
    w.add_argument("--kind", required=True)
    w.add_argument("--task", default="ct")
    w.add_argument("--size", type=int, default=64)
    w.add_argument("--batch", type=int, default=4)
    w.add_argument("--steps", type=int, default=3)
    w.add_argument("--warmup", type=int, default=1)
    a = sub.add_parser("ab", help="internal: old and new steps of one case in this process")
    a.add_argument("--case", required=True)
    a.add_argument("--baseline-dir", required=True)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--warmup", type=int, default=1)
    a.add_argument("--exact", action="store_true")
    s = sub.add_parser("steps", help="training-step time, baseline commit vs working tree")
    s.add_argument("--baseline", default="d5c798a3c8769f6f537a0ffb3607a5a476381cf7")
    s.add_argument(
        "--cases", nargs="+", default=["ct:luser-dw:64:4", "ct:lu-dncnn:64:4", "ct:luser-dw:362:1"]
    )
    s.add_argument("--repeats", type=int, default=3, help="timed old/new pairs per case")
    s.add_argument("--warmup", type=int, default=1, help="untimed old/new pairs first")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument(
        "--exact-case",
        default="ct:luser-dw:32:2",
        help="case whose first-step gradients are also compared in float64 with fixed "
        "8-iteration solves ('' to skip)",
    )
    s.add_argument("--json", type=Path)
    c = sub.add_parser("contention", help="steps/s next to busy processes, per thread setting")
    c.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    c.add_argument("--settings", nargs="+", default=list(SETTINGS), type=_setting)
    c.add_argument("--size", type=int, default=64)
    c.add_argument("--steps", type=int, default=5, help="timed steps per case (after 1 warm-up)")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds before a case is stopped")
    c.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.mode in ("worker", "ab"):
        (worker if args.mode == "worker" else ab_worker)(args)
        return
    doc = cmd_steps(args) if args.mode == "steps" else cmd_contention(args)
    table = _markdown(doc, args.mode)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        args.json.with_suffix(".md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
