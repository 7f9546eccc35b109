"""``threshold_gate``: a bound on the mean of a list of scores, the rule every threshold gate applies.

It needs no store: it fails on missing evidence (nothing expected, an incomplete run, an errored,
missing or non-finite score) before it compares the mean with the bound. Beside it, the sentence pieces
(an interval, a comparison value, the verdict) that every gate's message shares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.gates.report import GateResult

if TYPE_CHECKING:
    from harness.analysis.stats import Interval


def threshold_gate(
    name: str,
    metric: str,
    values: Sequence[float | None],
    n_expected: int,
    n_errored: int = 0,
    min: float | None = None,  # shadows the builtin: the suite spec's own key
    max: float | None = None,
    baseline: float | None = None,
    interval: Interval | None = None,
    what: str = "",
    rule: str = "bound",
    alpha: float = 0.05,
    who: str = "",
) -> GateResult:
    """Pass when every expected example was scored with a finite value and the mean is within bounds by
    ``rule`` (``harness.gates.decide``: "bound", the one-sided (1 - alpha) bound of the mean clears each
    bound; "point", the mean itself).

    ``baseline`` (the base model's mean) and ``interval`` (on the mean) go into the sentence; ``what``
    (target and suite) prefixes it; ``who`` names whose answers errored ("the adapter (a@1)").
    """
    if min is None and max is None:
        raise ValueError(f"gate {name}: give min or max")
    threshold = min if min is not None else max
    bound = " and ".join(b for b in (f">= {min:g}" if min is not None else "", f"<= {max:g}" if max is not None else "") if b)
    head = f"{what}{metric}"
    finite = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    bad = len(values) - len(finite)

    def fail(msg: str) -> GateResult:
        return GateResult(name, metric, None, threshold, baseline, False, f"{head}: {msg}; needs {bound}: FAIL",
                          rule="not measured", n=len(finite))

    if n_expected <= 0:
        return fail("no examples were expected; a gate over nothing cannot pass")
    if not values and not n_errored:
        return fail(f"no scores at all for {metric} (does a scorer of the suite emit it?)")
    if len(values) + n_errored != n_expected:
        return fail(f"incomplete run: {len(values)} scored + {n_errored} errored != {n_expected} expected; rerun to finish it")
    if n_errored:
        return fail(f"{n_errored} of {n_expected} examples errored" + (f" ({who}'s answers)" if who else "")
                    + "; errors are never scored as a pass")
    if bad:
        return fail(f"{bad} of {n_expected} scores are missing or not finite; a gate cannot pass on them")
    from harness.gates.decide import decide_mean

    mean = sum(finite) / len(finite)
    decisions = [decide_mean(finite, b, floor, rule, alpha) for b, floor in ((min, True), (max, False)) if b is not None]
    ok = all(d.passed for d in decisions)
    return GateResult(name, metric, mean, threshold, baseline, ok,
                      f"{head} = {mean:.4g}{_ci(interval)} over {n_expected} examples{_vs(baseline, 'base')}; "
                      + "; ".join(d.sentence for d in decisions), rule=decisions[0].rule, n=len(finite))


def _ci(interval: Interval | None) -> str:
    return "" if interval is None else f" (95% {interval.method} interval {interval.low:.4g}-{interval.high:.4g})"


def _vs(value: float | None, who: str) -> str:
    return "" if value is None else f"; {who} {value:.4g}"


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"
