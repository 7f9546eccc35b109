"""`harness suites list|check` (issue 16.3): every mistake of every suite in one go, no model loaded."""

from __future__ import annotations

import json
import time

from harness.cli import main


def test_list_shows_roles_and_sizes(capsys):
    assert main(["suites", "list"]) == 0
    out = capsys.readouterr().out
    for name, role in [("general-knowledge", "general"), ("order-task", "task"), ("format-leakage", "leakage"),
                       ("text-generation", "reference")]:
        line = next(l for l in out.splitlines() if l.startswith(name))
        assert role in line.split()


def test_check_reports_every_problem_at_once_without_a_model(tmp_path, capsys):
    a = tmp_path / "a"
    a.mkdir()
    (a / "suite.yaml").write_text(
        "name: tickets\nversion: 1\ndata: {path: d.jsonl, fields: {input: ticket}}\nprompt: {template: \"{{ inptu }}\"}\n"
        "scorers:\n  - name: alias_match\n    args: {mode: bogus}\n  - name: regex\n    args: {pattern: \"(\"}\n")
    (a / "d.jsonl").write_text(json.dumps({"ticket": "refund please", "answer": "{}"}) + "\n")
    b = tmp_path / "b"
    b.mkdir()
    (b / "suite.yaml").write_text("name: other\nversion: 1\nrole: judge\ndata: {path: missing.jsonl}\nscorers: [exact_match]\n")
    t0 = time.perf_counter()
    assert main(["suites", "check", str(a), str(b), "general-knowledge"]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    for fragment in ["inptu", "bogus", "invalid pattern", "role must be one of", "missing.jsonl"]:
        assert fragment in err, fragment
    assert main(["suites", "check", "general-knowledge", "order-task"]) == 0
    assert capsys.readouterr().out.count("ok  ") == 2


def test_suites_check_refuses_a_headline_or_gate_no_scorer_emits(tmp_path, capsys):
    """Issue 28.5 / 35.4: found by `suites check`, before any model loads, not after generation."""
    import json

    d = tmp_path / "s"
    d.mkdir()
    (d / "data.jsonl").write_text(json.dumps({"id": "1", "input": "q", "target": "a"}) + "\n")
    (d / "suite.yaml").write_text("name: s\nversion: 1\nrole: task\nheadline: rouge1\ndata: {path: data.jsonl}\n"
                                  "scorers: [exact_match]\ngates:\n  - {metric: json_exact, min: 0.5}\n")
    assert main(["suites", "check", str(d / "suite.yaml")]) == 2
    err = capsys.readouterr().err
    assert "headline: no scorer of the suite emits 'rouge1'" in err and "they emit exact_match" in err
    assert "gates[0].metric: no scorer of the suite emits 'json_exact'" in err


def test_check_finds_rows_a_scorer_cannot_score_before_any_model(tmp_path, capsys):
    """Issue 35.4: rows without the target column (a column misnamed in some rows) were scored as missing only
    after generation. `suites check` names the scorer, the rows and the fix; a full suite passes."""
    d = tmp_path / "dates"
    d.mkdir()
    rows = [{"id": "1", "text": "Aug 31 1999", "iso": "1999-08-31"}, {"id": "2", "text": "May 1 2001", "iso": "2001-05-01"},
            {"id": "3", "text": "Jan 2 2020", "ISO": "2020-01-02"}]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "suite.yaml").write_text("name: dates\nversion: 1\ndata: {path: data.jsonl, fields: {input: text, target: iso}}\n"
                                  "prompt: {template: 'Write {{ input }} as an ISO 8601 date.'}\n"
                                  "scorers: [{name: exact_match}, {name: chrf}]\nheadline: exact_match\n")
    assert main(["suites", "check", str(d / "suite.yaml")]) == 2
    err = capsys.readouterr().err
    assert "exact_match cannot score 1 of 3 examples" in err and "id 3" in err and "data.fields" in err, err
    assert "chrf cannot score 1 of 3" in err, err
    rows[2] = {"id": "3", "text": "Jan 2 2020", "iso": "2020-01-02"}
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["suites", "check", str(d / "suite.yaml")]) == 0
