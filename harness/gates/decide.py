"""The decision rule every quality gate names: how an estimate and its evidence become pass or fail.

``bound`` (the default, DESIGN's release rule): the one-sided (1 - alpha) confidence bound must clear the
threshold: the lower bound for a floor (``min``), the upper bound for a ceiling (``max``); a regression
against a baseline passes only when the upper bound of the paired drop is within the margin, a gain only
when the lower bound of the paired gain reaches ``min_gain``. Where the estimate itself would pass but
the sample could not clear the threshold even if every answer went the adapter's way, the verdict is
"insufficient evidence" with the number of examples that could (an estimate that fails is a plain FAIL). ``point`` (``decision = "point"`` in the gates file, for exploratory runs)
compares the point estimate alone, and every sentence says so.

The bounds are ``harness.analysis.stats``' (exact Clopper-Pearson for proportions, Bonferroni-combined
exact bounds for paired 0/1 differences, the seeded percentile bootstrap for continuous means).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.analysis.stats import (
    examples_needed,
    is_binary,
    mean_bound,
    paired_binary_bound,
    proportion_bound,
)

RULES = ("bound", "point")


@dataclass(frozen=True)
class Decision:
    """A verdict with the rule that made it and the sentence that shows it (``...: pass`` / ``...: FAIL``)."""

    passed: bool
    rule: str
    sentence: str
    insufficient: bool = False


def _pct(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _cmp(value: float, threshold: float, floor: bool) -> bool:
    return value >= threshold if floor else value <= threshold


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def decide_proportion(k: int, n: int, threshold: float, floor: bool, rule: str = "bound", alpha: float = 0.05,
                      unit: str = "examples", best: str | None = None) -> Decision:
    """k of n (a rate: correct answers, kept answers, leaked answers) against a floor or a ceiling; ``unit``
    names what n counts and ``best`` the case most in the adapter's favour ("all kept", "none leaked")."""
    sign = ">=" if floor else "<="
    if rule == "point":
        ok = _cmp(k / n, threshold, floor)
        return Decision(ok, rule, f"decided on the point estimate (decision = \"point\"): {k / n:.4g} {sign} {threshold:g}: "
                                  f"{_verdict(ok)}")
    side = "lower" if floor else "upper"
    bound = proportion_bound(k, n, side, alpha)
    ok = _cmp(bound, threshold, floor)
    text = f"one-sided {_pct(alpha)} {side} bound {bound:.4g} (exact) must be {sign} {threshold:g}"
    if not ok and _cmp(k / n, threshold, floor):
        # the estimate itself would pass: the sample is what falls short. Where no such sample could clear the
        # bound even at its best, say so and how many examples could (an estimate that fails is a plain FAIL)
        need = examples_needed(threshold, side, alpha)
        if need is None or need > n:
            best = best or ("all of them right" if floor else "none of them counted")
            more = (f"no number of {unit} can show it" if need is None else f"needs at least {need} {unit}, {best}")
            return Decision(False, rule, f"{text}: insufficient evidence: {n} {unit} cannot show {sign} {threshold:g} even "
                                         f"with {best}; {more}: FAIL", insufficient=True)
    return Decision(ok, rule, f"{text}: {_verdict(ok)}")


def decide_mean(values: Sequence[float], threshold: float, floor: bool, rule: str = "bound", alpha: float = 0.05) -> Decision:
    """The mean of per-example scores against a floor or a ceiling (0/1 scores decide as a proportion)."""
    n = len(values)
    if is_binary(values):
        return decide_proportion(int(sum(values)), n, threshold, floor, rule, alpha)
    mean = sum(values) / n
    sign = ">=" if floor else "<="
    if rule == "point":
        ok = _cmp(mean, threshold, floor)
        return Decision(ok, rule, f"decided on the point estimate (decision = \"point\"): {mean:.4g} {sign} {threshold:g}: "
                                  f"{_verdict(ok)}")
    side = "lower" if floor else "upper"
    bound = mean_bound(values, side, alpha)
    if bound is None:
        return Decision(False, rule, "insufficient evidence: one scored example shows no spread to bound its mean; "
                                     "needs at least 2: FAIL", insufficient=True)
    ok = _cmp(bound, threshold, floor)
    return Decision(ok, rule, f"one-sided {_pct(alpha)} {side} bound {bound:.4g} (bootstrap) must be {sign} {threshold:g}: "
                              f"{_verdict(ok)}")


def decide_paired(candidate: Sequence[float], baseline: Sequence[float], *, max_drop: float | None = None,
                  min_gain: float | None = None, rule: str = "bound", alpha: float = 0.05) -> Decision:
    """Paired scores, oriented so that higher is better, against an allowed drop from the baseline
    (``max_drop``) or a required gain over it (``min_gain``). The sentence names the bound it used."""
    if (max_drop is None) == (min_gain is None):
        raise ValueError("decide_paired: give max_drop or min_gain")
    n = len(candidate)
    diffs = [b - c for c, b in zip(candidate, baseline)]  # drop per pair
    drop = sum(diffs) / n
    if rule == "point":
        ok = drop <= max_drop if max_drop is not None else -drop >= min_gain  # type: ignore[operator]
        what = f"drop {drop:+.4g} <= {max_drop:g}" if max_drop is not None else f"gain {-drop:+.4g} >= {min_gain:+g}"
        return Decision(ok, rule, f"decided on the point estimate (decision = \"point\"): {what}: {_verdict(ok)}")
    binary = is_binary(candidate) and is_binary(baseline)
    worse = sum(1 for c, b in zip(candidate, baseline) if b > c)
    better = sum(1 for c, b in zip(candidate, baseline) if c > b)

    def upper_drop(w: int, bt: int, values: Sequence[float]) -> float | None:
        if binary:
            return paired_binary_bound(w, bt, n, "upper", alpha)
        return mean_bound(values, "upper", alpha)

    method = "exact, Bonferroni over the discordant pairs" if binary else "bootstrap"
    if max_drop is not None:
        bound = upper_drop(worse, better, diffs)
        best = upper_drop(0, sum(1 for b in baseline if b < 1.0) if binary else 0, [0.0] * n)
        text = f"one-sided {_pct(alpha)} upper bound of the drop"
        ok = bound is not None and bound <= max_drop
        need_text = f"{text} must be <= {max_drop:g}"
        shown = f"{text} {bound:+.4g} ({method}) must be <= {max_drop:g}" if bound is not None else need_text
        if not ok and drop <= max_drop and (bound is None or best is None or best > max_drop):
            need = examples_needed(max_drop, "upper", alpha / 2) if binary else 2
            return Decision(False, rule, f"{shown}: insufficient evidence: {n} paired examples cannot show a drop within "
                                         f"{max_drop:g} even with no example worse; needs at least {need}: FAIL",
                            insufficient=True)
        return Decision(ok, rule, f"{shown}: {_verdict(ok)}")
    assert min_gain is not None
    up = upper_drop(worse, better, diffs)
    bound = None if up is None else -up
    best_up = upper_drop(0, sum(1 for b in baseline if b < 1.0), [-(1.0 - b) for b in baseline]) if binary else None
    text = f"one-sided {_pct(alpha)} lower bound of the gain"
    ok = bound is not None and bound >= min_gain
    shown = f"{text} {bound:+.4g} ({method}) must be >= {min_gain:+g}" if bound is not None else f"{text} must be >= {min_gain:+g}"
    if not ok and -drop >= min_gain and (bound is None or (best_up is not None and -best_up < min_gain)):
        return Decision(False, rule, f"{shown}: insufficient evidence: {n} paired examples cannot show a gain of {min_gain:+g} "
                                     f"even if the adapter were right on every one; add examples: FAIL", insufficient=True)
    return Decision(ok, rule, f"{shown}: {_verdict(ok)}")
