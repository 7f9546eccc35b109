"""The statistics behind the gates: paired intervals and tests on per-example scores, and Holm's correction.

A regression against a baseline adapter is judged on the *paired* examples: the same suite example
scored for both adapters. Examples differ far more from each other than two adapters differ on one
example, so an unpaired test (two independent samples) drowns a real drop in the spread between
examples; the paired test looks only at the per-example differences.

- continuous scores: ``scipy.stats.bootstrap(..., paired=True)`` on the mean difference, seeded;
- pass/fail (0/1) scores: the exact McNemar test, i.e. ``scipy.stats.binomtest`` on the discordant
  pairs (examples one adapter passes and the other fails);
- several comparisons in one check (scales × suites): ``statsmodels``' ``multipletests(method="holm")``.

Every function is pure and deterministic (a fixed seed), and takes plain sequences of floats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

#: resamples of every bootstrap: enough for a stable 95% interval on a few hundred examples, and fast
N_RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A confidence interval around an estimate (``low <= estimate <= high`` for the usual methods)."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95
    method: str = ""

    def __str__(self) -> str:
        return f"{self.estimate:+.4g} [{self.low:+.4g}, {self.high:+.4g}] ({self.confidence:.0%} {self.method})"


@dataclass(frozen=True)
class PairedTest:
    """The outcome of one paired comparison of a candidate with a baseline, oriented so that a positive
    ``drop`` means the candidate is worse.

    Attributes:
        drop: mean over the pairs of (baseline - candidate), in the metric's better direction.
        p_value: one-sided p-value of "the candidate is worse" (H0: no drop).
        interval: interval on ``drop`` (paired bootstrap).
        n_pairs: examples scored for both.
        test: "paired bootstrap" or "exact McNemar".
        n_worse, n_better: discordant pairs (McNemar only): examples only the baseline / only the candidate passes.
    """

    drop: float
    p_value: float
    interval: Interval
    n_pairs: int
    test: str
    n_worse: int = 0
    n_better: int = 0


def is_binary(values: Sequence[float]) -> bool:
    """True when every value is 0 or 1 (a pass/fail score)."""
    return all(v in (0.0, 1.0) for v in values)


def _rng(seed: int):
    import numpy as np

    return np.random.default_rng(seed)


def paired_bootstrap(candidate: Sequence[float], baseline: Sequence[float], confidence: float = 0.95,
                     n_resamples: int = N_RESAMPLES, seed: int = SEED):  # -> scipy.stats BootstrapResult
    """scipy's paired bootstrap of mean(baseline - candidate), seeded; the raw result (interval and
    the bootstrap distribution)."""
    import numpy as np
    from scipy import stats

    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)

    def mean_drop(x, y, axis=-1):
        return np.mean(y - x, axis=axis)

    with warnings.catch_warnings():
        # identical differences make a degenerate distribution; callers handle that case before this
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        return stats.bootstrap((c, b), mean_drop, paired=True, vectorized=True, n_resamples=n_resamples,
                               confidence_level=confidence, method="percentile", rng=_rng(seed))


def paired_test(candidate: Sequence[float], baseline: Sequence[float], higher_is_better: bool = True,
                confidence: float = 0.95, seed: int = SEED) -> PairedTest:
    """Is the candidate worse than the baseline on these paired examples?

    0/1 scores use the exact McNemar test; other scores the paired bootstrap, whose one-sided p-value
    is the share of bootstrap means of the drop at or below zero (the percentile method's inversion:
    it is below alpha exactly when the one-sided (1 - alpha) lower bound is above zero).
    """
    if len(candidate) != len(baseline):
        raise ValueError(f"paired data needs equal lengths, got {len(candidate)} and {len(baseline)}")
    n = len(candidate)
    if n == 0:
        raise ValueError("no paired examples: a comparison over nothing decides nothing")
    sign = 1.0 if higher_is_better else -1.0
    c = [sign * float(x) for x in candidate]
    b = [sign * float(x) for x in baseline]
    diffs = [y - x for x, y in zip(c, b)]
    drop = sum(diffs) / n
    interval = _drop_interval(c, b, diffs, drop, confidence, seed)
    if is_binary(candidate) and is_binary(baseline):
        worse = sum(1 for x, y in zip(candidate, baseline) if (y > x) == higher_is_better and x != y)
        better = sum(1 for x, y in zip(candidate, baseline) if x != y) - worse
        return PairedTest(drop, mcnemar_exact(worse, better), interval, n, "exact McNemar", worse, better)
    if len(set(diffs)) == 1:
        # every pair moved by the same amount: no spread to resample; the sign test weighs the pairs instead
        # (one pair: 0.5), so a single pair or zero variance never yields p = 0
        p = sign_test_p(diffs)
    else:
        res = paired_bootstrap(c, b, confidence, seed=seed)
        dist = res.bootstrap_distribution
        p = float((dist <= 0).sum() + 1) / (dist.size + 1)
    return PairedTest(drop, p, interval, n, "paired bootstrap")


def _drop_interval(c: Sequence[float], b: Sequence[float], diffs: Sequence[float], drop: float,
                   confidence: float, seed: int) -> Interval:
    if len(set(diffs)) == 1:
        return Interval(drop, drop, drop, confidence, "paired bootstrap")
    res = paired_bootstrap(c, b, confidence, seed=seed)
    ci = res.confidence_interval
    return Interval(drop, float(ci.low), float(ci.high), confidence, "paired bootstrap")


def mcnemar_exact(n_worse: int, n_better: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse: among the discordant pairs, the
    chance of at least ``n_worse`` losses when a loss and a win are equally likely. 1.0 with no
    discordant pair (nothing changed, nothing to decide)."""
    from scipy import stats

    n = n_worse + n_better
    if n == 0:
        return 1.0
    return float(stats.binomtest(n_worse, n, 0.5, alternative="greater").pvalue)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[tuple[bool, float]]:
    """Holm's step-down correction over one family of tests: (reject, adjusted p) per input, in order.

    The i-th smallest of m p-values is adjusted to max over j <= i of min(1, (m - j + 1) p_(j)), and rejected
    when its adjusted value is <= alpha. Written out here (eight lines) instead of importing statsmodels (65 MB,
    for this one call); ``tests/analysis/test_stats.py`` checks it equal to statsmodels' ``multipletests``.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return [(p <= alpha, p) for p in adjusted]


def wilson(k: int, n: int, confidence: float = 0.95) -> Interval | None:
    """The Wilson score interval of a proportion k/n; None when n is 0."""
    if n <= 0:
        return None
    from scipy import stats

    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high), confidence, "Wilson")


def mean_interval(values: Sequence[float], confidence: float = 0.95, seed: int = SEED) -> Interval | None:
    """An interval on the mean of one sample: Wilson for 0/1 scores, a seeded bootstrap otherwise."""
    if not values:
        return None
    if is_binary(values):
        return wilson(int(sum(values)), len(values), confidence)
    mean = sum(values) / len(values)
    if len(set(values)) == 1:
        return Interval(mean, mean, mean, confidence, "bootstrap")
    import numpy as np
    from scipy import stats

    res = stats.bootstrap((np.asarray(values, dtype=float),), np.mean, n_resamples=N_RESAMPLES,
                          confidence_level=confidence, method="percentile", rng=_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(mean, low if math.isfinite(low) else mean, high if math.isfinite(high) else mean, confidence, "bootstrap")


# -- one-sided bounds: what a release gate decides on ------------------------------------------------------
#
# A gate that promises "at least 0.95" must show it: the one-sided (1 - alpha) bound of the estimate has to
# clear the threshold, not the point estimate. Proportions (0/1 scores, retention, leakage) use the exact
# Clopper-Pearson bound (scipy's ``binomtest(...).proportion_ci(method="exact")``: the one-sided 95% bound is
# a bound of the two-sided 90% interval); continuous means use the seeded percentile bootstrap. Paired 0/1
# differences (a drop against a baseline, a gain over the base) bound each discordant rate exactly at
# alpha / 2 and combine them (Bonferroni): conservative, so it errs against the adapter, never for it.

SIDES = ("lower", "upper")


def proportion_bound(k: int, n: int, side: str, alpha: float = 0.05) -> float:
    """The exact one-sided (1 - alpha) Clopper-Pearson bound of a proportion k/n (n > 0)."""
    if side not in SIDES or n <= 0 or not 0 <= k <= n:
        raise ValueError(f"proportion_bound({k}, {n}, {side!r}): needs 0 <= k <= n, n > 0, side lower|upper")
    from scipy import stats

    ci = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    return float(ci.low if side == "lower" else ci.high)


def examples_needed(threshold: float, side: str, alpha: float = 0.05) -> int | None:
    """The fewest examples whose exact one-sided bound can clear ``threshold`` at all: every one right for a
    lower bound (k = n: the bound is alpha ** (1 / n)), none for an upper bound (k = 0: 1 - alpha ** (1 / n)).
    None when no number of examples can (a lower bound of 1, an upper bound of 0)."""
    if side == "lower":
        if threshold <= 0:
            return 1
        if threshold >= 1:
            return None
        return max(1, math.ceil(math.log(alpha) / math.log(threshold) - 1e-12))
    if threshold >= 1:
        return 1
    if threshold <= 0:
        return None
    return max(1, math.ceil(math.log(alpha) / math.log(1 - threshold) - 1e-12))


def paired_binary_bound(n_worse: int, n_better: int, n: int, side: str, alpha: float = 0.05) -> float:
    """A one-sided (1 - alpha) bound of the paired drop (n_worse - n_better) / n of 0/1 scores: the rate of
    pairs only the baseline passes minus the rate only the candidate passes, each bounded exactly at
    alpha / 2 (the upper bound of the drop takes the upper bound of the first and the lower of the second)."""
    if side == "upper":
        return proportion_bound(n_worse, n, "upper", alpha / 2) - proportion_bound(n_better, n, "lower", alpha / 2)
    return proportion_bound(n_worse, n, "lower", alpha / 2) - proportion_bound(n_better, n, "upper", alpha / 2)


def mean_bound(values: Sequence[float], side: str, alpha: float = 0.05, seed: int = SEED) -> float | None:
    """The one-sided (1 - alpha) percentile-bootstrap bound of a mean, seeded; None for fewer than two values
    (one value shows no spread to bound). Identical values bound at their value."""
    if len(values) < 2:
        return None
    if len(set(values)) == 1:
        return float(values[0])
    import numpy as np
    from scipy import stats

    res = stats.bootstrap((np.asarray(values, dtype=float),), np.mean, n_resamples=N_RESAMPLES,
                          confidence_level=1 - 2 * alpha, method="percentile", rng=_rng(seed))
    return float(res.confidence_interval.low if side == "lower" else res.confidence_interval.high)


def sign_test_p(diffs: Sequence[float]) -> float:
    """One-sided sign-test p-value that the differences are positive (ties dropped); 1.0 with none left.
    Used where a bootstrap has no spread to resample (identical differences): one pair gives 0.5, not 0."""
    from scipy import stats

    pos = sum(1 for d in diffs if d > 0)
    neg = sum(1 for d in diffs if d < 0)
    if pos + neg == 0:
        return 1.0
    return float(stats.binomtest(pos, pos + neg, 0.5, alternative="greater").pvalue)
