"""harness.analysis.stats against the libraries it wraps, on known cases; and paired versus unpaired on data
built so that the difference shows."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from harness.analysis import stats


def test_exact_mcnemar_is_the_binomial_test_on_discordant_pairs():
    # 9 examples lost, 2 gained: P(X >= 9 | n=11, p=1/2) = (C(11,9)+C(11,10)+C(11,11)) / 2^11
    expected = (55 + 11 + 1) / 2**11
    assert stats.mcnemar_exact(9, 2) == pytest.approx(expected)
    assert stats.mcnemar_exact(9, 2) == pytest.approx(sps.binomtest(9, 11, 0.5, alternative="greater").pvalue)
    assert stats.mcnemar_exact(0, 0) == 1.0  # nothing changed: nothing to decide
    # paired_test finds the same discordant counts from the 0/1 vectors
    base = [1] * 9 + [0] * 2 + [1] * 20 + [0] * 5
    cand = [0] * 9 + [1] * 2 + [1] * 20 + [0] * 5
    t = stats.paired_test(cand, base)
    assert (t.test, t.n_worse, t.n_better, t.n_pairs) == ("exact McNemar", 9, 2, 36)
    assert t.p_value == pytest.approx(expected)
    assert t.drop == pytest.approx(7 / 36)


def test_lower_is_better_flips_the_direction():
    base = [1.0] * 10 + [0.0] * 30
    cand = [0.0] * 40  # leaked less: better on a lower-is-better metric
    assert stats.paired_test(cand, base, higher_is_better=False).drop == pytest.approx(-0.25)
    assert stats.paired_test(cand, base, higher_is_better=False).p_value == 1.0


def test_paired_bootstrap_equals_scipy_with_the_same_seed():
    rng = np.random.default_rng(1)
    b = rng.normal(0.5, 0.2, 50)
    c = b - 0.05 + rng.normal(0, 0.02, 50)
    ours = stats.paired_bootstrap(c, b)
    theirs = sps.bootstrap((c, b), lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=True, vectorized=True,
                           n_resamples=stats.N_RESAMPLES, method="percentile", rng=np.random.default_rng(stats.SEED))
    assert ours.confidence_interval.low == pytest.approx(theirs.confidence_interval.low)
    assert ours.confidence_interval.high == pytest.approx(theirs.confidence_interval.high)
    t = stats.paired_test(c, b)
    assert t.test == "paired bootstrap" and t.interval.low > 0 and t.p_value < 0.01
    assert t.interval.low <= t.drop <= t.interval.high
    # deterministic: the same data gives the same interval
    assert stats.paired_test(c, b).interval == t.interval


def test_holm_equals_statsmodels():
    ps = [0.01, 0.04, 0.03, 0.005]
    reject, adj, _, _ = multipletests(ps, alpha=0.05, method="holm")
    assert stats.holm(ps) == [(bool(r), pytest.approx(a)) for r, a in zip(reject, adj)]
    # by hand: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1 -> max(0.06, 0.04)
    assert [p for _, p in stats.holm(ps)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([]) == []


@given(st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.01, 0.05, 0.5, 1.0])), min_size=1, max_size=12),
       st.sampled_from([0.01, 0.05, 0.1]))
def test_holm_equals_statsmodels_on_any_family(ps, alpha):
    """The hand-written Holm (statsmodels is a test dependency only) against statsmodels' own, ties included."""
    reject, adj, _, _ = multipletests(ps, alpha=alpha, method="holm")
    got = stats.holm(ps, alpha)
    assert [p for _, p in got] == pytest.approx([float(a) for a in adj], abs=1e-12)
    assert [r for r, _ in got] == [bool(r) for r in reject]


def test_wilson_equals_scipy_and_mean_interval_picks_its_method():
    w = stats.wilson(8, 10)
    ci = sps.binomtest(8, 10).proportion_ci(method="wilson")
    assert (w.low, w.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert stats.mean_interval([1.0, 0.0, 1.0]).method == "Wilson"
    assert stats.mean_interval([0.2, 0.4, 0.9]).method == "bootstrap"
    assert stats.wilson(0, 0) is None and stats.mean_interval([]) is None


def test_identical_differences_and_empty_input():
    t = stats.paired_test([0.4] * 5, [0.5] * 5)
    # identical differences: no spread to bootstrap; the sign test weighs the 5 pairs (0.5 ** 5), never p = 0
    assert t.drop == pytest.approx(0.1) and t.p_value == pytest.approx(0.5 ** 5) and t.interval.low == t.interval.high
    one = stats.paired_test([0.4], [0.5])
    assert one.p_value == pytest.approx(0.5) and one.p_value > 0
    assert stats.paired_test([0.5] * 3, [0.5] * 3).p_value == 1.0
    with pytest.raises(ValueError, match="no paired examples"):
        stats.paired_test([], [])
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_test([1.0], [1.0, 0.0])


# -- paired versus unpaired ------------------------------------------------------------------------

def _unpaired_bootstrap_low(cand, base):
    """scipy's unpaired (independent samples) bootstrap of mean(base) - mean(cand): its lower bound."""
    res = sps.bootstrap((np.asarray(cand), np.asarray(base)), lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis),
                        paired=False, vectorized=True, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    return res.confidence_interval.low


def test_a_clear_paired_drop_is_a_regression_that_the_unpaired_test_misses():
    """Examples differ a lot in difficulty (scores spread over 0..1); the candidate loses 0.03 on every
    one of them, with a little noise. Paired: a clear regression. Unpaired: the drop hides in the spread
    between examples, and the interval includes zero: the regression would be missed."""
    rng = np.random.default_rng(7)
    base = rng.uniform(0.0, 1.0, 80)
    cand = base - 0.03 + rng.normal(0, 0.01, 80)
    t = stats.paired_test(cand, base)
    assert t.interval.low > 0 and t.p_value < 0.001
    assert _unpaired_bootstrap_low(cand, base) < 0  # unpaired: no evidence of a drop


def test_a_drop_smaller_than_the_noise_is_not_a_regression():
    """The candidate differs from the baseline by pure noise (mean drop ~0.002, per-example noise 0.1)."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.0, 1.0, 80)
    cand = base + rng.normal(0, 0.1, 80)
    t = stats.paired_test(cand, base)
    assert t.interval.low < 0 < t.interval.high and t.p_value > 0.05


def test_mcnemar_catches_a_pass_fail_drop_a_two_proportion_z_test_misses():
    """200 items; the candidate fails 12 the baseline passed and passes none the baseline failed
    (accuracy 0.50 -> 0.44). McNemar on the 12 discordant pairs: p = 2^-12. A two-proportion z-test,
    treating the two runs as independent samples, sees 100/200 vs 88/200 and misses it."""
    base = np.array([1] * 100 + [0] * 100)
    cand = base.copy()
    cand[:12] = 0
    t = stats.paired_test(cand.tolist(), base.tolist())
    assert (t.n_worse, t.n_better) == (12, 0) and t.p_value == pytest.approx(0.5**12)
    p1, p2, n = base.mean(), cand.mean(), 200
    pooled = (p1 + p2) / 2
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * 2 / n)
    assert sps.norm.sf(z) > 0.05  # one-sided z-test: not significant


def test_mcnemar_does_not_flag_churn_without_a_net_drop():
    """30 items flip each way: accuracy unchanged, no regression (also unpaired, here)."""
    base = [1] * 30 + [0] * 30 + [1] * 40
    cand = [0] * 30 + [1] * 30 + [1] * 40
    assert stats.paired_test(cand, base).p_value > 0.5


# -- the one-sided bounds the gates decide on, against scipy on random data -------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_proportion_bounds_equal_scipys_exact_interval(seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    k = int(rng.integers(0, n + 1))
    alpha = float(rng.choice([0.01, 0.05, 0.1]))
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert stats.proportion_bound(k, n, "lower", alpha) == pytest.approx(ci.low, abs=1e-12)
    assert stats.proportion_bound(k, n, "upper", alpha) == pytest.approx(ci.high, abs=1e-12)
    # the same bound from the beta distribution (Clopper-Pearson's definition), computed independently
    lo = 0.0 if k == 0 else sps.beta.ppf(alpha, k, n - k + 1)
    hi = 1.0 if k == n else sps.beta.ppf(1 - alpha, k + 1, n - k)
    assert stats.proportion_bound(k, n, "lower", alpha) == pytest.approx(lo, abs=1e-9)
    assert stats.proportion_bound(k, n, "upper", alpha) == pytest.approx(hi, abs=1e-9)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 2), (2, 2), (1, 2), (0, 59), (59, 59), (0, 149)])
def test_proportion_bounds_at_the_edges(k, n):
    lo, hi = stats.proportion_bound(k, n, "lower"), stats.proportion_bound(k, n, "upper")
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    if k == n:
        assert lo == pytest.approx(0.05 ** (1 / n))
    if k == 0:
        assert hi == pytest.approx(1 - 0.05 ** (1 / n))
    with pytest.raises(ValueError):
        stats.proportion_bound(0, 0, "lower")


def test_examples_needed_is_the_first_n_whose_best_case_bound_clears():
    for t in (0.5, 0.8, 0.9, 0.95, 0.99):
        need = stats.examples_needed(t, "lower")
        assert stats.proportion_bound(need, need, "lower") >= t > stats.proportion_bound(need - 1, need - 1, "lower")
    for t in (0.01, 0.02, 0.05, 0.1):
        need = stats.examples_needed(t, "upper")
        assert stats.proportion_bound(0, need, "upper") <= t < stats.proportion_bound(0, need - 1, "upper")
    assert stats.examples_needed(0.95, "lower") == 59 and stats.examples_needed(0.02, "upper") == 149
    assert stats.examples_needed(1.0, "lower") is None and stats.examples_needed(0.0, "upper") is None


@pytest.mark.parametrize("seed", range(40))
def test_paired_binary_bounds_combine_scipys_exact_bounds_and_hold_on_all_ties_and_all_discordant(seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    kind = seed % 4
    if kind == 0:  # all ties
        worse = better = 0
    elif kind == 1:  # all discordant, every one lost
        worse, better = n, 0
    else:
        worse = int(rng.integers(0, n + 1))
        better = int(rng.integers(0, n - worse + 1))
    up = stats.paired_binary_bound(worse, better, n, "upper")
    lo = stats.paired_binary_bound(worse, better, n, "lower")
    w = sps.binomtest(worse, n).proportion_ci(confidence_level=0.95, method="exact")
    b = sps.binomtest(better, n).proportion_ci(confidence_level=0.95, method="exact")
    assert up == pytest.approx(w.high - b.low) and lo == pytest.approx(w.low - b.high)
    assert lo <= (worse - better) / n <= up


def test_the_one_sided_bound_covers_at_least_its_level_on_simulated_data():
    """Coverage, simulated: the upper bound of the paired drop sits below the true drop in at most 5% of
    samples (it is conservative: fewer)."""
    import numpy as np

    rng = np.random.default_rng(0)
    p_worse, p_better, n = 0.06, 0.02, 120
    true_drop = p_worse - p_better
    misses = 0
    for _ in range(400):
        u = rng.random(n)
        worse, better = int((u < p_worse).sum()), int(((u >= p_worse) & (u < p_worse + p_better)).sum())
        misses += stats.paired_binary_bound(worse, better, n, "upper") < true_drop
    assert misses / 400 <= 0.05


@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_mean_bound_needs_two_values_and_brackets_the_mean(n):
    import numpy as np

    values = list(np.random.default_rng(n).uniform(0, 1, n))
    if n < 2:
        assert stats.mean_bound(values, "lower") is None
        return
    lo, hi = stats.mean_bound(values, "lower"), stats.mean_bound(values, "upper")
    res = sps.bootstrap((np.asarray(values),), np.mean, n_resamples=stats.N_RESAMPLES, confidence_level=0.90,
                        method="percentile", rng=np.random.default_rng(stats.SEED))
    assert (lo, hi) == (pytest.approx(res.confidence_interval.low), pytest.approx(res.confidence_interval.high))
    assert lo <= sum(values) / n <= hi
    assert stats.mean_bound([0.3, 0.3, 0.3], "lower") == 0.3
