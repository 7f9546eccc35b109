"""`harness results`: lineage and child-against-parent (issue 16.6), retention in --json (16.7), and a
dead run shown as interrupted and incomplete everywhere (issue 10.4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from harness.cli import main

REPO = Path(__file__).resolve().parents[2]
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
    from harness.models.adapters import inspect_adapter

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
    # exact_match and, on this general suite, each adapter's drift from the base (drift_kl, drift_nll)
    assert sorted(r["metric"] for r in shown["vs_parent"]) == ["drift_kl", "drift_nll", "exact_match"]
    [vp] = [r for r in shown["vs_parent"] if r["metric"] == "exact_match"]
    assert vp["n_pairs"] == 3
    # independent: the child's and the parent's exact_match rows in that run
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    vals = dict(con.execute(
        "SELECT g.adapter_id, avg(s.value) FROM generations g JOIN scores s USING (cache_key) WHERE g.adapter_id IS NOT NULL "
        "AND s.metric = 'exact_match' GROUP BY g.adapter_id").fetchall())
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


def test_sql_shows_stored_escape_sequences_as_marks_and_json_never_cuts_silently(tmp_path, capsys):
    """Issue 29.4 / 31: a stored model output's terminal escapes are not sent to the terminal raw; --json
    returned 200 of 1,760 rows, exited 0 and said nothing."""
    from harness.store import RunInfo, Store

    db = tmp_path / "h.duckdb"
    with Store(db).run(RunInfo(kind="eval", command="\x1b[2J\x1b]0;pwned\x07")):
        pass
    assert main(["sql", "SELECT command FROM runs", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "<U+001B>" in out
    rows = "SELECT * FROM range(450) t(i)"
    assert main(["sql", rows, "--db", str(db), "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 450 and captured.err == ""
    assert main(["sql", rows, "--db", str(db), "--json", "--limit", "10"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 10 and "440 more rows not printed" in captured.err


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


def _parent_and_child(base_dir: Path, tmp: Path) -> tuple[Path, Path, str, str, Path]:
    """A parent and its continued child, both in directories called ``final``; the child's path sorts first."""
    from harness.models.adapters import inspect_adapter

    d = tmp / "suite"
    d.mkdir()
    (d / "suite.yaml").write_text(SUITE)
    (d / "data.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                                          for q, a in [("Two plus two?", "four"), ("Sky?", "blue"), ("Hot?", "cold")]))
    parent = _adapter(base_dir, tmp / "z" / "final", 1)
    child = _adapter(base_dir, tmp / "a" / "final", 2)
    pid, cid = inspect_adapter(parent).adapter_id, inspect_adapter(child).adapter_id
    (child / "harness.json").write_text(json.dumps({"parent_adapter": {"adapter_id": pid, "path": str(parent)}}))
    return parent, child, pid, cid, d / "suite.yaml"


def test_runs_and_results_show_lineage_and_list_parents_before_children(tiny_model_dir, tmp_path, capsys):
    from harness.store import AdapterRow, RunInfo, StepLogRow, Store

    parent, child, pid, cid, suite = _parent_and_child(tiny_model_dir, tmp_path)
    db = tmp_path / "h.duckdb"
    # the child is named first on the command line, and its label (a/final) sorts first too
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(db), "--suite", str(suite), "--adapter", str(child),
                 "--adapter", str(parent), "--no-gates"]) == 0
    gid = "e" * 64  # a grandchild trained later, stored as train/record.py stores a training run
    with Store(db).run(RunInfo(kind="train", command="harness train grandchild")) as w:
        w.add_adapter(AdapterRow(gid, "b", str(tmp_path / "grandchild"), "{}", cid, None, "grandchild"))
        w.add_step_logs([StepLogRow(gid, 1, 0.1, 2.0, 1.0, 1e-4, None)])
    capsys.readouterr()

    assert main(["runs", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "adapters (<- parent)" in lines[0]
    [ev] = [x for x in lines if " eval " in x]
    assert f"final [{pid[:8]}], final [{cid[:8]}] <- final [{pid[:8]}]" in ev and "9/9" in ev
    [tr] = [x for x in lines if " train " in x]
    assert f"grandchild [{gid[:8]}] <- final [{cid[:8]}]" in tr and " — " in tr  # a training run has no expected count

    assert main(["runs", "--db", str(db), "--json"]) == 0
    train_run, eval_run = json.loads(capsys.readouterr().out)  # newest first
    assert [a["adapter_id"] for a in eval_run["adapters"]] == [pid, cid]
    assert eval_run["adapters"][1] == {"adapter_id": cid, "name": "final", "parent_adapter_id": pid, "parent_name": "final"}
    assert train_run["adapters"] == [{"adapter_id": gid, "name": "grandchild", "parent_adapter_id": cid, "parent_name": "final"}]
    assert (eval_run["n_expected"], eval_run["n_results"], train_run["n_expected"]) == (9, 9, None)

    # the run's table: base, then the parent's column, then the child's
    assert main(["results", "--db", str(db)]) == 0
    header = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("suite "))
    assert header.index("base") < header.index("z/final@1") < header.index("a/final@1")

    # every result of the adapters named "final": the parent's row before the child's in each group
    assert main(["results", "--db", str(db), "--adapter", "final", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["adapter_id"] for r in shown["vs_base"]] == [pid, cid]
    assert [x["adapter_id"] for x in shown["lineage"][0]["chain"]] == [cid, pid]
    assert main(["results", "--db", str(db), "--adapter", "final"]) == 0
    out = capsys.readouterr().out
    assert out.index(f"final [{pid[:8]}]  1") < out.index(f"final [{cid[:8]}]  1")


def test_an_eval_declares_its_whole_expected_count_in_its_first_results_shard(tiny_model_dir, tmp_path, capsys):
    """`harness runs` never shows a running eval as complete: the count is fixed before any result lands."""
    from harness.store import read_manifest

    parent, child, _, _, suite = _parent_and_child(tiny_model_dir, tmp_path)
    db = tmp_path / "h.duckdb"
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(db), "--suite", str(suite), "--adapter", str(parent),
                 "--adapter", str(child), "--scale", "0.5", "--scale", "1", "--flush-every", "1", "--no-gates"]) == 0
    shards = sorted((tmp_path / "h.duckdb.shards").iterdir())
    declared = []
    for shard in shards:
        assert read_manifest(shard).n_rows  # every shard is whole
        [row] = [json.loads(x) for x in (shard / "runs.jsonl").read_text().splitlines()]
        declared.append((row["n_expected"], (shard / "generations.jsonl").exists()))
    # the run's opening shard holds no result and no count yet; every later one the whole count: 3 x (1 + 2 x 2)
    assert declared[0] == (None, False) and len(declared) > 3
    assert {n for n, _ in declared[1:]} == {15}
    capsys.readouterr()
    assert main(["runs", "--db", str(db), "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)
    assert (run["n_results"], run["n_expected"], run["incomplete"]) == (15, 15, False)


def test_a_run_that_has_not_declared_its_count_shows_a_question_mark(tmp_path, capsys):
    from harness.store import RunInfo, Store

    db = tmp_path / "h.duckdb"
    with Store(db).run(RunInfo(kind="eval", command="test")):
        pass
    assert main(["runs", "--db", str(db)]) == 0
    assert "0/?" in capsys.readouterr().out
    assert main(["runs", "--db", str(db), "--limit", "0"]) == 2


def test_results_without_a_run_picks_the_newest_sweep_or_check_too(tmp_path, capsys):
    """Issue 35.6: `harness results` said "no evaluation runs" in a store holding sweeps and checks."""
    from harness.store import RunInfo, Store

    db = tmp_path / "h.duckdb"
    with Store(db).run(RunInfo(kind="sweep", command="harness sweep")) as run:
        sweep_id = run.run_id
    assert main(["results", "--db", str(db)]) == 0
    assert sweep_id in capsys.readouterr().out
    empty = tmp_path / "e.duckdb"
    with Store(empty).run(RunInfo(kind="train", command="harness train")):
        pass
    assert main(["results", "--db", str(empty)]) == 2
    assert "no eval, sweep, check or demo runs" in capsys.readouterr().err


def test_sql_writes_results_to_csv_parquet_jsonl_and_json(tmp_path, capsys):
    """Issue 31: results did not leave the DuckDB file, and `COPY ... TO` was refused as if it changed the store."""
    import csv

    import duckdb

    from harness.store import RunInfo, Store

    db = tmp_path / "h.duckdb"
    with Store(db).run(RunInfo(kind="eval", command="a \"quoted\", comma'd command")):
        pass
    query = "SELECT i, i * 0.5 AS half, 'row ' || i AS label FROM range(1234) t(i)"
    for suffix in (".csv", ".parquet", ".jsonl", ".json"):
        out = tmp_path / f"rows{suffix}"
        assert main(["sql", query, "--db", str(db), "--out", str(out)]) == 0
        assert f"wrote 1234 rows to {out}" in capsys.readouterr().out
        if suffix == ".csv":
            got = list(csv.DictReader(out.open()))
            assert len(got) == 1234 and got[7] == {"i": "7", "half": "3.5", "label": "row 7"}
        elif suffix == ".parquet":
            con = duckdb.connect()
            assert con.execute(f"SELECT count(*), sum(half), max(label) FROM read_parquet('{out}')").fetchone() == \
                (1234, sum(i * 0.5 for i in range(1234)), "row 999")
        elif suffix == ".jsonl":
            lines = out.read_text().splitlines()
            assert len(lines) == 1234 and json.loads(lines[3]) == {"i": 3, "half": 1.5, "label": "row 3"}
        else:
            assert len(json.loads(out.read_text())) == 1234
    assert not list(tmp_path.glob(".rows*.tmp"))  # written through a temporary file, none left
    # text with quotes and commas round-trips through CSV
    assert main(["sql", "SELECT command FROM runs", "--db", str(db), "--out", str(tmp_path / "c.csv")]) == 0
    assert next(csv.DictReader((tmp_path / "c.csv").open()))["command"] == "a \"quoted\", comma'd command"
    capsys.readouterr()
    assert main(["sql", "SELECT 1", "--db", str(db), "--out", str(tmp_path / "x.xlsx")]) == 2
    assert ".csv, .parquet, .jsonl" in capsys.readouterr().err
    assert main(["sql", f"COPY runs TO '{tmp_path / 'r.csv'}'", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "pass --out FILE.csv" in err and "changed only by harness commands" not in err
    assert not (tmp_path / "r.csv").exists()
