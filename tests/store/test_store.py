"""The results store: migrations equal schema.sql, newer schemas refused, shards ingested exactly once
(even after SIGKILL), concurrent writers, rebuild from shards, lock holder named, NaN never passes."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import IncompatibleError, StorageError
from harness.gates import threshold_gate
from harness.store import (
    SCHEMA,
    SCHEMA_VERSION,
    GenerationRow,
    ScoreRow,
    Store,
    migrations,
    run_status,
    write_shard,
)

ROOT = Path(__file__).resolve().parents[2]


def _catalog(path: Path) -> dict:
    con = duckdb.connect(str(path), read_only=True)
    try:
        cols = con.execute(
            "SELECT table_name, column_index, column_name, data_type, is_nullable, column_default FROM duckdb_columns() "
            "WHERE schema_name = 'main' AND NOT internal ORDER BY ALL"
        ).fetchall()
        cons = con.execute(
            "SELECT table_name, constraint_type, constraint_column_names, expression FROM duckdb_constraints() "
            "WHERE schema_name = 'main' ORDER BY table_name, constraint_type, constraint_column_names::VARCHAR"
        ).fetchall()
        views = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' ORDER BY 1").fetchall()
    finally:
        con.close()
    return {"columns": cols, "constraints": cons, "views": [(n, " ".join(s.split())) for n, s in views]}


def test_migrating_an_empty_database_gives_exactly_schema_sql(tmp_path):
    with Store(tmp_path / "migrated.duckdb").connect():
        pass
    con = duckdb.connect(str(tmp_path / "direct.duckdb"))
    con.execute(SCHEMA.read_text())
    con.close()
    assert _catalog(tmp_path / "migrated.duckdb") == _catalog(tmp_path / "direct.duckdb")
    assert SCHEMA_VERSION == migrations()[-1][0] >= 2
    got = Store(tmp_path / "migrated.duckdb").query("SELECT version FROM schema_migrations ORDER BY 1")
    assert [r["version"] for r in got] == [v for v, _ in migrations()]


def test_a_version_1_database_keeps_its_rows_when_migrated(tmp_path):
    db = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(db))
    con.execute(migrations()[0][1].read_text())
    con.execute("INSERT INTO schema_migrations (version) VALUES (1)")
    con.execute("INSERT INTO step_logs VALUES ('r1', 'a', 1, 0.1, 2.0, 1.0, 1e-4, NULL), ('r1', 'a', 2, 0.2, 1.5, 1.0, 1e-4, NULL)")
    con.execute("INSERT INTO runs (run_id, kind, status) VALUES ('r1', 'train', 'complete')")
    con.close()
    rows = Store(db).query("SELECT step, loss, seq FROM step_logs ORDER BY step")
    assert rows == [{"step": 1, "loss": 2.0, "seq": 1}, {"step": 2, "loss": 1.5, "seq": 2}]
    assert Store(db).query("SELECT incomplete FROM v_runs") == [{"incomplete": None}]


def test_a_database_from_a_newer_harness_is_refused_and_left_alone(tmp_path):
    db = tmp_path / "new.duckdb"
    with Store(db).connect() as con:
        con.execute("INSERT INTO schema_migrations (version) VALUES (?)", [SCHEMA_VERSION + 7])
    with pytest.raises(IncompatibleError, match=rf"schema v{SCHEMA_VERSION + 7} > supported v{SCHEMA_VERSION}.*upgrade"):
        with Store(db).connect():
            pass
    proc = subprocess.run([sys.executable, "-m", "harness", "runs", "--db", str(db)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1 and "upgrade" in proc.stderr
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION + 7
    con.close()


def _gen(key: str, run: str = "x") -> GenerationRow:
    return GenerationRow(key, "base", None, 0.0, "s", key, "p", "out", "{}", 1, 1, None, 0.1)


def test_a_shard_whose_writer_died_before_ingest_is_ingested_once_by_the_next_process(tmp_path):
    store = Store(tmp_path / "h.duckdb")
    with store.connect():
        pass
    rows = {"generations": [dict(run_id="dead", **{k: v for k, v in _gen("k1").__dict__.items() if k != "settings_json"}, settings="{}")],
            "run_results": [{"run_id": "dead", "cache_key": "k1"}]}
    write_shard(store.shard_dir, "dead-00001", "dead", rows)
    # a half-written shard (never renamed) is ignored
    (store.shard_dir / "dead-00002.shard.tmp").mkdir()
    (store.shard_dir / "dead-00002.shard.tmp" / "generations.jsonl").write_text('{"cache_key": "half"')
    for _ in range(2):
        fresh = Store(tmp_path / "h.duckdb")
        assert fresh.query("SELECT cache_key FROM generations") == [{"cache_key": "k1"}]


def test_runs_device_comes_from_run_info(tmp_path):
    """RunInfo.device is the runs.device column; a caller that still puts it in config keeps working."""
    from harness.store import RunInfo
    from harness.util.provenance import provenance

    store = Store(tmp_path / "h.duckdb")
    for info in (RunInfo(kind="eval", command="a", device="cuda:7", config={"device": "cpu"}),
                 RunInfo(kind="eval", command="b", config={"device": "mps"}),
                 RunInfo(kind="eval", command="c")):
        with store.run(info):
            pass
    got = {r["command"]: r["device"] for r in store.query("SELECT command, device FROM runs")}
    assert got == {"a": "cuda:7", "b": "mps", "c": provenance()["device"]}


def test_nan_scores_are_stored_as_null_with_a_reason_and_the_table_refuses_nan(tmp_path):
    s = ScoreRow("k", "rouge1", float("nan"), None, "rouge", "1")
    assert s.value is None and "non-finite" in s.reason
    store = Store(tmp_path / "h.duckdb")
    with store.connect() as con, pytest.raises(duckdb.ConstraintException):
        con.execute("INSERT INTO scores VALUES ('k', 'm', 'NaN'::DOUBLE, NULL, 's', '1')")


@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()), min_size=1, max_size=6),
       st.floats(min_value=-1, max_value=1))
def test_a_gate_passes_only_on_complete_finite_scores(values, t):
    # FAULTS 7: gate(x) <=> every score finite and the mean clears the bound, on the point rule ...
    g = threshold_gate("g", "m", values, n_expected=len(values), min=t, rule="point")
    all_finite = all(v is not None and math.isfinite(v) for v in values)
    assert g.passed == (all_finite and sum(values) / len(values) >= t)
    # ... and on the default rule a pass needs that too (the bound is never above the mean it bounds)
    if threshold_gate("g", "m", values, n_expected=len(values), min=t).passed:
        assert all_finite and sum(values) / len(values) >= t
    assert not threshold_gate("g", "m", values[:-1], n_expected=len(values), min=-1e300).passed  # incomplete
    assert not threshold_gate("g", "m", [], n_expected=0, min=-1).passed  # vacuous


HOLD = """
import sys, time
from harness.store import Store
with Store(sys.argv[1]).connect():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_busy_database_waits_then_names_the_lock_holder(tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), "6"], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(StorageError, match=rf"locked by PID {holder.pid} .*wait for it to finish or pass --db"):
            with Store(db, lock_timeout=1.0).connect():
                pass
        assert time.monotonic() - t0 >= 0.9
        # with a longer timeout the second process simply waits its turn, and says it is waiting (issue 29.4:
        # it used to print nothing for up to 120 s)
        with Store(db, lock_timeout=30).connect() as con:
            assert con.execute("SELECT 1").fetchone() == (1,)
        err = capsys.readouterr().err
        assert f"waiting for the results DB {db}: held by PID {holder.pid}" in err and "up to" in err
    finally:
        holder.kill()
        holder.wait()


# -- processes evaluating for real (tiny model) ------------------------------------------------------

SUITE = "name: {name}\nversion: 1\ndata: {{path: data.jsonl, fields: {{input: question, target: answer}}}}\n" \
        "generation: {{max_new_tokens: {tokens}}}\nscorers:\n  - name: exact_match\n"


def _suite(dir: Path, name: str, n: int, tokens: int = 4) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "suite.yaml").write_text(SUITE.format(name=name, tokens=tokens))
    (dir / "data.jsonl").write_text("".join(
        json.dumps({"id": f"{name}-{i}", "question": f"Question {i}: what is {i} plus {i}?", "answer": str(2 * i)}) + "\n"
        for i in range(n)))
    return dir / "suite.yaml"


def _eval_cmd(model: Path, suite: Path, db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "eval", "--base", str(model), "--suite", str(suite), "--db", str(db), *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


def test_sigkill_mid_run_then_rerun_gives_every_row_exactly_once(tiny_model_dir, tmp_path):
    n = 32
    suite = _suite(tmp_path / "s", "killme", n, tokens=16)
    db = tmp_path / "h.duckdb"
    cmd = _eval_cmd(tiny_model_dir, suite, db, "--flush-every", "4", "--batch-size", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=_env())
    shards = db.with_name(db.name + ".shards")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shards.glob("*.shard"))) < 3:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = Store(db).query("SELECT run_id, status, host, pid, n_results, n_expected FROM v_runs")
    assert len(killed) == 1 and 0 < killed[0]["n_results"] < n
    assert run_status(killed[0]) == "interrupted"

    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    store = Store(db)
    gens = store.query("SELECT count(*) AS n, count(DISTINCT example_id) AS ids FROM generations")[0]
    assert gens == {"n": n, "ids": n}
    assert store.query("SELECT count(*) AS n FROM scores")[0]["n"] == n
    runs = store.query("SELECT status, n_results, n_expected, incomplete FROM v_runs ORDER BY started_at")
    assert runs[1] == {"status": "complete", "n_results": n, "n_expected": n, "incomplete": False}
    k = killed[0]["n_results"]
    assert f"{n} examples, {k} cached, {n - k} to generate" in done.stderr


def test_four_processes_evaluating_into_one_database_all_finish_with_every_row_once(tiny_model_dir, tmp_path):
    db = tmp_path / "h.duckdb"
    suites = [_suite(tmp_path / f"s{i}", f"conc{i}", 10) for i in range(2)]
    procs = [subprocess.Popen(_eval_cmd(tiny_model_dir, suites[i % 2], db, "--flush-every", "2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env())
             for i in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e[-1500:] for _, e in outs]
    store = Store(db)
    assert store.query("SELECT count(*) AS n, count(DISTINCT cache_key) AS k FROM generations")[0] == {"n": 20, "k": 20}
    runs = store.query("SELECT status, n_results, n_expected, incomplete FROM v_runs")
    assert len(runs) == 4 and all(r == {"status": "complete", "n_results": 10, "n_expected": 10, "incomplete": False} for r in runs)

    # the shards alone rebuild the same database; the old file is kept
    before = store.query("SELECT (SELECT count(*) FROM generations) g, (SELECT count(*) FROM scores) s, "
                         "(SELECT count(*) FROM run_results) r, (SELECT count(*) FROM runs) n")
    proc = subprocess.run([sys.executable, "-m", "harness", "db", "rebuild", "--db", str(db)], capture_output=True,
                          text=True, cwd=tmp_path, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.glob("h.duckdb.bak-*"))
    assert Store(db).query("SELECT (SELECT count(*) FROM generations) g, (SELECT count(*) FROM scores) s, "
                           "(SELECT count(*) FROM run_results) r, (SELECT count(*) FROM runs) n") == before
    assert Store(db).query("SELECT DISTINCT status FROM runs") == [{"status": "complete"}]


def test_runs_and_results_commands(tiny_model_dir, tmp_path):
    db = tmp_path / "h.duckdb"
    suite = _suite(tmp_path / "s", "cmds", 3)
    assert subprocess.run(_eval_cmd(tiny_model_dir, suite, db), capture_output=True, cwd=tmp_path, env=_env()).returncode == 0
    runs = subprocess.run([sys.executable, "-m", "harness", "runs", "--db", str(db), "--json"], capture_output=True,
                          text=True, cwd=tmp_path, env=_env())
    listed = json.loads(runs.stdout)
    assert runs.returncode == 0 and len(listed) == 1 and listed[0]["n_results"] == 3 and listed[0]["incomplete"] is False
    res = subprocess.run([sys.executable, "-m", "harness", "results", "--db", str(db), "--json"], capture_output=True,
                         text=True, cwd=tmp_path, env=_env())
    body = json.loads(res.stdout)
    assert body["run"]["run_id"] == listed[0]["run_id"]
    assert {(r["suite_name"], r["metric"], r["n"]) for r in body["results"]} == {("cmds", "exact_match", 3)}
    table = subprocess.run([sys.executable, "-m", "harness", "results", "--db", str(db)], capture_output=True, text=True,
                           cwd=tmp_path, env=_env())
    assert table.returncode == 0 and "exact_match" in table.stdout and "3/3" in table.stdout
    report = subprocess.run([sys.executable, "-m", "harness", "report", "--db", str(db), "--out", str(tmp_path / "r.html")],
                            capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "Content-Security-Policy" in html and "cmds" in html and listed[0]["run_id"] in html
    unknown = subprocess.run([sys.executable, "-m", "harness", "report", "--db", str(db), "--run", "nope"],
                             capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert unknown.returncode == 2 and "no run 'nope'" in unknown.stderr
    missing = subprocess.run([sys.executable, "-m", "harness", "runs", "--db", str(tmp_path / "nope.duckdb")],
                             capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert missing.returncode == 2 and "nope.duckdb" in missing.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_database_exits_5_naming_the_file_and_is_left_as_it_was(tmp_path, damage):
    db = tmp_path / "h.duckdb"
    with Store(db).connect() as con:
        con.execute("CREATE TABLE filler AS SELECT range AS i, repeat('x', 100) AS s FROM range(20000)")
    data = db.read_bytes()
    db.write_bytes(data[:10000] if damage == "truncated" else os.urandom(4096))
    before = db.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "harness", "runs", "--db", str(db)], capture_output=True, text=True,
                          cwd=tmp_path, env=_env())
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(db) in proc.stderr and "harness db rebuild" in proc.stderr
    assert db.read_bytes() == before
