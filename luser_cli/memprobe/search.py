"""The largest batch size for which a monotone ``fits(batch)`` oracle says yes.

``fits`` is assumed monotone: if a batch of ``b`` fits, every smaller batch fits too (memory
grows with the batch). The search keeps a bracket ``fits(lo)`` and ``not fits(hi)`` and closes
it to ``hi == lo + 1``, so the answer is exact:

1. optional predicted probes (at most ``max_predictions``): ``predict(lo, hi)`` proposes the
   next batch from what was measured so far (e.g. an affine fit of the memory peaks); a
   proposal outside the bracket is clamped into it, so after a prediction ``c`` that fits the
   next proposal is typically ``c + 1`` and an exact prediction closes the bracket in two calls;
2. exponential (galloping) search: steps 1, 2, 4, ... up from ``lo`` while it fits (from 0:
   batches 1, 3, 7, 15, ...) or down from ``hi`` while it does not, until a bracket is known;
3. bisection of the bracket.

Without predictions this is the classic exponential search then binary search, ``O(log b*)``
calls; predictions only change where the search starts. Batch 1 not fitting gives 0; ``fits``
holding at ``cap`` stops there (``cap_reached``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_CAP", "Predictor", "SearchResult", "max_batch"]

#: Default upper limit of the search.
DEFAULT_CAP = 4096

#: ``predict(lo, hi) -> batch or None``: ``lo`` the largest batch known to fit (0 if none),
#: ``hi`` the smallest known not to fit (``cap + 1`` if none).
Predictor = Callable[[int, int], "int | None"]


@dataclass
class SearchResult:
    """Outcome of :func:`max_batch`.

    ``max_batch``: the largest ``b <= cap`` with ``fits(b)``; 0 when batch 1 does not fit.
    ``calls``: every ``(batch, fits)`` asked, in order. ``cap_reached``: ``fits(cap)`` held, so
    the true maximum may be larger than ``cap``.
    """

    max_batch: int
    cap: int
    calls: list[tuple[int, bool]] = field(default_factory=list)
    cap_reached: bool = False


def max_batch(
    fits: Callable[[int], bool],
    cap: int = DEFAULT_CAP,
    guess: int | None = None,
    predict: Predictor | None = None,
    max_predictions: int = 4,
) -> SearchResult:
    """Largest batch ``b`` in ``[1, cap]`` with ``fits(b)``, or 0 if ``fits(1)`` is false.

    Args:
        fits: the monotone oracle; called at most once per batch size.
        cap: the largest batch considered (>= 1).
        guess: the first batch to try (counts as a prediction).
        predict: proposes later batches from the bracket so far (see the module docstring).
        max_predictions: how many guessed/predicted probes before the plain search.
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    result = SearchResult(max_batch=0, cap=cap)
    lo, hi = 0, cap + 1  # fits(lo) (0: trivially), not fits(hi) (cap + 1: not asked)

    def ask(b: int) -> None:
        nonlocal lo, hi
        ok = bool(fits(b))
        result.calls.append((b, ok))
        if ok:
            lo = max(lo, b)
        else:
            hi = min(hi, b)

    # 1. predictions
    proposals = 0
    while hi - lo > 1 and proposals < max_predictions:
        if proposals == 0 and guess is not None:
            candidate: int | None = guess
        elif predict is not None:
            candidate = predict(lo, hi)
        else:
            candidate = None
        if candidate is None:
            break
        ask(min(max(int(candidate), lo + 1), hi - 1))
        proposals += 1

    # 2. exponential search for the missing side of the bracket
    step = 1
    if hi == cap + 1:  # nothing failed yet: gallop up from lo
        while hi == cap + 1 and lo < cap:
            ask(min(lo + step, cap))
            step *= 2
    elif lo == 0:  # nothing fitted yet: gallop down from hi
        while lo == 0 and hi > 1:
            ask(max(hi - step, 1))
            step *= 2

    # 3. bisection
    while hi - lo > 1:
        ask((lo + hi) // 2)
    result.max_batch = lo
    result.cap_reached = lo == cap
    return result
