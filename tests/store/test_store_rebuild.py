"""`harness db rebuild` / `check`: a damaged shard never costs the database anything, backups are never
overwritten, shards are checked against their manifests (counts and SHA-256) on ingest and rebuild."""

from __future__ import annotations

import json
import os

import pytest

from harness.errors import StorageError
from harness.store import Store, read_manifest, write_shard
from tests.store.test_store_support import counts, fill, harness, shard_tables


def _backups(db):
    return sorted(p for p in db.parent.iterdir() if ".bak-" in p.name)


def _cut_mid_line(file):
    data = file.read_bytes()
    file.write_bytes(data[: data.index(b"\n", len(data) // 2) - 5])


def test_a_shard_cut_mid_line_stops_rebuild_before_anything_is_touched(tmp_path):
    db = tmp_path / "h.duckdb"
    fill(db)
    before, data = counts(db), db.read_bytes()
    damaged = db.with_name("h.duckdb.shards") / "r1-00001.shard"
    _cut_mid_line(damaged / "generations.jsonl")

    proc = harness("db", "rebuild", "--db", str(db))
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "r1-00001.shard" in proc.stderr and "generations.jsonl line" in proc.stderr and "cut off" in proc.stderr
    assert "--skip-damaged" in proc.stderr
    assert db.read_bytes() == data and counts(db) == before and not _backups(db)
    assert not [p for p in tmp_path.iterdir() if "rebuild" in p.name]  # no temporary file left

    # --skip-damaged goes on with the rest, but will not swap in a file that lacks rows the current one holds
    proc = harness("db", "rebuild", "--db", str(db), "--skip-damaged")
    assert proc.returncode == 5 and "lack rows" in proc.stderr and "5 generations" in proc.stderr, proc.stderr
    assert db.read_bytes() == data and not _backups(db)

    # the current file cut in half: commands refuse it, but DuckDB can still read the rows of the damaged
    # shard from it, so the rebuild without them is swapped in only when forced; the old file is kept
    db.write_bytes(data[: len(data) // 2])
    cut = db.read_bytes()
    assert harness("runs", "--db", str(db)).returncode == 5
    proc = harness("db", "rebuild", "--db", str(db), "--skip-damaged")
    assert proc.returncode == 5 and "lack rows" in proc.stderr and db.read_bytes() == cut
    proc = harness("db", "rebuild", "--db", str(db), "--skip-damaged", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "skipped: shard" in proc.stdout and "r1-00001.shard" in proc.stdout
    [bak] = _backups(db)
    assert bak.read_bytes() == cut
    after = counts(db)
    assert after["generations"] == 10 and after["ingested_shards"] == 2
    # the skipped shard left the shard folder (kept beside it): later commands open the rebuilt file, where
    # before every one still exited 5 on it although the message offered --skip-damaged as the fix
    assert not damaged.exists() and [p.name.startswith("r1-00001.shard.damaged-") for p in damaged.parent.iterdir()].count(True) == 1
    assert "moved aside" in proc.stdout
    assert harness("runs", "--db", str(db)).returncode == 0


def test_rebuilds_in_the_same_second_never_overwrite_a_backup(tmp_path):
    db = tmp_path / "h.duckdb"
    fill(db)
    before = counts(db)
    for _ in range(3):
        proc = harness("db", "rebuild", "--db", str(db))
        assert proc.returncode == 0, proc.stderr
    baks = _backups(db)
    assert len(baks) == 3 and len({b.name for b in baks}) == 3
    assert counts(db) == before
    assert all(counts(b) == before for b in baks)


def test_rebuild_keeps_rows_that_no_shard_holds_unless_forced(tmp_path):
    db = tmp_path / "h.duckdb"
    fill(db, n_shards=1)
    with Store(db).connect() as con:  # a row written without a shard (e.g. by hand, or by an old harness)
        con.execute("INSERT INTO runs (run_id, kind, status) VALUES ('by-hand', 'eval', 'complete')")
    before = counts(db)
    proc = harness("db", "rebuild", "--db", str(db))
    assert proc.returncode == 5 and "1 runs" in proc.stderr and "--force" in proc.stderr
    assert counts(db) == before and not _backups(db)
    proc = harness("db", "rebuild", "--db", str(db), "--force")
    assert proc.returncode == 0 and "lacks 1 runs" in proc.stdout
    [bak] = _backups(db)
    assert counts(bak) == before


def test_a_shard_cut_at_a_line_boundary_is_caught_on_ingest_and_on_rebuild(tmp_path):
    db = tmp_path / "h.duckdb"
    store = fill(db, n_shards=1)
    before = counts(db)
    shard = write_shard(store.shard_dir, "late-00001", "late", shard_tables("late", 0, 5))
    f = shard / "generations.jsonl"
    f.write_text("".join(f.read_text().splitlines(keepends=True)[:3]))  # two whole lines gone
    with pytest.raises(StorageError, match=r"late-00001\.shard is damaged: generations\.jsonl holds 3 rows, the manifest records 5"):
        Store(db).query("SELECT 1")
    assert counts(db) == before  # the orphan scores of the missing lines were not moved in either
    proc = harness("db", "rebuild", "--db", str(db))
    assert proc.returncode == 5 and "late-00001.shard" in proc.stderr and "holds 3 rows" in proc.stderr
    assert counts(db) == before


def test_a_changed_byte_fails_the_checksum_and_old_manifests_are_accepted_on_counts(tmp_path):
    db = tmp_path / "h.duckdb"
    store = fill(db, n_shards=1)
    shard = write_shard(store.shard_dir, "late-00001", "late", shard_tables("late", 0, 5))
    assert set(read_manifest(shard).sha256) == {"runs", "generations", "scores", "run_results"}
    f = shard / "scores.jsonl"
    f.write_text(f.read_text().replace('"value": 1.0', '"value": 0.0', 1))  # still valid JSON, same count
    with pytest.raises(StorageError, match=r"scores\.jsonl does not match its SHA-256"):
        Store(db).query("SELECT 1")
    # a manifest whose checksum map lost one table's key is refused, not checked on counts alone (issue 29.4)
    m = json.loads((shard / "MANIFEST.json").read_text())
    edited = {**m, "sha256": {k: v for k, v in m["sha256"].items() if k != "scores"}}
    (shard / "MANIFEST.json").write_text(json.dumps(edited))
    with pytest.raises(StorageError, match=r"lists scores without the SHA-256 the others have"):
        Store(db).query("SELECT 1")
    # a format-1 manifest (no checksums) is accepted when its counts and lines hold
    (shard / "MANIFEST.json").write_text(json.dumps({"run_id": m["run_id"], "tables": m["tables"]}))
    assert Store(db).query("SELECT count(*) AS n FROM generations")[0]["n"] == 10


def test_db_check_reads_everything_and_compares_with_the_shards(tmp_path):
    db = tmp_path / "h.duckdb"
    store = fill(db)
    proc = harness("db", "check", "--db", str(db))
    assert proc.returncode == 0 and "healthy" in proc.stdout, proc.stderr
    with Store(db).connect() as con:  # rows lost from the file although its shard is recorded
        con.execute("DELETE FROM scores WHERE cache_key LIKE 'r2-%'")
    write_shard(store.shard_dir, "new-00001", "new", shard_tables("new", 0, 2))  # a shard not yet moved in
    proc = harness("db", "check", "--db", str(db))
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
    out = proc.stdout + proc.stderr
    assert "table scores lacks 5 rows" in out, out
    assert "new-00001.shard (7 rows) is not in the database" in out
    assert "healthy" not in out
    os.remove(store.shard_dir / "r0-00001.shard" / "MANIFEST.json")
    proc = harness("db", "check", "--db", str(db))
    assert proc.returncode == 5 and "r0-00001.shard: MANIFEST.json is unreadable" in proc.stdout + proc.stderr


def test_db_check_finds_every_damaged_block_that_harness_results_trips_on(tmp_path, capsys):
    """Issue 29.4: `db check` said "healthy" for a file `harness results` refused. A table scan never reads an
    index, a point query does: one flipped byte in each 256 KiB block in turn, and wherever `harness results`
    exits 5, `harness db check` exits 5 too."""
    import shutil

    from harness.cli import main

    src = tmp_path / "src.duckdb"
    fill(src)
    run_id = Store(src).query("SELECT run_id FROM runs ORDER BY run_id LIMIT 1")[0]["run_id"]
    block, first = 262144, 3 * 4096  # DuckDB's block size and its three file headers
    n_blocks = (src.stat().st_size - first) // block
    tripped = []
    for b in range(n_blocks):
        d = tmp_path / f"b{b}"
        d.mkdir()
        db = d / "h.duckdb"
        shutil.copy(src, db)
        shutil.copytree(src.with_name(src.name + ".shards"), db.with_name(db.name + ".shards"))
        with open(db, "r+b") as f:
            f.seek(first + b * block + 200)  # past the block's checksum
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
        if main(["results", "--run", run_id, "--db", str(db)]) == 5:
            tripped.append(b)
            assert main(["db", "check", "--db", str(db)]) == 5, f"block {b}: results refuses the file, db check passed it"
        capsys.readouterr()
    assert tripped, "no block that `harness results` reads was damaged: the test proves nothing"
