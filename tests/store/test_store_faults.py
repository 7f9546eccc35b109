"""Faults of the results store (FAULTS.md rows 1, 5, 6, 10, 11 and the store's part of 32): damaged files
are exit 5 and never written to, a cut WAL is repaired from the shards, locks name their real holder
within one deadline, leftovers of killed writers are cleaned, and a full disk loses nothing stored.
Every "nothing lost" is checked by counting in a fresh process."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import StorageError
from harness.store import RunInfo, Store, write_shard
from harness.store.locking import owner_file
from tests.store.test_store_support import COUNT, ROOT, counts, env, fill, gen, harness, shard_tables

# -- damaged database files ---------------------------------------------------------------------------


def _big(db: Path, n_shards: int = 3, rows: int = 1500) -> Store:
    store = fill(db, n_shards=0)
    for i in range(n_shards):  # random prompts: data blocks DuckDB cannot compress away
        t = shard_tables(f"r{i}", 0, rows)
        for g in t["generations"]:
            g["prompt"] = secrets.token_hex(100)
        write_shard(store.shard_dir, f"r{i}-00001", f"r{i}", t)
    Store(db).query("SELECT 1")
    return store


def _flip_a_data_block(db: Path) -> None:
    """Invert 64 bytes somewhere DuckDB will notice on a full read (a block in use)."""
    data = db.read_bytes()
    for frac in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2):
        off = int(len(data) * frac)
        db.write_bytes(data[:off] + bytes(b ^ 0xFF for b in data[off:off + 64]) + data[off + 64:])
        try:
            con = duckdb.connect(str(db), read_only=True)
            try:
                for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
                    con.execute(f'SELECT sum(hash(_r)) FROM "{t}" AS _r').fetchall()
            finally:
                con.close()
        except duckdb.Error:
            return
    raise AssertionError("no flipped block was detected by DuckDB")


WRITE = r"""
import sys
from harness.errors import HarnessError
from harness.store import GenerationRow, RunInfo, Store
try:
    with Store(sys.argv[1]).run(RunInfo(kind="eval", command="t")) as w:
        w.add_generations([GenerationRow("new", "b", None, 0.0, "s", "e", "p", "o", "{}", 1, 1, None, 0.1)])
except HarnessError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def _one_line_naming(proc: subprocess.CompletedProcess, db: Path) -> bool:
    return (proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and str(db) in proc.stderr
            and "harness db rebuild" in proc.stderr)


def test_flipped_bytes_in_a_data_block_are_found_by_check_and_never_written_to(tmp_path):
    db = tmp_path / "h.duckdb"
    _big(db)
    _flip_a_data_block(db)
    damaged = db.read_bytes()
    proc = harness("db", "check", "--db", str(db))
    assert proc.returncode == 5 and "Corrupt" in proc.stderr and _one_line_naming(proc, db), proc.stderr
    writer = subprocess.run([sys.executable, "-c", WRITE, str(db)], capture_output=True, text=True, env=env())
    assert writer.returncode == 5 and _one_line_naming(writer, db), writer.stderr
    for args in (["runs"], ["results"], ["results", "--json"], ["db", "info"]):
        proc = harness(*args, "--db", str(db))
        assert proc.returncode in (0, 5) and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.returncode == 0 or _one_line_naming(proc, db)
    assert db.read_bytes() == damaged


def test_a_database_cut_in_half_is_exit_5_for_every_command_and_eval_does_not_write(tiny_model_dir, tmp_path):
    db = tmp_path / "h.duckdb"
    fill(db)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    stat = db.stat()
    for args in (["runs"], ["results"], ["report", "--out", str(tmp_path / "r.html")], ["db", "info"], ["db", "check"]):
        proc = harness(*args, "--db", str(db))
        assert proc.returncode == 5 and _one_line_naming(proc, db), (args, proc.stderr)
        assert "healthy" not in proc.stdout + proc.stderr
    suite = tmp_path / "s"
    suite.mkdir()
    (suite / "suite.yaml").write_text("name: cut\nversion: 1\ndata: {path: data.jsonl, fields: {input: q, target: a}}\n"
                                      "generation: {max_new_tokens: 2}\nscorers:\n  - name: exact_match\n")
    (suite / "data.jsonl").write_text(json.dumps({"id": "1", "q": "one?", "a": "1"}) + "\n")
    proc = harness("eval", "--base", str(tiny_model_dir), "--suite", str(suite / "suite.yaml"), "--db", str(db), cwd=tmp_path)
    assert proc.returncode == 5 and str(db) in proc.stderr and "harness db rebuild" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    after = db.stat()
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert not db.with_name(db.name + ".wal").exists()


# -- the WAL ------------------------------------------------------------------------------------------

KILLED_AFTER_COMMIT = r"""
import os, sys, duckdb
from pathlib import Path
from harness.store import write_shard
from harness.store.ingest import ingest
from tests.store.test_store_support import shard_tables
db, shards = Path(sys.argv[1]), Path(sys.argv[2])
con = duckdb.connect(str(db))
con.execute("PRAGMA disable_checkpoint_on_shutdown")
con.execute("SET checkpoint_threshold = '1GB'")
for i in range(5):
    ingest(con, write_shard(shards, f"w{i}-00001", f"w{i}", shard_tables(f"w{i}", 0, 1000)), db)
print("committed", flush=True)
os._exit(0)  # as if killed right after its commits: the WAL is never checkpointed
"""


def _with_a_wal(tmp_path: Path) -> tuple[Path, Path, dict]:
    db = tmp_path / "h.duckdb"
    fill(db, n_shards=1)
    wal = db.with_name(db.name + ".wal")
    out = subprocess.run([sys.executable, "-c", KILLED_AFTER_COMMIT, str(db), str(db) + ".shards"], capture_output=True,
                         text=True, env=env(), cwd=ROOT)
    assert out.stdout.strip() == "committed" and wal.exists(), out.stderr
    before = counts(db)
    assert before["generations"] == 5005
    return db, wal, before


def test_a_wal_cut_in_half_is_repaired_from_the_shards_on_the_next_open(tmp_path):
    db, wal, before = _with_a_wal(tmp_path)
    os.truncate(wal, wal.stat().st_size // 2)
    assert counts(db)["generations"] < 5005  # DuckDB alone drops the cut-off commits silently
    proc = harness("runs", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    assert "moved" in proc.stderr and "did not hold" in proc.stderr and "lost WAL" in proc.stderr
    assert counts(db) == before


def test_a_damaged_wal_is_exit_5_and_quarantine_wal_moves_it_aside_and_reports(tmp_path):
    db, wal, before = _with_a_wal(tmp_path)
    data = bytearray(wal.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 32] = bytes(b ^ 0xFF for b in data[mid:mid + 32])
    wal.write_bytes(bytes(data))
    db_bytes = db.read_bytes()
    proc = harness("runs", "--db", str(db))
    assert proc.returncode == 5 and str(db) in proc.stderr and "quarantine-wal" in proc.stderr, proc.stderr
    assert db.read_bytes() == db_bytes and wal.read_bytes() == bytes(data)  # no auto-delete, nothing written

    proc = harness("db", "quarantine-wal", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    [aside] = [p for p in tmp_path.iterdir() if ".wal.quarantined-" in p.name]
    assert aside.read_bytes() == bytes(data) and not wal.exists()
    assert f"moved {wal} to {aside}" in proc.stdout and "after re-ingesting 5 shards" in proc.stdout
    assert "lost: unknown beyond the shards" in proc.stdout
    assert counts(db) == before


# -- locks --------------------------------------------------------------------------------------------

PLAIN_HOLDER = r"""
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""

FLOCK_HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + ".lock", os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold(script: str, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env())
    assert p.stdout.readline().strip() == "held"
    return p


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_plain_duckdb_holder_is_named_and_a_stale_owner_record_is_not(tmp_path):
    db = tmp_path / "h.duckdb"
    fill(db, n_shards=1)
    stale = _dead_pid()
    owner_file(db).write_text(json.dumps({"pid": stale, "host": os.uname().nodename, "command": "harness runs",
                                          "since": "2024-01-01 00:00:00"}))
    holder = _hold(PLAIN_HOLDER, str(db), "ro", "30")
    try:
        # readers share DuckDB's read-only lock: they are not blocked
        assert Store(db, lock_timeout=2, read_only=True).query("SELECT count(*) AS n FROM runs")[0]["n"] == 1
        t0 = time.monotonic()
        with pytest.raises(StorageError) as err, Store(db, lock_timeout=1.0).connect():
            pass
        assert time.monotonic() - t0 < 3
        msg = str(err.value)
        assert f"PID {holder.pid} (not a harness process" in msg and f"PID {stale}" not in msg and "pass --db" in msg
        assert not owner_file(db).exists()  # the stale record was not kept
    finally:
        holder.kill()
        holder.wait()


def test_one_deadline_covers_the_flock_and_duckdbs_lock(tmp_path):
    db = tmp_path / "h.duckdb"
    fill(db, n_shards=1)
    plain = _hold(PLAIN_HOLDER, str(db), "rw", "30")
    flock = _hold(FLOCK_HOLDER, str(db), "1.2")
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageError, match=rf"held open by PID {plain.pid} .*for over 2s"):
            with Store(db, lock_timeout=2.0).connect():
                pass
        elapsed = time.monotonic() - t0
        assert 1.9 <= elapsed < 2.8, elapsed  # not 1.2 s of flock plus a fresh 2 s for DuckDB
    finally:
        for p in (plain, flock):
            p.kill()
            p.wait()


# -- leftovers of killed writers, and a full disk -------------------------------------------------------


def test_stale_temporary_shards_are_removed_on_the_next_open(tmp_path):
    db = tmp_path / "h.duckdb"
    store = fill(db, n_shards=1)
    host = os.uname().nodename
    dead = store.shard_dir / f"x-00001.shard.tmp-{host}-{_dead_pid()}"
    alive = store.shard_dir / f"y-00001.shard.tmp-{host}-{os.getpid()}"
    old = store.shard_dir / "z-00001.shard.tmp"  # an older harness's name: no writer recorded
    young = store.shard_dir / "v-00001.shard.tmp"
    for d in (dead, alive, old, young):
        d.mkdir()
        (d / "generations.jsonl").write_text('{"cache_key": "half"')
    two_minutes_ago = time.time() - 120
    for p in (old, old / "generations.jsonl"):
        os.utime(p, (two_minutes_ago, two_minutes_ago))
    before = counts(db)
    assert Store(db).query("SELECT count(*) AS n FROM generations")[0]["n"] == before["generations"]
    assert not dead.exists() and not old.exists() and alive.exists() and young.exists()


def test_disk_full_while_writing_a_shard_removes_the_temporary_files_and_keeps_stored_rows(tmp_path, monkeypatch):
    db = tmp_path / "h.duckdb"
    store = fill(db, n_shards=2)
    with pytest.raises(StorageError) as err, store.run(RunInfo(kind="eval", command="t")) as w:
        before = counts(db)
        w.add_generations([])
        w._rows = shard_tables("x", 0, 3)  # rows of the run, as the runner would add them

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        w.flush()
    msg = str(err.value)
    assert "disk full (ENOSPC)" in msg and str(store.shard_dir) in msg and msg.count("\n") == 0
    monkeypatch.undo()
    assert not [p for p in store.shard_dir.iterdir() if ".tmp" in p.name]
    assert counts(db) == before


BIG_INGEST = r"""
import sys, duckdb
from pathlib import Path
from harness.store.ingest import ingest
db = Path(sys.argv[1])
con = duckdb.connect(str(db))
print("ingesting", flush=True)
ingest(con, Path(sys.argv[2]), db)
print("committed", flush=True)
"""


def test_sigkill_during_a_large_single_ingest_leaves_no_rows_from_it(tmp_path):
    """FAULTS row 5: the killed statement leaves nothing; the next open moves the shard in once."""
    import hashlib

    db = tmp_path / "h.duckdb"
    store = fill(db, n_shards=1)
    before = counts(db)
    shard = store.shard_dir / "big-00001.shard"
    shard.mkdir()
    n = 600_000
    con = duckdb.connect()
    con.execute(f"COPY (SELECT 'big-' || range AS cache_key, 'm' AS metric, (range % 10) / 10 AS value, NULL AS reason, "
                f"'s' AS scorer, '1' AS scorer_version FROM range({n})) TO '{shard}/scores.jsonl' (FORMAT json)")
    con.close()
    digest = hashlib.sha256((shard / "scores.jsonl").read_bytes()).hexdigest()
    (shard / "MANIFEST.json").write_text(json.dumps({"format_version": 2, "run_id": "big", "tables": {"scores": n},
                                                     "sha256": {"scores": digest}}))
    proc = subprocess.Popen([sys.executable, "-c", BIG_INGEST, str(db), str(shard)], stdout=subprocess.PIPE, text=True,
                            env=env(), cwd=ROOT)
    assert proc.stdout.readline().strip() == "ingesting"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    rest = proc.communicate()[0]
    assert "committed" not in rest, "the ingest finished before the kill; make the shard larger"
    assert counts(db) == before
    assert Store(db).query("SELECT count(*) AS n FROM scores")[0]["n"] == before["scores"] + n
    assert Store(db).query("SELECT count(*) AS n FROM scores")[0]["n"] == before["scores"] + n


# -- one bad record rolls the whole shard back ----------------------------------------------------------


def test_one_bad_record_rolls_back_the_shard_and_is_named_by_file_line_and_example(tmp_path):
    db = tmp_path / "h.duckdb"
    store = fill(db, n_shards=1)
    before = counts(db)
    t = shard_tables("bad", 0, 5)
    t["generations"][2] = gen("bad-k2", "bad", example="ex-42", scale="not a number")
    shard = write_shard(store.shard_dir, "bad-00001", "bad", t)
    with pytest.raises(StorageError) as err:
        Store(db).query("SELECT 1")
    msg = str(err.value)
    assert f"{shard / 'generations.jsonl'} line 3 (example_id ex-42)" in msg and "nothing from the shard was stored" in msg
    assert counts(db) == before


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 30), st.data(), st.sampled_from(["type", "nan"]))
def test_a_bad_record_anywhere_in_a_batch_leaves_the_counts_unchanged(tmp_path, n, data, kind):
    db = tmp_path / f"h{secrets.token_hex(4)}.duckdb"
    store = fill(db, n_shards=1, rows=2)
    before = Store(db).query("SELECT (SELECT count(*) FROM generations) g, (SELECT count(*) FROM scores) s")
    t = shard_tables("bad", 0, n)
    i = data.draw(st.integers(0, n - 1))
    if kind == "type":
        t["generations"][i]["n_new_tokens"] = "lots"
        table = "generations"
    else:
        t["scores"][i]["value"] = "NaN"
        table = "scores"
    write_shard(store.shard_dir, "bad-00001", "bad", t)
    with pytest.raises(StorageError, match=rf"{table}\.jsonl line {i + 1} \("):
        Store(db).query("SELECT 1")
    shutil.rmtree(store.shard_dir / "bad-00001.shard")
    assert Store(db).query("SELECT (SELECT count(*) FROM generations) g, (SELECT count(*) FROM scores) s") == before


# -- disk full during the commit (FAULTS row 11), on a real small file system ---------------------------

FULL_DISK = r"""
import json, secrets, sys
from pathlib import Path
from harness.errors import StorageError
from harness.store import Store, write_shard
from tests.store.test_store_support import counts, shard_tables
db, shards = Path(sys.argv[1]), Path(sys.argv[2])
store = Store(db, shard_dir=shards)
with store.connect():
    pass
write_shard(shards, "small-00001", "small", shard_tables("small", 0, 10))
Store(db, shard_dir=shards).query("SELECT 1")
print(json.dumps(counts(db)), flush=True)  # the last acknowledged state
t = shard_tables("big", 0, 40000)
for g in t["generations"]:
    g["prompt"] = secrets.token_hex(150)
write_shard(shards, "big-00001", "big", t)
try:
    Store(db, shard_dir=shards).query("SELECT 1")
except StorageError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def test_disk_full_during_the_commit_reports_enospc_and_keeps_the_acknowledged_rows(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (a private tmpfs stands in for a full disk)")
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=4m tmpfs {mnt}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here: {probe.stderr.decode()[:200]}")
    db, shards = mnt / "h.duckdb", tmp_path / "shards"
    (tmp_path / "full.py").write_text(FULL_DISK)
    (tmp_path / "count.py").write_text(COUNT)
    py = sys.executable
    script = (f"mount -t tmpfs -o size=4m tmpfs {mnt} && {py} {tmp_path / 'full.py'} {db} {shards}; rc=$?; "
              f"{py} {tmp_path / 'count.py'} {db} && exit $rc")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], capture_output=True,
                          text=True, env=env(), cwd=ROOT, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert "disk full (ENOSPC)" in proc.stderr and str(db) in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot rollback" not in proc.stderr
    acknowledged, after = json.loads(lines[0]), json.loads(lines[-1])
    assert after == acknowledged and acknowledged["generations"] == 10
