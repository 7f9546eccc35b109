"""The store's named queries (harness/store/queries.py, issue 12.5): typed rows, figures checked against an
independent computation from the raw tables; and no SQL left in harness/commands/ but `harness sql`'s."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest

from harness.cli import main
from harness.store import AdapterRow, RunInfo, StepLogRow, Store
from harness.store.queries import (
    AdapterLineage,
    DbCounts,
    RunAdapter,
    RunState,
    SuiteSummaryRow,
    VsBaseRow,
    VsParentRow,
)
from tests.commands.test_results_cli import _adapter

REPO = Path(__file__).resolve().parents[2]
SUITE = """\
name: facts
version: 1
role: general
data: {path: data.jsonl, fields: {input: question, target: answer}}
generation: {max_new_tokens: 6}
scorers:
  - name: exact_match
  - name: perplexity
"""
QA = [("Two plus two?", "four"), ("Colour of the sky?", "blue"), ("Opposite of hot?", "cold"), ("Capital of France?", "Paris")]


@pytest.fixture(scope="module")
def db(tiny_model_dir, tmp_path_factory):
    """Three runs: an eval of base + parent + child at scales 0.5 and 1, an eval of the child at scale 1, and
    a training run (written through the store's run API, as train/record.py writes it) of a grandchild whose
    parent only its harness.json names."""
    from harness.models.adapters import inspect_adapter

    tmp = tmp_path_factory.mktemp("queries")
    d = tmp / "suite"
    d.mkdir()
    (d / "suite.yaml").write_text(SUITE)
    (d / "data.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QA))
    # both directories are called "final" (as trained adapters often are); the child's path sorts first
    parent = _adapter(tiny_model_dir, tmp / "z" / "final", 1)
    child = _adapter(tiny_model_dir, tmp / "a" / "final", 2)
    pid, cid = inspect_adapter(parent).adapter_id, inspect_adapter(child).adapter_id
    (child / "harness.json").write_text(json.dumps({"parent_adapter": {"adapter_id": pid, "path": str(parent)}}))
    db = tmp / "h.duckdb"
    common = ["--base", str(tiny_model_dir), "--db", str(db), "--suite", str(d / "suite.yaml"), "--no-gates"]
    assert main(["eval", *common, "--adapter", str(parent), "--adapter", str(child), "--scale", "0.5", "--scale", "1"]) == 0
    assert main(["eval", *common, "--adapter", str(child), "--no-base"]) == 0
    gid = "g" * 64
    with Store(db).run(RunInfo(kind="train", command="test train", started_at="2030-01-01 00:00:00")) as w:
        w.add_adapter(AdapterRow(gid, "b", str(tmp / "grandchild"), "{}", None,
                                 json.dumps({"parent_adapter": {"adapter_id": cid}}), "grandchild"))
        w.add_step_logs([StepLogRow(gid, 1, 0.1, 2.0, 1.0, 1e-4, None)])
    return {"db": db, "parent": pid, "child": cid, "grandchild": gid, "tmp": tmp}


def _raw(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _scores(db: Path) -> list[dict]:
    """Every (run, adapter, scale, example, metric, value) from the raw tables, no view involved."""
    rows = _raw(db, "SELECT rr.run_id, g.adapter_id, g.scale, g.example_id, s.metric, s.value FROM run_results rr "
                    "JOIN generations g ON g.cache_key = rr.cache_key JOIN scores s ON s.cache_key = g.cache_key")
    return [dict(zip(("run", "adapter", "scale", "ex", "metric", "value"), r)) for r in rows]


def _runs(db: Path) -> list[str]:
    return [r[0] for r in _raw(db, "SELECT run_id FROM runs ORDER BY started_at")]


def test_rows_are_typed(db):
    q = Store(db["db"], read_only=True).queries
    for rows, cls in ((q.runs(), RunState), (q.run_adapters(_runs(db["db"])), RunAdapter), (q.lineage(), AdapterLineage),
                      (q.adapter_vs_base([db["child"]]), VsBaseRow), (q.child_vs_parent([db["child"]]), VsParentRow),
                      (q.suite_summary(_runs(db["db"])[0]), SuiteSummaryRow)):
        assert rows and all(type(r) is cls for r in rows)
    assert type(q.counts()) is DbCounts


def test_runs_newest_first_with_counts_from_the_raw_tables(db):
    q = Store(db["db"], read_only=True).queries
    ev1, ev2, train = _runs(db["db"])
    runs = q.runs()
    assert [r.run_id for r in runs] == [train, ev2, ev1]
    assert [r.run_id for r in q.runs(limit=2)] == [train, ev2]
    results = dict(_raw(db["db"], "SELECT run_id, count(*) FROM run_results GROUP BY run_id"))
    for r in runs:
        assert r.status == "complete" and r.n_results == results.get(r.run_id, 0) and r.n_errors == 0
    # eval 1: 4 examples x (base + 2 adapters x 2 scales); eval 2: 4 x the child at 1; training: no count
    assert [(r.n_expected, r.incomplete) for r in runs] == [(None, None), (4, False), (20, False)]
    assert q.run(ev1) == runs[2] and q.run("nope") is None
    assert q.has_run(ev2) and not q.has_run("nope")
    assert q.newest_run_id() == ev2 and q.newest_run_id(("train",)) == train and q.newest_run_id(("check",)) is None
    # the sweep of the child is eval 1 (two non-zero scales), not the newer single-scale eval 2
    assert q.newest_sweep_run_id(db["child"]) == ev1 and q.newest_sweep_run_id("nope") is None


def test_run_adapters_and_lineage_include_trained_adapters_and_harness_json_parents(db):
    q = Store(db["db"], read_only=True).queries
    ev1, ev2, train = _runs(db["db"])
    p, c, g = db["parent"], db["child"], db["grandchild"]
    got = {(a.run_id, a.adapter_id, a.name, a.parent_adapter_id, a.parent_name) for a in q.run_adapters([ev1, ev2, train])}
    assert got == {(ev1, p, "final", None, None), (ev1, c, "final", p, "final"), (ev2, c, "final", p, "final"),
                   (train, g, "grandchild", c, "final")}
    # the grandchild's row has no parent column: its harness.json names the parent
    assert _raw(db["db"], f"SELECT parent_adapter_id FROM adapters WHERE adapter_id = '{g}'") == [(None,)]
    assert {(a.adapter_id, a.parent_adapter_id) for a in q.lineage()} == {(p, None), (c, p), (g, c)}
    assert [a.adapter_id for a in q.lineage([g])] == [g]


def test_adapter_and_child_against_base_and_parent_match_the_raw_scores(db):
    q = Store(db["db"], read_only=True).queries
    scores = _scores(db["db"])
    p, c = db["parent"], db["child"]

    def paired(other: str | None, run: str, scale: float, metric: str) -> tuple[int, float, float, float]:
        mine = {s["ex"]: s["value"] for s in scores if (s["run"], s["adapter"], s["scale"], s["metric"]) == (run, c, scale, metric)}
        ref = {s["ex"]: s["value"] for s in scores
               if (s["run"], s["adapter"], s["metric"]) == (run, other, metric) and (other is None or s["scale"] == scale)}
        both = [x for x in mine if x in ref and mine[x] is not None and ref[x] is not None]
        return (len(both), sum(mine[x] for x in both) / len(both), sum(ref[x] for x in both) / len(both),
                sum(mine[x] - ref[x] for x in both) / len(both))

    vs_base = q.adapter_vs_base([c])
    # paired within one run: eval 2 (--no-base) has no base rows to pair with
    ev1 = _runs(db["db"])[0]
    assert {(r.run_id, r.scale, r.metric) for r in vs_base} == {(ev1, sc, m) for sc in (0.5, 1.0) for m in ("exact_match", "nll", "perplexity")}
    for r in vs_base:
        n, mean, base, delta = paired(None, r.run_id, r.scale, r.metric)
        assert (r.n_pairs, r.adapter_id) == (n, c)
        assert r.adapter_mean == pytest.approx(mean, abs=1e-12) and r.base_mean == pytest.approx(base, abs=1e-12)
        assert r.mean_delta == pytest.approx(delta, abs=1e-12)
    vs_parent = q.child_vs_parent([c])
    assert {(r.run_id, r.scale) for r in vs_parent} == {(ev1, 0.5), (ev1, 1.0)}
    assert any(r.mean_delta for r in vs_parent)  # the figures below are not all zeros
    for r in vs_parent:
        n, mean, parent, delta = paired(p, r.run_id, r.scale, r.metric)
        assert (r.n_pairs, r.child_name, r.parent_name) == (n, "final", "final")
        assert r.child_mean == pytest.approx(mean, abs=1e-12) and r.parent_mean == pytest.approx(parent, abs=1e-12)
        assert r.mean_delta == pytest.approx(delta, abs=1e-12)


def test_suite_summary_and_counts_match_the_raw_tables(db):
    q = Store(db["db"], read_only=True).queries
    run = _runs(db["db"])[0]
    groups: dict[tuple, list] = defaultdict(list)
    for s in _scores(db["db"]):
        if s["run"] == run:
            groups[(s["adapter"], s["scale"], s["metric"])].append(s["value"])
    rows = q.suite_summary(run)
    # 5 models x (exact_match, nll, perplexity), and the 4 adapter models' drift from the base (a general suite)
    assert len(rows) == len(groups) == 3 * 5 + 2 * 4
    for r in rows:
        vals = groups[(r.adapter_id, r.scale, r.metric)]
        assert (r.n, r.n_scored, r.suite_name) == (len(vals), sum(v is not None for v in vals), "facts")
        assert r.mean == pytest.approx(sum(v for v in vals if v is not None) / r.n_scored, abs=1e-12)
    [(runs, gens, scores, shards, version)] = _raw(db["db"], "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM "
                                                   "generations), (SELECT count(*) FROM scores), (SELECT count(*) FROM "
                                                   "ingested_shards), (SELECT max(version) FROM schema_migrations)")
    assert q.counts() == DbCounts(version, runs, gens, scores, shards)


def test_find_adapters_by_id_prefix_or_name_only(db):
    q = Store(db["db"], read_only=True).queries
    assert {a.adapter_id for a in q.find_adapters("final")} == {db["parent"], db["child"]}
    assert [a.adapter_id for a in q.find_adapters(db["child"][:10])] == [db["child"]]
    assert q.find_adapters("%") == [] and q.find_adapters("fin") == []  # a prefix of an id, not a pattern or a name


def test_no_sql_in_the_commands_but_harness_sql():
    """Issue 12.5: the commands call the store's named queries; `harness sql` runs the user's own query."""
    sql = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|FROM v_|JOIN)\b")
    offenders = []
    for path in sorted((REPO / "harness" / "commands").glob("*.py")):
        if path.name == "sql.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if sql.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)
