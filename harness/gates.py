"""Gates: thresholds on stored scores that decide pass or fail.

A gate never passes on missing evidence. Every expected example must be present (scored or errored:
``n_scored + n_errored == n_expected``), no score may be missing or non-finite, and only then is the
mean compared with the threshold. DuckDB sorts NaN above every number, so a NaN that reached a
``>=`` comparison would pass it; scores are finite or NULL by construction (``Score``, ``ScoreRow``
and the table's CHECK), and this module treats NULL as a failure, not as a value to skip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from harness.store import GateRow


#: A gate's outcome is exactly the store's row, so results go into ``gate_results`` unchanged
#: (``run.add_gate_results([...])``): {gate, metric, observed, threshold, baseline, passed, message}.
GateResult = GateRow


def threshold_gate(
    name: str,
    metric: str,
    values: Sequence[float | None],
    n_expected: int,
    n_errored: int = 0,
    min: float | None = None,  # noqa: A002 - the suite spec's own key
    max: float | None = None,  # noqa: A002
) -> GateResult:
    """Pass when every expected example was scored with a finite value and the mean is within bounds."""
    if min is None and max is None:
        raise ValueError(f"gate {name}: give min or max")
    threshold = min if min is not None else max
    finite = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    bad = len(values) - len(finite)
    if n_expected <= 0:
        return GateResult(name, metric, None, threshold, None, False, f"{metric}: no examples were expected; a gate over nothing cannot pass")
    if len(values) + n_errored != n_expected:
        return GateResult(name, metric, None, threshold, None, False,
                          f"{metric}: incomplete run: {len(values)} scored + {n_errored} errored != {n_expected} expected; rerun to finish it")
    if n_errored:
        return GateResult(name, metric, None, threshold, None, False, f"{metric}: {n_errored} of {n_expected} examples errored")
    if bad:
        return GateResult(name, metric, None, threshold, None, False,
                          f"{metric}: {bad} of {n_expected} scores are missing or not finite; a gate cannot pass on them")
    mean = sum(finite) / len(finite)
    ok = (min is None or mean >= min) and (max is None or mean <= max)
    bound = f">= {min:g}" if min is not None else f"<= {max:g}"
    return GateResult(name, metric, mean, threshold, None, ok,
                      f"{metric} = {mean:.4g} over {n_expected} examples; needs {bound}: {'pass' if ok else 'FAIL'}")
