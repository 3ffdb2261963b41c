"""``luser train --init``: start a new run from trained weights (fine-tuning).

``builtin`` is the model shipped with luser for the task, ``latest`` the newest local run of the
task, anything else a run folder or checkpoint file (:func:`luser_cli.shipped.resolve_model`).
The source must hold the same model for the same task and channel count, with tensors of the
same shapes; its image size may differ. The operator-dependent buffer ``step_scale``
(``1 / ||A||^2``) is kept from the new run, since it belongs to the new run's operator.
Only weights are taken: the optimiser, schedule and step counter start afresh.
"""

from __future__ import annotations

from collections.abc import Callable

from luser_cli.errors import CheckpointError
from luser_cli.models.unrolled import ReconstructionModel
from luser_cli.training import checkpoint as ckpt

#: Buffers that belong to the run's operator, not to what was learned.
OPERATOR_BUFFERS = ("step_scale",)


#: Model settings that only shape a fresh initialisation: loaded weights make them moot.
INIT_ONLY = frozenset({"init_gain"})


def load_init_weights(
    model: ReconstructionModel,
    ref: str,
    *,
    task: str,
    model_name: str,
    channels: int,
    model_settings: dict,
    log: Callable[[str], None] = print,
) -> str:
    """Load the weights named by ``ref`` into ``model`` (in place); returns the source's label.

    Raises a one-line :class:`CheckpointError` for a missing source, another task or model, or
    tensors whose shapes do not fit. Logs a warning line when the source was trained with other
    model settings (data step, initial estimate, ...): the weights then load, but they were
    learned for a different pipeline.
    """
    from luser_cli.runs import checkpoint_file
    from luser_cli.shipped import resolve_model

    source = resolve_model(ref, task)
    path = checkpoint_file(source.path)
    data = ckpt.load_checkpoint(path)
    ckpt.check_compatible(
        data, task=task, model=model_name, channels=channels, source=f"--init {path}"
    )
    state = {k: v for k, v in data["model_state"].items() if k not in OPERATOR_BUFFERS}
    own = {k: v for k, v in model.state_dict().items() if k not in OPERATOR_BUFFERS}
    ckpt.check_state_shapes(own, state, f"--init {path}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160]
        raise CheckpointError(f"--init {path}: weights do not fit ({first})") from None
    missing = [k for k in missing if k not in OPERATOR_BUFFERS]
    if missing or unexpected:
        raise CheckpointError(
            f"--init {path}: weights do not fit a {model_name} model "
            f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
        )
    theirs = data["preset"].get("model", {})
    differ = [
        f"{k} {theirs.get(k)!r} -> {v!r}"
        for k, v in model_settings.items()
        if k in theirs and theirs.get(k) != v and k not in INIT_ONLY
    ]
    if differ:
        log(f"warning: --init weights were trained with other model settings: {'; '.join(differ)}")
    return source.label
