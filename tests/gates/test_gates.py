"""Gates on stored runs (written straight into a store, no model): thresholds, retention, leakage and
task gain relative to the base, regressions against a baseline (paired, Holm), completeness, training
health, provenance; the suite and project-file gate specs."""

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


PROJECT = ProjectGates(min_retention=0.95, max_leakage=0.02, min_task_gain=0.5, source="harness.toml")


def by_name(report, scale):
    return {o.result.gate: o for o in report.outcomes if o.scale in (None, scale)}


def test_relative_gates_read_roles_and_name_every_number(tmp_path, suites):
    store = Store(tmp_path / "h.duckdb")
    run = fake_run(store, suites, standard())
    report = evaluate_gates(store, run, suites, project_gates=PROJECT)
    ok, bad = by_name(report, 1.0), by_name(report, 2.0)
    assert ok["retention"].passed and ok["leakage"].passed and ok["task_gain"].passed
    ret = ok["retention"].result
    assert ret.observed == pytest.approx(29 / 30) and ret.threshold == 0.95
    assert "29/30" in ret.message and "needs >= 0.95" in ret.message and "Wilson interval" in ret.message
    leak = ok["leakage"].result
    assert leak.observed == pytest.approx(1 / 60) and "1/60" in leak.message and "base 0" in leak.message
    gain = ok["task_gain"].result
    assert gain.observed == pytest.approx(0.75) and gain.baseline == 0 and "interval" in gain.message
    # scale 2: both fail, with their numbers and worst examples (items the base got right, now wrong)
    assert not bad["retention"].passed and "20/30" in bad["retention"].result.message
    assert bad["retention"].result.message.endswith("FAIL") and bad["retention"].worst[0].baseline_value == 1.0
    assert not bad["leakage"].passed and "5/60" in bad["leakage"].result.message
    # the suite's own gates: a retention gate on the general suite, and an absolute task threshold
    assert ok["retention[gk]"].passed and not bad["retention[gk]"].passed
    t = ok["threshold[order:exact_match]"].result
    assert not t.passed and t.observed == 0.75 and t.baseline == 0.0
    assert "A@1" not in t.message and "order exact_match = 0.75" in t.message and "needs >= 0.8" in t.message
    # check_run: the same results as store rows, and the regression gate only with a baseline
    results = check_run(store, run, suites, project_gates=PROJECT)
    assert {r.gate for r in results} == {o.result.gate for o in report.outcomes}
    assert not any(r.gate.startswith("regression") for r in results)
    assert sum(not r.passed for r in check_run(store, run, suites, scale=1.0, project_gates=PROJECT)) == 1


def test_a_run_of_the_base_alone_is_judged_on_thresholds_and_an_empty_check_fails(tmp_path, suites):
    store = Store(tmp_path / "h.duckdb")
    run = fake_run(store, suites, {k: v for k, v in standard().items() if k[0] is None})
    report = evaluate_gates(store, run, suites, project_gates=PROJECT)
    assert {o.kind for o in report.outcomes} == {"threshold", "completeness"}
    assert {g for g, _ in report.skipped} >= {"retention", "leakage", "task_gain"}
    empty = evaluate_gates(store, run, [], project_gates=ProjectGates(training_health=False), require_gates=True)
    assert not empty.passed and "no quality gate" in empty.failures[0].result.message


def test_regression_against_a_baseline_is_paired_and_holm_corrected(tmp_path, suites):
    store = Store(tmp_path / "h.duckdb")
    base_b = scores([1.0] * 30 + [0.0] * 10, [1.0] * 30 + [0.0] * 10, [0.0] * 40, [0.0] * 20)
    # A@1: on the task, 2 examples lost and 1 gained (noise); A@2: 10 lost, none gained (a clear drop)
    noisy = [0.0, 0.0] + [1.0] * 28 + [1.0] + [0.0] * 9
    clear = [0.0] * 10 + [1.0] * 20 + [0.0] * 10
    runs = standard({(B, 1.0): base_b})
    runs[(A, 1.0, "order")] = {"exact_match": noisy}
    runs[(A, 2.0, "order")] = {"exact_match": clear}
    run = fake_run(store, suites, runs)
    project = ProjectGates(max_regression=0.02)
    report = evaluate_gates(store, run, suites, baseline_adapter_id=B, project_gates=project)
    regs = [o for o in report.outcomes if o.kind == "regression"]
    # one family: 2 scales x 3 suites' headlines + the order suite's own max_drop gate, Holm over all 8
    assert len(regs) == 8 and all("over 8 test(s)" in o.result.message for o in regs)
    at = {(o.result.gate, o.scale): o for o in regs}
    noise = at[("regression[order:exact_match]", 1.0)]
    assert noise.passed and "2 worse, 1 better" in noise.result.message and "exact McNemar" in noise.result.message
    drop = at[("regression[order:exact_match]", 2.0)]
    assert not drop.passed and "10 worse, 0 better" in drop.result.message and drop.p_value < 0.05
    assert drop.result.baseline == 0.75 and drop.result.observed == 0.5 and drop.result.threshold == pytest.approx(0.73)
    assert "vs baseline ad-b@1" in drop.result.message and "interval" in drop.result.message
    assert drop.worst and all(w.value == 0.0 and w.baseline_value == 1.0 for w in drop.worst)
    # general knowledge at scale 2 lost 10 of the baseline's 30 too
    assert not at[("regression[gk:exact_match]", 2.0)].passed
    # the baseline is never a candidate
    assert B not in {o.adapter_id for o in report.outcomes}


def test_a_significant_drop_within_the_margin_passes(tmp_path, suites):
    store = Store(tmp_path / "h.duckdb")
    base_b = scores([1.0] * 40, [1.0] * 40, [0.0] * 40, [0.0] * 20)
    runs = standard({(B, 1.0): base_b})
    runs[(A, 1.0, "order")] = {"exact_match": [0.0] * 8 + [1.0] * 32}
    run = fake_run(store, suites, runs)
    report = evaluate_gates(store, run, suites, scale=1.0, baseline_adapter_id=B, project_gates=ProjectGates(max_regression=0.25))
    regs = {o.result.gate: o for o in report.outcomes if o.kind == "regression"}
    # the project's margin (0.25) tolerates the drop of 0.2; the suite's own max_drop (0.02) does not
    o = regs["regression[order:exact_match]#2"]
    assert o.passed and "within the margin" in o.result.message and o.result.threshold == pytest.approx(0.75)
    assert not regs["regression[order:exact_match]"].passed


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
    assert "threshold[order:exact_match]#2" in names and "threshold[gk:exact_match]" in names
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
