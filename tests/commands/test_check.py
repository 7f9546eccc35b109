"""`harness check` and the gates of `harness eval` on a tiny model: an adapter that keeps the base's
answers passes, one that forgets them fails naming every failed gate; CI outputs (Markdown, JUnit,
JSON); a baseline; --recommended; results stored with the run; release defaults that cannot be measured
fail naming what to add, an opt-out is printed and stored, and thin evidence is "insufficient evidence"."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import duckdb
import pytest

from harness.cli import main
from tests.gates.test_gates_support import shared_gate_setup

# the shared suite is one general suite: no task suite and no task format, so the release defaults for the
# task and leakage are opted out of by name (printed and stored); retention is judged
PROJECT = '[gates]\nmin_retention = 0.95\nmax_regression = 0.1\nskip = ["leakage", "task"]\n'


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    s = shared_gate_setup(tiny_model_dir, tmp_path_factory)
    s["gates"] = tmp_path_factory.mktemp("check") / "harness.toml"
    s["gates"].write_text(PROJECT)
    return s


def check(s, tiny, adapter, *extra):
    return main(["check", "--base", str(tiny), "--adapter", str(s[adapter]), "--suite", str(s["suite"]),
                 "--db", str(s["db"]), "--gates", str(s["gates"]), *extra])


def test_check_passes_a_kept_adapter_and_fails_a_forgetful_one_naming_every_gate(setup, tiny_model_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    step = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    out = {k: tmp_path / f"{k}.{k}" for k in ("junit", "json")}
    assert check(setup, tiny_model_dir, "good", "--junit", str(out["junit"]), "--json", str(out["json"])) == 0
    printed = capsys.readouterr()
    assert "PASS  retention:" in printed.out and "gate failed" not in printed.err
    assert "skip  leakage: opted out in" in printed.out and "skip  task: opted out in" in printed.out
    assert "## adapter-harness check: passed" in step.read_text()
    data = json.loads(out["json"].read_text())
    assert data["passed"] and {g["gate"] for g in data["gates"]} >= {"retention", "threshold[gk:exact_match]", "completeness", "provenance"}
    assert ET.parse(out["junit"]).getroot().get("failures") == "0"

    assert check(setup, tiny_model_dir, "bad", "--junit", str(out["junit"]), "--summary", str(tmp_path / "s.md")) == 1
    printed = capsys.readouterr()
    failed = [line for line in printed.err.splitlines() if line.startswith("gate failed: ")]
    # every failure is printed, not the first: retention and the suite's own threshold
    assert {line.split(":")[1].strip() for line in failed} == {"retention", "threshold[gk"}
    retention = next(line for line in failed if line.startswith("gate failed: retention"))
    assert "lower bound" in retention and ">= 0.95" in retention and "of the base's correct answers kept" in retention
    root = ET.parse(out["junit"]).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert root.get("failures") == "2" and cases["retention@1"].find("failure") is not None
    assert cases["completeness"].find("failure") is None
    md = (tmp_path / "s.md").read_text()
    assert "FAILED (2 gate(s))" in md and "❌ | retention" in md and "Worst examples" in md
    # the gate results are stored with their run
    con = duckdb.connect(str(setup["db"]), read_only=True)
    stored = con.execute("SELECT g.gate, g.passed FROM gate_results g JOIN runs r USING (run_id) WHERE r.kind = 'check' "
                         "ORDER BY r.started_at DESC, g.seq").fetchall()
    con.close()
    assert ("retention", False) in stored and ("retention", True) in stored
    assert ("leakage", None) in stored and ("task", None) in stored  # the opt-outs, stored as skip rows
    # ... with the interval and p-value as numbers (migration 0007), the same the JSON output gave
    assert check(setup, tiny_model_dir, "bad", "--json", str(out["json"])) == 1
    capsys.readouterr()
    given = {g["gate"]: g for g in json.loads(out["json"].read_text())["gates"]}
    con = duckdb.connect(str(setup["db"]), read_only=True)
    rows = con.execute("SELECT gate, interval_low, interval_high, p_value FROM gate_results WHERE run_id = ? "
                       "AND rule IS DISTINCT FROM 'skip'",
                       [json.loads(out["json"].read_text())["run_id"]]).fetchall()
    con.close()
    assert {r[0] for r in rows} == set(given)
    for gate, low, high, p in rows:
        interval = given[gate]["interval"]
        assert (low, high) == ((interval["low"], interval["high"]) if interval else (None, None)), gate
        assert p == given[gate]["p_value"], gate
    assert any(low is not None for _, low, _, _ in rows)  # retention carries its Wilson interval


def test_a_second_check_is_served_from_the_store(setup, tiny_model_dir, capsys):
    assert check(setup, tiny_model_dir, "good") == 0
    capsys.readouterr()
    assert check(setup, tiny_model_dir, "good") == 0
    assert "0 generated" in capsys.readouterr().err


def test_regression_against_a_baseline(setup, tiny_model_dir, capsys):
    assert check(setup, tiny_model_dir, "good2", "--baseline", str(setup["good"])) == 0
    assert "PASS  regression[gk:exact_match]" in capsys.readouterr().out
    assert check(setup, tiny_model_dir, "bad", "--baseline", str(setup["good"])) == 1
    err = capsys.readouterr().err
    assert "gate failed: regression[gk:exact_match]" in err and "exact McNemar" in err and "upper bound of the drop" in err
    assert main(["check", "--adapter", str(setup["good"]), "--baseline", str(setup["good"]), "--suite", str(setup["suite"]),
                 "--base", str(tiny_model_dir), "--db", str(setup["db"])]) == 2


def test_recommended_needs_a_stored_sweep_and_then_judges_its_scale(setup, tiny_model_dir, tmp_path, capsys):
    db = tmp_path / "sweep.duckdb"
    args = ["--base", str(tiny_model_dir), "--suite", str(setup["suite"]), "--db", str(db)]
    assert main(["check", "--adapter", str(setup["bad"]), "--recommended", *args]) == 2
    assert "harness sweep" in capsys.readouterr().err
    assert main(["eval", "--adapter", str(setup["bad"]), "--scale", "0.001", "--scale", "1", "--no-gates", *args]) == 0
    capsys.readouterr()
    code = main(["check", "--adapter", str(setup["bad"]), "--recommended", "--gates", str(setup["gates"]), *args])
    err = capsys.readouterr().err
    if "no recommended scale" in err:  # the sweep itself says no scale keeps retention: a gate failure
        assert code == 1
        return
    assert "recommended scale" in err and "ship scale" in err
    scale = err.split("ship scale ")[1].split(":")[0]
    assert code == main(["check", "--adapter", str(setup["bad"]), "--scale", scale, "--gates", str(setup["gates"]), *args])


def test_a_check_without_a_project_file_names_every_release_default_it_cannot_measure(setup, tiny_model_dir, tmp_path,
                                                                                        capsys, monkeypatch):
    """`harness check` answers "may this adapter be released?": retention, leakage and the task are judged by
    default. A suite with no task and no task format cannot show leakage or a task gain: those gates fail and
    say what to add (they used to be dropped, and the check passed "4 of 4" on a forgetful adapter)."""
    monkeypatch.chdir(tmp_path)  # no harness.toml here
    args = ["--base", str(tiny_model_dir), "--suite", str(setup["suite"]), "--db", str(setup["db"])]
    assert main(["check", "--adapter", str(setup["good"]), *args]) == 1
    out, err = (lambda c: (c.out, c.err))(capsys.readouterr())
    assert "PASS  retention:" in out
    assert "gate failed: leakage" in err and "not measured" in err and "--task-format" in err
    assert "gate failed: task_gain" in err and "add a suite with role task" in err
    assert main(["check", "--adapter", str(setup["bad"]), *args]) == 1
    err = capsys.readouterr().err
    assert "gate failed: retention" in err and ">= 0.95" in err


def test_thin_evidence_is_insufficient_not_a_pass(tiny_model_dir, tmp_path, capsys):
    """2 of 2 and 4 of 4 base-correct answers kept: the point estimate is 1, but no such sample can show
    retention >= 0.95; the check fails as insufficient evidence and names the 59 answers that could."""
    from tests.gates.test_gates_support import base_answer_suite, make_lora

    adapter = make_lora(tiny_model_dir, tmp_path / "keeps", seed=1, std=0.0)
    gates = tmp_path / "gates.toml"
    gates.write_text('[gates]\nskip = ["leakage", "task"]\n')
    for n in (2, 4):
        suite = base_answer_suite(tiny_model_dir, tmp_path / f"n{n}", n=n)
        assert main(["check", "--base", str(tiny_model_dir), "--adapter", str(adapter), "--suite", str(suite),
                     "--db", str(tmp_path / f"n{n}.duckdb"), "--gates", str(gates)]) == 1
        err = capsys.readouterr().err
        line = next(ln for ln in err.splitlines() if ln.startswith("gate failed: retention"))
        assert f"{n}/{n} of the base's correct answers kept" in line
        assert "insufficient evidence" in line and "needs at least 59 base-correct answers" in line
    # decision = "point" keeps the old rule for exploratory runs, and says so
    gates.write_text('[gates]\nskip = ["leakage", "task"]\ndecision = "point"\n')
    assert main(["check", "--base", str(tiny_model_dir), "--adapter", str(adapter), "--suite", str(tmp_path / "n2" / "gk" / "suite.yaml"),
                 "--db", str(tmp_path / "n2.duckdb"), "--gates", str(gates)]) == 0
    assert 'decided on the point estimate (decision = "point")' in capsys.readouterr().out


def test_eval_applies_the_suites_gates(setup, tiny_model_dir, tmp_path, capsys):
    d = setup["suite"].parent
    strict = tmp_path / "strict"
    strict.mkdir()
    (strict / "data.jsonl").write_text((d / "data.jsonl").read_text())
    (strict / "suite.yaml").write_text(setup["suite"].read_text().replace("min: 0.9", "min: 1.5"))
    args = ["eval", "--base", str(tiny_model_dir), "--adapter", str(setup["good"]), "--suite", str(strict / "suite.yaml"),
            "--db", str(tmp_path / "e.duckdb")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "gate failed: threshold[gk:exact_match]" in err and ">= 1.5" in err
    con = duckdb.connect(str(tmp_path / "e.duckdb"), read_only=True)
    rows = con.execute("SELECT gate, passed, observed, threshold FROM gate_results ORDER BY seq").fetchall()
    con.close()
    assert ("threshold[gk:exact_match]", False, 1.0, 1.5) in rows and ("completeness", True, 128.0, 128.0) in rows
    assert main([*args, "--no-gates"]) == 0
    # the project file's gates too (retention is kept by this adapter)
    (tmp_path / "g.toml").write_text("[gates]\nmin_retention = 0.95\n")
    assert main([*args[:-4], "--suite", str(setup["suite"]), "--db", str(tmp_path / "e.duckdb"), "--gates", str(tmp_path / "g.toml")]) == 0
    assert "PASS  retention:" in capsys.readouterr().out


def test_check_usage_errors(setup, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--adapter", str(setup["good"]), "--base", str(tiny_model_dir)]) == 2
    assert "no suites to check" in capsys.readouterr().err
    (tmp_path / "harness.toml").write_text("[gates]\nmin_retention = 'high'\n")
    assert main(["check", "--adapter", str(setup["good"]), "--suite", str(setup["suite"])]) == 2
    assert "harness.toml" in capsys.readouterr().err
    assert main(["check", "--adapter", str(setup["good"]), "--suite", str(setup["suite"]), "--scale", "0"]) == 2


def test_a_task_only_check_fails_naming_the_missing_retention_and_leakage(setup, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Issue 28, first case: `check --suite <a task-only suite>` exited 0 ("4 of 4 passed") for an adapter
    that had lost all its general knowledge: the release defaults it could not measure were dropped."""
    task = tmp_path / "task"
    task.mkdir()
    (task / "data.jsonl").write_text((setup["suite"].parent / "data.jsonl").read_text())
    (task / "suite.yaml").write_text(setup["suite"].read_text().replace("role: general", "role: task").replace("name: gk", "name: tk"))
    monkeypatch.chdir(tmp_path)  # no project file: the release defaults
    assert main(["check", "--base", str(tiny_model_dir), "--adapter", str(setup["bad"]), "--suite", str(task / "suite.yaml"),
                 "--db", str(tmp_path / "t.duckdb")]) == 1
    err = capsys.readouterr().err
    assert "gate failed: retention" in err and "not measured (no general suite in the run: add a suite with role general" in err
    assert "gate failed: leakage" in err and "not measured" in err


def test_losing_every_one_of_four_answers_against_the_baseline_fails(setup, tiny_model_dir, tmp_path, capsys):
    """Issue 28: 4 of 4 examples lost could never fail (one-sided McNemar p = 0.0625, "not significant")."""
    from tests.gates.test_gates_support import base_answer_suite

    suite = base_answer_suite(tiny_model_dir, tmp_path / "four", n=4)
    gates = tmp_path / "g.toml"
    gates.write_text('[gates]\nmax_regression = 0.05\nskip = ["leakage", "task"]\n')
    assert main(["check", "--base", str(tiny_model_dir), "--adapter", str(setup["bad"]), "--baseline", str(setup["good"]),
                 "--suite", str(suite), "--db", str(tmp_path / "r.duckdb"), "--gates", str(gates)]) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("gate failed: regression[gk:exact_match]"))
    assert "4 worse, 0 better" in line and "upper bound of the drop" in line and line.endswith("FAIL")


def test_an_errored_check_still_writes_its_junit_json_and_summary(setup, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Issue 31: an errored check (exit 2) wrote no JUnit, JSON or step summary, so CI showed nothing."""
    step = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    out = {k: tmp_path / f"out.{k}" for k in ("md", "xml", "json")}
    args = ["check", "--adapter", str(tmp_path / "no-such-adapter"), "--base", str(tiny_model_dir), "--suite",
            str(setup["suite"]), "--summary", str(out["md"]), "--junit", str(out["xml"]), "--json", str(out["json"])]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err
    for md in (step.read_text(), out["md"].read_text()):
        assert md.startswith("## adapter-harness check: ERROR (exit 2, a usage or input error)") and "no-such-adapter" in md
    case = ET.parse(out["xml"]).getroot().find(".//testcase")
    assert case is not None and case.find("error") is not None and "does not exist" in case.find("error").get("message")
    got = json.loads(out["json"].read_text())
    assert got["passed"] is False and got["error"]["exit_code"] == 2 and got["gates"] == []


def test_the_summary_keeps_hostile_model_output_as_text():
    """Issue 31: links and images in model output became live in the Markdown step summary."""
    from harness.reports.gates import _md

    cell = _md("see [click](http://evil.example/x) ![img](https://x/y.png) <img src=x onerror=alert(1)> www.evil.com | x")
    assert "](" not in cell.replace("\\](", "") and "![" not in cell.replace("\\!\\[", "")
    assert "http://" not in cell and "https://" not in cell and "www.evil" not in cell  # autolinks broken
    assert "<img" not in cell and "| x" not in cell.replace("\\| x", "")
