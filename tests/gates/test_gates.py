"""Gates on stored runs (written straight into a store, no model): thresholds, retention, leakage and
task gain relative to the base, regressions against a baseline (paired), completeness, training health,
provenance; the suite and project-file gate specs; the decision rule (one-sided bounds by default, the
point estimate with decision = "point")."""

from __future__ import annotations

import math

import pytest

from harness.errors import InputError, SuiteError
from harness.gates import (
    ProjectGates,
    RoleThreshold,
    check_run,
    evaluate_gates,
    plan_gates,
    threshold_gate,
)
from harness.gates.project import find_project_file, load_project
from harness.store import Store
from tests.gates.test_gates_support import A, B, fake_run, write_suite


@pytest.fixture()
def suites(tmp_path):
    return [
        write_suite(tmp_path, "order", "task", "exact_match", "exact_match", 40,
                    "gates:\n  - {metric: exact_match, min: 0.8}\n  - {metric: exact_match, max_drop: 0.02}\n"),
        write_suite(tmp_path, "gk", "general", "exact_match", "exact_match", 40, "gates:\n  - {metric: retention, min: 0.9}\n"),
        write_suite(tmp_path, "leak", "leakage", "", "format_leakage", 20),
    ]


def scores(task, general, gk_leak, leak):
    return {"exact_match": task}, {"exact_match": general, "format_leakage": gk_leak}, {"format_leakage": leak}


def standard(extra=None):
    """base; A@1 meets retention/leakage; A@2 forgets and leaks."""
    runs = {
        (None, 0.0): scores([0.0] * 40, [1.0] * 30 + [0.0] * 10, [0.0] * 40, [0.0] * 20),
        (A, 1.0): scores([1.0] * 30 + [0.0] * 10, [1.0] * 29 + [0.0] * 11, [0.0] * 40, [1.0] + [0.0] * 19),
        (A, 2.0): scores([1.0] * 32 + [0.0] * 8, [1.0] * 20 + [0.0] * 20, [0.0] * 40, [1.0] * 5 + [0.0] * 15),
        **(extra or {}),
    }
    out = {}
    for (aid, scale), (t, g, lk) in runs.items():
        out[(aid, scale, "order")], out[(aid, scale, "gk")], out[(aid, scale, "leak")] = t, g, lk
    return out


PROJECT = ProjectGates(min_retention=0.95, max_leakage=0.02, min_task_gain=0.5, source="harness.toml", decision="point")
#: the same limits under the default rule: each one-sided 95% bound must clear its threshold
BOUNDS = ProjectGates(min_retention=0.95, max_leakage=0.02, min_task_gain=0.5, source="harness.toml")


def by_name(report, scale):
    return {o.result.gate: o for o in report.outcomes if o.scale in (None, scale)}


def test_relative_gates_read_roles_and_name_every_number(tmp_path, suites):
    """The mechanics under decision = "point" (the estimate decides, and every sentence says so)."""
    store = Store(tmp_path / "h.duckdb")
    run = fake_run(store, suites, standard())
    report = evaluate_gates(store, run, suites, project_gates=PROJECT)
    ok, bad = by_name(report, 1.0), by_name(report, 2.0)
    assert ok["retention"].passed and ok["leakage"].passed and ok["task_gain"].passed
    ret = ok["retention"].result
    assert ret.observed == pytest.approx(29 / 30) and ret.threshold == 0.95 and ret.rule == "point" and ret.n == 30
    assert "29/30" in ret.message and ">= 0.95" in ret.message and "Wilson interval" in ret.message
    assert 'decided on the point estimate (decision = "point")' in ret.message
    leak = ok["leakage"].result
    assert leak.observed == pytest.approx(1 / 60) and "1/60" in leak.message and "base 0" in leak.message
    gain = ok["task_gain"].result
    assert gain.observed == pytest.approx(0.75) and gain.baseline == 0 and "40 paired examples" in gain.message
    # scale 2: both fail, with their numbers and worst examples (items the base got right, now wrong)
    assert not bad["retention"].passed and "20/30" in bad["retention"].result.message
    assert bad["retention"].result.message.endswith("FAIL") and bad["retention"].worst[0].baseline_value == 1.0
    assert not bad["leakage"].passed and "5/60" in bad["leakage"].result.message
    # the suite's own gates: a retention gate on the general suite, and an absolute task threshold
    assert ok["retention[gk]"].passed and not bad["retention[gk]"].passed
    t = ok["threshold[order:exact_match]"].result
    assert not t.passed and t.observed == 0.75 and t.baseline == 0.0
    assert "A@1" not in t.message and "order exact_match = 0.75" in t.message and ">= 0.8" in t.message
    # check_run: the same results as store rows, and the regression gate only with a baseline
    results = check_run(store, run, suites, project_gates=PROJECT)
    assert {r.gate for r in results} == {o.result.gate for o in report.outcomes}
    assert not any(r.gate.startswith("regression") for r in results)
    assert sum(not r.passed for r in check_run(store, run, suites, scale=1.0, project_gates=PROJECT)) == 1


def test_by_default_the_bound_decides_and_thin_evidence_fails_naming_the_examples_needed(tmp_path, suites):
    """The same run under the default rule: 29 of 30 kept cannot show retention >= 0.95 (59 base-correct
    answers with none lost could), 1 leaked of 60 cannot show leakage <= 0.02 (149 with none could)."""
    store = Store(tmp_path / "h.duckdb")
    run = fake_run(store, suites, standard())
    ok = by_name(evaluate_gates(store, run, suites, project_gates=BOUNDS), 1.0)
    ret, leak, gain = ok["retention"].result, ok["leakage"].result, ok["task_gain"].result
    assert not ret.passed and ret.rule == "bound" and "insufficient evidence" in ret.message
    assert "needs at least 59 base-correct answers" in ret.message and "lower bound" in ret.message
    assert not leak.passed and "upper bound" in leak.message and "insufficient evidence" in leak.message
    assert "needs at least 149" in leak.message
    # 30 better, none worse over 40: the gain's lower bound (+0.4999) is just short of 0.5
    assert not gain.passed and "lower bound of the gain +0.4999" in gain.message
    # a threshold of 0.8 on 30/40: the lower bound 0.62 is short, and more examples could show it
    t = ok["threshold[order:exact_match]"].result
    assert not t.passed and "lower bound" in t.message and "insufficient" not in t.message


def test_a_run_of_the_base_alone_is_judged_on_thresholds_and_an_empty_check_fails(tmp_path, suites):
    store = Store(tmp_path / "h.duckdb")
    run = fake_run(store, suites, {k: v for k, v in standard().items() if k[0] is None})
    report = evaluate_gates(store, run, suites, project_gates=PROJECT)
    assert {o.kind for o in report.outcomes} == {"threshold", "completeness"}
    assert {g for g, _ in report.skipped} >= {"retention", "leakage", "task_gain"}
    empty = evaluate_gates(store, run, [], project_gates=ProjectGates(training_health=False), require_gates=True)
    assert not empty.passed and "no quality gate" in empty.failures[0].result.message


def test_regression_is_decided_on_the_upper_bound_of_the_paired_drop(tmp_path, suites):
    """Issue 28: "not significant" is not "no regression". The margin must be shown: the upper bound of the
    paired drop within it. Noise on 40 examples (2 lost, 1 gained) cannot show a drop within 0.02; a clear
    drop fails; the McNemar counts and p-value of "any drop" are shown and decide nothing."""
    store = Store(tmp_path / "h.duckdb")
    base_b = scores([1.0] * 30 + [0.0] * 10, [1.0] * 30 + [0.0] * 10, [0.0] * 40, [0.0] * 20)
    noisy = [0.0, 0.0] + [1.0] * 28 + [1.0] + [0.0] * 9
    clear = [0.0] * 10 + [1.0] * 20 + [0.0] * 10
    runs = standard({(B, 1.0): base_b})
    runs[(A, 1.0, "order")] = {"exact_match": noisy}
    runs[(A, 2.0, "order")] = {"exact_match": clear}
    run = fake_run(store, suites, runs)
    report = evaluate_gates(store, run, suites, baseline_adapter_id=B, project_gates=ProjectGates(max_regression=0.02))
    regs = [o for o in report.outcomes if o.kind == "regression"]
    # order's own max_drop 0.02 and the project's max_regression 0.02 are one gate (judged once): 3 suites x 2 scales
    assert len(regs) == 6 and all("upper bound of the drop" in o.result.message for o in regs)
    at = {(o.result.gate, o.scale): o for o in regs}
    noise = at[("regression[order:exact_match]", 1.0)]
    assert not noise.passed and "2 worse, 1 better" in noise.result.message and "exact McNemar" in noise.result.message
    assert noise.result.rule == "bound" and noise.result.n == 40
    drop = at[("regression[order:exact_match]", 2.0)]
    assert not drop.passed and "10 worse, 0 better" in drop.result.message and drop.p_value < 0.05
    assert drop.result.baseline == 0.75 and drop.result.observed == 0.5 and drop.result.threshold == pytest.approx(0.73)
    assert "vs baseline ad-b@1" in drop.result.message
    assert drop.worst and all(w.value == 0.0 and w.baseline_value == 1.0 for w in drop.worst)
    assert not at[("regression[gk:exact_match]", 2.0)].passed
    # the baseline is never a candidate
    assert B not in {o.adapter_id for o in report.outcomes}


def _big(tmp_path, n: int, lost: int, margin: float, errored: tuple[int, ...] = ()):
    s = write_suite(tmp_path, "big", "task", "exact_match", "exact_match", n)
    store = Store(tmp_path / "big.duckdb")
    cand = [0.0] * lost + [1.0] * (n - lost)
    run = fake_run(store, [s], {(None, 0.0, "big"): {"exact_match": [1.0] * n}, (B, 1.0, "big"): {"exact_match": [1.0] * n},
                                (A, 1.0, "big"): {"exact_match": cand}}, errors={(A, 1.0, "big"): list(errored)})
    report = evaluate_gates(store, run, [s], scale=1.0, baseline_adapter_id=B,
                            project_gates=ProjectGates(max_regression=margin, training_health=False))
    return next(o for o in report.outcomes if o.kind == "regression")


def test_a_drop_shown_within_the_margin_passes_and_thin_or_errored_evidence_fails(tmp_path):
    # 40 of 400 lost (drop 0.1): the upper bound (about 0.13) is within a margin of 0.2
    o = _big(tmp_path / "a", 400, 40, 0.2)
    assert o.passed and "upper bound of the drop +0.13" in o.result.message
    # 4 of 4 lost: one-sided McNemar p = 0.0625 is "not significant", but the drop is 1: FAIL
    o = _big(tmp_path / "b", 4, 4, 0.05)
    assert not o.passed and "4 worse, 0 better" in o.result.message and "insufficient" not in o.result.message
    # none lost of 4: the estimate is within the margin, but 4 pairs cannot show it: insufficient evidence
    o = _big(tmp_path / "b2", 4, 0, 0.05)
    assert not o.passed and "insufficient evidence" in o.result.message and "needs at least 72" in o.result.message
    # 5 of 20 lost against an allowed 0.05: FAIL
    o = _big(tmp_path / "c", 20, 5, 0.05)
    assert not o.passed and "5 worse, 0 better" in o.result.message
    # the candidate errors exactly where the baseline was right: the errors count as failures, not dropped pairs
    o = _big(tmp_path / "d", 400, 0, 0.02, errored=tuple(range(30)))
    assert not o.passed and "30 of the candidate's errored or unscored and counted as failures" in o.result.message
    assert "30 worse, 0 better" in o.result.message


def test_continuous_scores_use_the_paired_bootstrap(tmp_path):
    s = write_suite(tmp_path, "ref", "reference", "rouge", "rougeL", 30)
    store = Store(tmp_path / "h.duckdb")
    import numpy as np

    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, 30)
    runs = {(None, 0.0, "ref"): {"rougeL": list(b)}, (B, 1.0, "ref"): {"rougeL": list(b)},
            (A, 1.0, "ref"): {"rougeL": list(b - 0.05 + rng.normal(0, 0.01, 30))}}
    run = fake_run(store, [s], runs)
    [o] = [o for o in evaluate_gates(store, run, [s], baseline_adapter_id=B, project_gates=ProjectGates(max_regression=0.01)).outcomes
           if o.kind == "regression"]
    assert not o.passed and "paired bootstrap p" in o.result.message and o.interval.low > 0.01
    assert "upper bound of the drop" in o.result.message and "(bootstrap)" in o.result.message


def test_completeness_and_missing_scores(tmp_path, suites):
    store = Store(tmp_path / "h.duckdb")
    runs = standard()
    runs[(A, 1.0, "gk")] = {"exact_match": [1.0] * 29 + [None] + [0.0] * 10, "format_leakage": [0.0] * 40}
    run = fake_run(store, suites, runs, errors={(A, 1.0, "order"): [3]})
    out = by_name(evaluate_gates(store, run, suites, scale=1.0, project_gates=PROJECT), 1.0)
    c = out["completeness"].result
    assert not c.passed and "1 errored" in c.message and "errors allowed 0" in c.message
    assert "1 of 40 examples errored" in out["threshold[order:exact_match]"].result.message
    lenient = by_name(evaluate_gates(store, run, suites, scale=1.0, project_gates=ProjectGates(max_errors=1)), 1.0)
    assert lenient["completeness"].passed
    # a run that declared more results than it holds is incomplete
    run2 = fake_run(store, suites, standard(), n_expected=10_000)
    assert not by_name(evaluate_gates(store, run2, suites), 1.0)["completeness"].passed


@pytest.mark.parametrize("values, n_expected, n_errored, needle", [
    ([], 0, 0, "no examples were expected"),
    ([1.0, None], 2, 0, "missing or not finite"),
    ([1.0, math.nan], 2, 0, "missing or not finite"),
    ([1.0], 2, 0, "incomplete run"),
    ([], 3, 0, "no scores at all"),
])
def test_a_threshold_never_passes_on_missing_evidence(values, n_expected, n_errored, needle):
    r = threshold_gate("g", "m", values, n_expected, n_errored, min=0.0)
    assert not r.passed and needle in r.message and r.observed is None


def test_training_health_and_provenance(tmp_path, suites):
    store = Store(tmp_path / "h.duckdb")
    record = {"anomalies": [{"kind": "loss_spike", "severity": "error", "step": 12, "message": "loss x10"},
                            {"kind": "slow", "severity": "warning", "step": 3, "message": "meh"}]}
    run = fake_run(store, suites, standard(), harness=record)
    out = by_name(evaluate_gates(store, run, suites, adapter_id=A, scale=1.0), 1.0)
    h = out["training_health"].result
    assert not h.passed and "1 error-severity anomalies of 2" in h.message and "loss_spike at step 12" in h.message
    assert out["provenance"].passed and A in out["provenance"].result.message
    # the directory being released hashes to another id than the one the project file releases
    wrong = evaluate_gates(store, run, suites, adapter_id=A, scale=1.0, project_gates=ProjectGates(adapter_id=B))
    p = next(o for o in wrong.outcomes if o.kind == "provenance")
    assert not p.passed and "not the bbbbbbbbbbbb" in p.result.message
    # an adapter the run never evaluated: provenance and every gate fail, naming it
    other = evaluate_gates(store, run, suites, adapter_id="c" * 64, scale=1.0)
    assert not other.passed and all(not o.passed for o in other.outcomes if o.kind != "completeness")
    # no training record at all: nothing to judge, the gate is skipped (not passed)
    fresh = Store(tmp_path / "fresh.duckdb")
    rep = evaluate_gates(fresh, fake_run(fresh, suites, standard()), suites, adapter_id=A, scale=1.0)
    assert "training_health" in dict(rep.skipped) and not any(o.kind == "training_health" for o in rep.outcomes)


def test_plan_names_are_unique_and_project_thresholds_go_by_role(suites):
    project = ProjectGates(thresholds=(RoleThreshold("task", None, 0.5, None), RoleThreshold("general", "exact_match", 0.3)),
                           max_regression=0.01)
    names = [g.name for g in plan_gates(suites, project, with_baseline=True)]
    assert len(names) == len(set(names))
    assert "threshold[order:exact_match#2]" in names and "threshold[gk:exact_match]" in names
    assert "regression[order:exact_match]" in names and "regression[leak:format_leakage]" in names
    assert not any(n.startswith("regression") for n in (g.name for g in plan_gates(suites, project)))


def test_suite_gate_specs(tmp_path):
    ok = write_suite(tmp_path, "t", "task", "exact_match", "exact_match", 2,
                     "gates:\n  - {metric: exact_match, min: 0.5, min_gain: 0.1, max_drop: 0.02}\n")
    g = ok.gates[0]
    assert (g.min, g.min_gain, g.max_drop) == (0.5, 0.1, 0.02)
    for gates, needle in [("gates:\n  - {metric: exact_match, below: 1}\n", "needs a metric and one of"),
                          ("gates:\n  - {metric: exact_match, min: 1, when: x}\n", "unknown gate key 'when'"),
                          ("gates:\n  - {metric: retention, min: 0.9}\n", "retention gate belongs on a general suite"),
                          ("gates:\n  - {metric: exact_match, min: .nan}\n", "finite")]:
        with pytest.raises(SuiteError, match=needle):
            write_suite(tmp_path, "bad", "task", "exact_match", "exact_match", 2, gates)


def test_project_file_in_harness_toml_and_pyproject(tmp_path):
    assert find_project_file(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert find_project_file(tmp_path) is None  # no [tool.harness]: not a project file
    (tmp_path / "pyproject.toml").write_text(
        "[tool.harness]\nsuites = ['general-knowledge']\n[tool.harness.gates]\nmin_retention = 0.95\n"
        "[[tool.harness.gates.threshold]]\nrole = 'task'\nmin = 0.8\n")
    cfg = load_project(find_project_file(tmp_path))
    assert cfg.gates.min_retention == 0.95 and cfg.gates.thresholds == (RoleThreshold("task", None, 0.8, None),)
    assert cfg.suites == ("general-knowledge",)
    (tmp_path / "harness.toml").write_text("[gates]\nmax_leakage = 0.02\nmax_errors = 1\n")
    assert find_project_file(tmp_path).name == "harness.toml"
    assert load_project(tmp_path / "harness.toml").gates.max_errors == 1
    (tmp_path / "bad.toml").write_text("[gates]\nmin_retention = 'high'\nbogus = 1\nalpha = 2\n"
                                       "[[gates.threshold]]\nrole = 'judge'\nmin = 1\n")
    with pytest.raises(InputError) as exc:
        load_project(tmp_path / "bad.toml")
    msg = str(exc.value)
    assert "4 problem(s)" in msg and "gates.min_retention" in msg and "gates.bogus" in msg and "threshold[0].role" in msg
    with pytest.raises(InputError, match="not valid TOML"):
        (tmp_path / "broken.toml").write_text("[gates\n")
        load_project(tmp_path / "broken.toml")


def test_a_gain_passes_only_when_its_lower_bound_reaches_min_gain():
    """Issue 28: `min_gain: 0.2` passed on 1 of 5 examples better (point gain 0.2)."""
    from harness.gates.decide import decide_paired

    d = decide_paired([1.0] + [0.0] * 4, [0.0] * 5, min_gain=0.2)
    assert not d.passed and d.insufficient and "lower bound of the gain" in d.sentence
    assert decide_paired([1.0] + [0.0] * 4, [0.0] * 5, min_gain=0.2, rule="point").passed
    many = decide_paired([1.0] * 60 + [0.0] * 40, [0.0] * 100, min_gain=0.2)
    assert many.passed and not many.insufficient


def test_a_lower_is_better_0_1_metric_is_judged_with_the_exact_paired_bound(tmp_path):
    """format_leakage (1 = leaked, lower is better): 30 of 400 answers leak where the baseline's did not.
    The pair is oriented as 1 - value, so the exact bound (not a bootstrap) decides, and the figures shown
    are the metric's own (leakage 0.075 against 0)."""
    s = write_suite(tmp_path, "lk", "leakage", "", "format_leakage", 400)
    store = Store(tmp_path / "lk.duckdb")
    cand = [1.0] * 30 + [0.0] * 370
    run = fake_run(store, [s], {(None, 0.0, "lk"): {"format_leakage": [0.0] * 400},
                                (B, 1.0, "lk"): {"format_leakage": [0.0] * 400}, (A, 1.0, "lk"): {"format_leakage": cand}})
    report = evaluate_gates(store, run, [s], scale=1.0, baseline_adapter_id=B,
                            project_gates=ProjectGates(max_regression=0.02, training_health=False))
    o = next(o for o in report.outcomes if o.kind == "regression")
    assert not o.passed and "30 worse, 0 better" in o.result.message and "(exact, Bonferroni" in o.result.message
    assert o.result.observed == pytest.approx(0.075) and o.result.baseline == 0.0
    assert o.worst and all(w.value == 1.0 and w.baseline_value == 0.0 for w in o.worst)
