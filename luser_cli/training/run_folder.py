"""Opening a run folder for ``luser train`` (rank 0): what it holds, whether ``--resume`` may
continue it, and taking its lock.

Everything here reads or checks; the trainer broadcasts the outcome (or its one-line error) to
the other ranks (:meth:`luser_cli.training.loop.Trainer._open_run_everywhere`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from luser_cli.errors import ConfigError, OutputError
from luser_cli.training import checkpoint as ckpt
from luser_cli.training.config import Preset
from luser_cli.training.run_lock import RunLock, check_run_folder

#: Settings ``--resume`` may change: the run's length.
LENGTH = ("train.steps ", "train.epochs ")


def changed_settings(now: dict[str, Any], stored: dict[str, Any], model_name: str) -> list[str]:
    """Dotted preset fields (``"train.lr 0.001 -> 0.002"``) that differ between a checkpoint's
    preset ``stored`` and this run's ``now`` (both ``Preset.model_dump(mode="json")``)."""
    changed: list[str] = []
    if model_name == "deq4ip" and isinstance(stored.get("model"), dict):
        # A DEQ4IP run from before model.deq4ip_norm/anchor trained the original map.
        stored = {**stored, "model": dict(stored["model"])}
        for key, original in (("deq4ip_norm", "batch"), ("deq4ip_anchor", 0.0)):
            if stored["model"].get(key) is None:
                stored["model"][key] = original
    stored = _with_defaults(stored)

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else k)
        elif a != b:
            changed.append(f"{key} {a!r} -> {b!r}")

    walk(stored, now, "")
    return changed


def _with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """``stored`` with the fields it lacks set to their defaults: a run saved before a setting
    existed trained with that setting's default (``model.init_gain`` 0.01, no Jacobian penalty,
    ...), so ``--resume`` must not call it changed. A preset that no longer validates is
    compared as stored."""
    try:
        return Preset.model_validate_json(json.dumps(stored)).model_dump(mode="json")
    except (ValidationError, TypeError, ValueError):
        return stored


def open_run(
    out: Path,
    *,
    resume: bool,
    preset: dict[str, Any],
    expect: dict[str, Any],
    model_name: str,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None for a new run. Raises a one-line error for a
    folder that cannot be used: a file, a folder holding files luser did not write, or a run
    with other settings (``--resume``). Reads only: nothing is created before the whole trainer
    is built (:func:`lock_run_folder`). ``expect`` holds the task, model, image size and
    channels the checkpoint must have (:func:`luser_cli.training.checkpoint.check_compatible`).
    """
    check_run_folder(out, resume=resume)
    resumable = ckpt.load_resumable(out, warn=log) if resume else None
    if resumable is not None:
        ckpt.check_compatible(resumable, **expect, source=f"run folder {out}")
        changed = [
            c
            for c in changed_settings(preset, resumable["preset"], model_name)
            if not c.startswith(LENGTH)
        ]
        if changed:
            raise ConfigError(
                f"{out} was trained with other settings ({'; '.join(changed[:3])}); "
                "--resume continues a run only with its own settings (--steps/--epochs may "
                "extend it): drop those flags or choose another --out"
            )
        return resumable
    existing = [n for n in (ckpt.LAST, ckpt.PREV, ckpt.BEST) if (out / n).exists()]
    if existing and not resume:
        raise ConfigError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if resume:
        log(f"no checkpoint in {out} to resume from; starting a new run")
    return None


def lock_run_folder(out: Path, *, resume: bool, resumable_step: int | None) -> RunLock:
    """Create the run folder and take its lock (:class:`RunLock`), then check again what the
    folder holds, now that no other ``luser train`` can write it. ``resumable_step`` is the step
    of the checkpoint :func:`open_run` found (None: none). The lock is released if a check
    fails."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise OutputError(f"--out {out}: cannot create it ({why})") from None
    lock = RunLock(out).acquire()  # released by the trainer or at process end
    try:
        check_run_folder(out, resume=resume)
        if resume:
            now = ckpt.load_resumable(out, warn=lambda _m: None)
            if (now["step"] if now else None) != resumable_step:
                raise ConfigError(
                    f"{out} changed while this run was starting (another luser train wrote "
                    "it); run the command again"
                )
    except BaseException:
        lock.release()
        raise
    return lock
