"""Suites say what they measure (issue 12): roles, headlines, directions, and format leakage for any
task. The ticket-triage task is set up as a new user would: one task suite of their own, and the
built-in general-knowledge and format-leakage suites as they are, with no copy."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import torch

from harness.cli import main
from harness.errors import SuiteError
from harness.suites.spec import ROLES, builtin_suites, higher_is_better, load_examples, load_suite

TICKET_SUITE = """\
name: ticket-triage
version: 1
role: task
headline: json_exact
data: {path: tickets.jsonl, fields: {id: id, input: ticket, target: answer}}
generation: {max_new_tokens: 8}
scorers:
  - name: json_field
"""
TICKETS = [
    ("t1", "My invoice is wrong, please fix it today", {"category": "billing", "priority": "high"}),
    ("t2", "How do I change my password?", {"category": "account", "priority": "low"}),
    ("t3", "The app crashes when I open it", {"category": "bug", "priority": "high"}),
]


def test_every_builtin_suite_declares_a_role_and_a_headline():
    for name in builtin_suites():
        suite = load_suite(name)
        load_examples(suite)
        assert suite.role in ROLES and suite.headline, name
        assert not any(s.name == "format_leakage" and "item" in s.args.get("keys", ()) for s in suite.scorers), (
            f"{name} hard-codes the order task's keys")


def test_directions():
    assert higher_is_better("alias_match") and not higher_is_better("format_leakage")
    assert not higher_is_better("perplexity") and higher_is_better("perplexity", {"perplexity": True})


@pytest.mark.parametrize("extra, match", [
    ("role: judge\n", "role must be one of"),
    ("metrics: {json_exact: {higher_is_better: maybe}}\n", "higher_is_better"),
    ("headline: [a]\n", "headline must be a metric name"),
])
def test_bad_role_fields_are_suite_errors(tmp_path, extra, match):
    (tmp_path / "tickets.jsonl").write_text(json.dumps({"id": "t", "ticket": "x", "answer": "{}"}) + "\n")
    (tmp_path / "suite.yaml").write_text(TICKET_SUITE.replace("role: task\nheadline: json_exact\n", extra))
    with pytest.raises(SuiteError, match=match):
        load_suite(tmp_path / "suite.yaml")


def _ticket_adapter(base_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1.0)
    pm.save_pretrained(out)
    return out


def test_a_users_own_task_gets_headline_retention_and_leakage_of_its_own_format(tiny_model_dir, tmp_path, capsys):
    d = tmp_path / "ticket"
    d.mkdir()
    (d / "suite.yaml").write_text(TICKET_SUITE)
    (d / "tickets.jsonl").write_text("".join(json.dumps({"id": i, "ticket": t, "answer": json.dumps(a)}) + "\n" for i, t, a in TICKETS))
    adapter = _ticket_adapter(tiny_model_dir, tmp_path / "adapter")
    db = tmp_path / "h.duckdb"
    code = main(["eval", "--base", str(tiny_model_dir), "--db", str(db), "--adapter", str(adapter), "--limit", "6",
                 "--suite", str(d / "suite.yaml"), "--suite", "general-knowledge", "--suite", "format-leakage",
                 "--report", str(tmp_path / "r.html"), "--no-gates"])  # a random adapter fails the built-in gates
    assert code == 0
    out = capsys.readouterr().out
    con = duckdb.connect(str(db), read_only=True)
    leak_args = {json.dumps(json.loads(a)) for (a,) in con.execute(
        "SELECT DISTINCT json_extract(config, '$.scorers') FROM runs WHERE kind = 'eval'").fetchall()}
    metrics = {tuple(r) for r in con.execute("SELECT DISTINCT suite_name, metric FROM v_scores").fetchall()}
    roles = dict(con.execute("SELECT name, role FROM suites").fetchall())
    con.close()
    # leakage is measured for the ticket format (category, priority), on both general suites
    assert {("general-knowledge", "format_leakage"), ("format-leakage", "format_leakage"),
            ("ticket-triage", "json_exact"), ("general-knowledge", "alias_match")} <= metrics
    [scorers] = [json.loads(a) for a in leak_args]
    assert scorers["format-leakage"] == [{"name": "format_leakage", "version": "3", "args": {"keys": ["category", "priority"]}}]
    assert roles == {"ticket-triage": "task", "general-knowledge": "general", "format-leakage": "leakage"}
    # the summary has its headline (first, as the task), retention of general knowledge, and leakage
    lines = [line.split()[:2] for line in out.splitlines() if line.strip()]
    assert lines[2] == ["ticket-triage", "json_exact"]
    assert ["general-knowledge", "retention"] in lines and ["format-leakage", "format_leakage"] in lines
    html = (tmp_path / "r.html").read_text()
    assert "ticket-triage" in html and "retention" in html and "format-leakage" in html


def test_leakage_suite_without_a_known_format_is_a_suite_error(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(tmp_path / "h.duckdb"),
                 "--suite", "format-leakage", "--limit", "2"]) == 2
    assert "--task-format" in capsys.readouterr().err
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(tmp_path / "h.duckdb"),
                 "--suite", "format-leakage", "--limit", "2", "--task-format", "category,priority", "--no-gates"]) == 0
    # with its gates, the suite's own leakage ceiling cannot be shown on 2 answers: insufficient evidence, exit 1
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(tmp_path / "h.duckdb"),
                 "--suite", "format-leakage", "--limit", "2", "--task-format", "category,priority"]) == 1
    assert "insufficient evidence" in capsys.readouterr().err


def test_lineage_shows_in_a_database_that_never_saw_the_parents_training(tiny_model_dir, tmp_path):
    """harness.json writes {"parent_adapter": {"adapter_id": ...}}; eval must read that, not a flat key."""
    from harness.models.adapters import inspect_adapter

    parent = _ticket_adapter(tiny_model_dir, tmp_path / "parent")
    child = _ticket_adapter(tiny_model_dir, tmp_path / "child")
    pid = inspect_adapter(parent).adapter_id
    (child / "harness.json").write_text(json.dumps({"parent_adapter": {"adapter_id": pid, "path": str(parent)}}))
    db = tmp_path / "fresh.duckdb"
    d = tmp_path / "ticket"
    d.mkdir()
    (d / "suite.yaml").write_text(TICKET_SUITE)
    (d / "tickets.jsonl").write_text("".join(json.dumps({"id": i, "ticket": t, "answer": json.dumps(a)}) + "\n" for i, t, a in TICKETS))
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(db), "--adapter", str(child),
                 "--suite", str(d / "suite.yaml")]) == 0
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT parent_adapter_id FROM adapters").fetchall() == [(pid,)]
    con.close()
