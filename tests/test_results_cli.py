"""`harness results`: lineage and child-against-parent (issue 16.6), retention in --json (16.7), and a
dead run shown as interrupted and incomplete everywhere (issue 10.4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
SUITE = """\
name: facts
version: 1
role: general
data: {path: data.jsonl, fields: {input: question, target: answer}}
generation: {max_new_tokens: 5}
scorers:
  - name: exact_match
"""


def _adapter(base_dir: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1.0)
    pm.save_pretrained(out)
    return out


def test_lineage_and_child_against_parent(tiny_model_dir, tmp_path, capsys):
    from harness.adapters import inspect_adapter

    d = tmp_path / "suite"
    d.mkdir()
    (d / "suite.yaml").write_text(SUITE)
    (d / "data.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                                          for q, a in [("Two plus two?", "four"), ("Sky?", "blue"), ("Hot?", "cold")]))
    parent = _adapter(tiny_model_dir, tmp_path / "parent", 1)
    child = _adapter(tiny_model_dir, tmp_path / "child", 2)
    pid = inspect_adapter(parent).adapter_id
    (child / "harness.json").write_text(json.dumps({"parent_adapter": {"adapter_id": pid, "path": str(parent)}}))
    db = tmp_path / "h.duckdb"
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(db), "--suite", str(d / "suite.yaml"),
                 "--adapter", str(parent), "--adapter", str(child), "--no-gates"]) == 0
    capsys.readouterr()
    assert main(["results", "--db", str(db), "--adapter", str(child)]) == 0
    out = capsys.readouterr().out
    assert "lineage: child" in out and f"<- parent [{pid[:8]}]" in out and "against the parent adapter" in out
    assert main(["results", "--db", str(db), "--adapter", str(child), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    [vp] = shown["vs_parent"]
    assert vp["n_pairs"] == 3
    # independent: the child's and the parent's exact_match rows in that run
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    vals = dict(con.execute(
        "SELECT g.adapter_id, avg(s.value) FROM generations g JOIN scores s USING (cache_key) WHERE g.adapter_id IS NOT NULL "
        "GROUP BY g.adapter_id").fetchall())
    con.close()
    cid = inspect_adapter(child).adapter_id
    assert abs(vp["mean_delta"] - (vals[cid] - vals[pid])) < 1e-12
    capsys.readouterr()
    assert main(["results", "--db", str(db), "--json"]) == 0
    assert "retention" in json.loads(capsys.readouterr().out)


def test_a_dead_run_is_interrupted_and_incomplete_in_results_and_runs(tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    code = (
        "import os, sys; from harness.store import RunInfo, Store; s = Store(sys.argv[1]); "
        "cm = s.run(RunInfo(kind='eval', command='test')); w = cm.__enter__(); w.expect(10); w.flush(force=True); os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", code, str(db)], cwd=REPO).returncode == 9
    assert main(["results", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "0/10 results" in out and "INCOMPLETE" in out
    assert main(["runs", "--db", str(db), "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)
    assert run["status"] == "interrupted" and run["incomplete"] is True


def test_sql_is_read_only_and_names_a_bad_query(tmp_path, capsys):
    from harness.store import RunInfo, Store

    db = tmp_path / "h.duckdb"
    with Store(db).run(RunInfo(kind="eval", command="test")):
        pass
    assert main(["sql", "SELECT kind, status FROM v_runs", "--db", str(db)]) == 0
    assert "eval" in capsys.readouterr().out
    assert main(["sql", "DELETE FROM runs", "--db", str(db)]) == 2
    assert main(["sql", "SELEC 1", "--db", str(db)]) == 2
    assert "query failed" in capsys.readouterr().err
    assert main(["sql", "SELECT count(*) AS n FROM runs", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 1}]


def test_a_training_run_starts_when_training_began_not_when_it_was_stored(tmp_path):
    from datetime import datetime, timedelta

    from harness.store import RunInfo, Store

    db = tmp_path / "h.duckdb"
    began = (datetime.utcnow() - timedelta(minutes=7)).isoformat(sep=" ")
    with Store(db).run(RunInfo(kind="train", command="test", started_at=began)):
        pass
    [row] = Store(db).query("SELECT started_at, finished_at FROM runs")
    assert str(row["started_at"])[:19] == began[:19]
    assert (row["finished_at"] - row["started_at"]).total_seconds() >= 7 * 60 - 1
