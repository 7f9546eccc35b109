"""Maintenance that never loses what is stored: rebuild from shards, full check, WAL quarantine.

``rebuild`` builds a NEW file beside the database, reads it back, and swaps it in only when it holds
every row the current file holds (rows compared table by table, timestamps of bookkeeping aside);
the current file is kept under a unique ``.bak-<time>-<random>`` name (a hard link first, so there is
never a moment without a database, and an existing backup is never replaced). A damaged shard stops
it before anything is touched, unless ``skip_damaged``.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.errors import StorageError
from harness.store.errors import damaged, first_line, is_lock_conflict
from harness.store.ingest import _sql_str, columns, full_scan, ingest, primary_key, read_json_sql, user_tables
from harness.store.locking import db_lock, deadline_after, open_duckdb
from harness.store.migrate import migrate, recorded_shards
from harness.store.shards import ShardError, ShardManifest, pending_shards, verify_shard

# Bookkeeping columns that differ between two equally complete files.
_IGNORED = {("ingested_shards", "ingested_at"), ("ingested_shards", "n_rows"), ("schema_migrations", "applied_at")}


def _shard_dir(db: Path, shard_dir: Path | None) -> Path:
    return Path(shard_dir) if shard_dir else db.with_name(db.name + ".shards")


def _aside_name(path: Path, tag: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return path.with_name(f"{path.name}.{tag}-{stamp}-{uuid.uuid4().hex[:6]}")


def _keep_aside(src: Path, dst: Path, keep_src: bool) -> None:
    """Give ``src`` the new name ``dst`` without ever replacing an existing file (link fails if it exists)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise StorageError(f"{dst} exists; nothing was changed, rerun") from None
    except OSError:  # a file system without hard links: a checked rename (we hold the lock)
        if dst.exists():
            raise StorageError(f"{dst} exists; nothing was changed, rerun") from None
        os.rename(src, dst)
        return
    if not keep_src:
        os.unlink(src)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class RebuildReport:
    db: Path
    shards: int
    backup: Path | None
    counts: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _lacking(con: Any) -> tuple[dict[str, int], list[str]]:
    """Rows of the attached ``old`` database that the new one (main) lacks, per table; notes on what was unreadable."""
    import duckdb

    lacking: dict[str, int] = {}
    notes: list[str] = []
    new_tables = set(user_tables(con))
    for t in user_tables(con, "old"):
        try:
            old_cols = [r[0] for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = 'old' AND schema_name = 'main' "
                "AND table_name = ? ORDER BY column_index", [t]).fetchall()]
            if t not in new_tables:
                n = con.execute(f'SELECT count(*) FROM old.main."{t}"').fetchone()[0]
            else:
                # A keyed row is present when its key is (which run first produced a shared cached result
                # may differ); an unkeyed one when the whole row is.
                new_cols = {c for c, _ in columns(con, t)}
                key = [c for c in primary_key(con, t) if c in old_cols]
                cols = key or [c for c in old_cols if c in new_cols and (t, c) not in _IGNORED]
                common = ", ".join(f'"{c}"' for c in cols)
                n = con.execute(f'SELECT count(*) FROM (SELECT {common} FROM old.main."{t}" EXCEPT '
                                f'SELECT {common} FROM main."{t}")').fetchone()[0]
        except duckdb.Error as exc:
            notes.append(f"table {t} of the current file cannot be read ({first_line(exc)[:120]}), so its rows were not compared")
            continue
        if n:
            lacking[t] = n
    return lacking, notes


def _ingest_order(db: Path) -> Any:
    """Sort key: the order the current file moved shards in (so the first writer of a shared row stays
    the same), then name order for shards it does not hold or when it cannot be read."""
    import duckdb

    order: dict[str, int] = {}
    if db.exists():
        try:
            con = duckdb.connect(str(db), read_only=True)
            try:
                rows = con.execute("SELECT shard FROM ingested_shards ORDER BY ingested_at, shard").fetchall()
                order = {r[0]: i for i, r in enumerate(rows)}
            finally:
                con.close()
        except duckdb.Error:
            pass
    return lambda s: (order.get(s.name, len(order)), s.name)


def rebuild(db_path: Path, shard_dir: Path | None = None, skip_damaged: bool = False, force: bool = False,
            lock_timeout: float = 120.0) -> RebuildReport:
    """Recreate the database from its shards into a new file; swap it in only if it is as complete."""
    import duckdb

    db_path = Path(db_path)
    shards_at = _shard_dir(db_path, shard_dir)
    shards = pending_shards(shards_at)
    if not shards:
        raise StorageError(f"no shards in {shards_at}: nothing to rebuild {db_path} from; nothing was changed")
    deadline = deadline_after(lock_timeout)
    with db_lock(db_path, True, deadline, lock_timeout):
        good, skipped, damaged = [], [], []
        for s in shards:
            try:
                verify_shard(s)
                good.append(s)
            except ShardError as exc:
                if not skip_damaged:
                    raise StorageError(f"rebuild of {db_path} stopped before changing anything: {exc}") from None
                skipped.append(str(exc))
                damaged.append(s)
        good.sort(key=_ingest_order(db_path))
        tmp = db_path.with_name(f"{db_path.name}.rebuild-{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
        try:
            con = duckdb.connect(str(tmp))
            try:
                migrate(con, tmp)
                for s in good:
                    try:
                        ingest(con, s, tmp)
                    except StorageError as exc:
                        raise StorageError(f"rebuild of {db_path} stopped, nothing was changed: {exc}") from None
                con.execute("CHECKPOINT")
            finally:
                con.close()
            con = duckdb.connect(str(tmp), read_only=True)  # read every row of the new file back
            try:
                counts = full_scan(con)
            finally:
                con.close()
            notes: list[str] = []
            if db_path.exists():
                con = duckdb.connect(str(tmp))
                try:
                    try:
                        con.execute(f"ATTACH {_sql_str(str(db_path))} AS old (READ_ONLY)")
                        lacking, notes = _lacking(con)
                    except duckdb.Error as exc:
                        if is_lock_conflict(exc):
                            raise StorageError(f"results DB {db_path} is held open by another program "
                                               f"({first_line(exc)[:160]}); close it and rerun") from None
                        lacking, notes = {}, [f"the current file cannot be read ({first_line(exc)[:120]})"]
                finally:
                    con.close()
                if lacking and not force:
                    what = ", ".join(f"{n} {t}" for t, n in sorted(lacking.items()))
                    raise StorageError(
                        f"rebuild of {db_path} refused: the rebuilt database would lack rows the current one holds ({what}"
                        + (f"; {len(skipped)} damaged shards were skipped" if skipped else "")
                        + "); the current file is unchanged. Pass --force to replace it anyway (it is kept as a .bak)")
                if lacking:
                    notes.append("replaced although it lacks " + ", ".join(f"{n} {t}" for t, n in sorted(lacking.items())))
            backup = _swap(db_path, tmp)
            # the skipped shards leave the shard folder (renamed beside it, kept for inspection): left in place,
            # every later open would find them again and refuse the database the rebuild just made
            for s in damaged:
                aside = _aside_name(s, "damaged")
                os.replace(s, aside)
                notes.append(f"damaged shard {s.name} moved aside to {aside.name}")
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                if leftover.exists():
                    leftover.unlink()
    return RebuildReport(db_path, len(good), backup, counts, skipped, notes)


def _swap(db: Path, new: Path) -> Path | None:
    """Put ``new`` at ``db``; the current file (and its WAL) go to a unique backup name first."""
    backup = None
    if db.exists():
        backup = _aside_name(db, "bak")
        _keep_aside(db, backup, keep_src=True)  # db still in place: the replace below is the one switch
        wal = db.with_name(db.name + ".wal")
        if wal.exists():  # a WAL belongs to the old file: replayed into the new one it would corrupt it
            _keep_aside(wal, backup.with_name(backup.name + ".wal"), keep_src=False)
    os.replace(new, db)
    _fsync_dir(db.parent)
    return backup


def _trial_ingest(shard: Path, db_path: Path) -> str | None:
    """Why ``shard`` could not be moved in (a bad record, named by file and line, as ingest names it), tried in an
    empty in-memory database of the current schema; None when it would go in."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        migrate(con, db_path)
        ingest(con, shard, db_path)
    except StorageError as exc:
        return str(exc)
    except duckdb.Error as exc:
        return first_line(exc)
    finally:
        con.close()
    return None


@dataclass
class CheckReport:
    db: Path
    counts: dict[str, int]
    shards: int
    problems: list[str]


#: keys looked up per query by ``read_indexes`` (DuckDB's default cap on an index scan is 2048 values)
_LOOKUP_BATCH = 2048


def read_indexes(con: Any) -> None:
    """Look every key up through its single-column index, so each index block is read and checksummed.

    A table scan never touches an index, but a point query (``harness results`` on a run id, an adapter id)
    goes through it: a damaged index block let ``db check`` report a file healthy that ``harness results``
    then refused. Index scans are forced for the lookups (DuckDB picks a table scan for large key lists).
    Compound keys are left out: DuckDB reads them only when it inserts, which re-checks them then.

    Raises:
        duckdb.Error: a damaged block (the caller reports it).
    """
    con.execute("SET index_scan_percentage = 1.0")
    con.execute(f"SET index_scan_max_count = {_LOOKUP_BATCH}")
    keys = con.execute("SELECT table_name, constraint_column_names FROM duckdb_constraints() "
                       "WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE') AND database_name = current_database()").fetchall()
    for table, cols in keys:
        if len(cols) != 1:
            continue
        col = cols[0]
        values = [v for (v,) in con.execute(f'SELECT "{col}" FROM main."{table}"').fetchall()]
        for i in range(0, len(values), _LOOKUP_BATCH):
            batch = values[i:i + _LOOKUP_BATCH]
            marks = ", ".join("?" * len(batch))
            con.execute(f'SELECT count(*) FROM main."{table}" WHERE "{col}" IN ({marks})', batch).fetchone()


def check(db_path: Path, shard_dir: Path | None = None, lock_timeout: float = 120.0) -> CheckReport:
    """Read every row of every table and every single-column index, then compare the database with its shards
    (never writes)."""
    import duckdb

    db_path = Path(db_path)
    shards_at = _shard_dir(db_path, shard_dir)
    problems: list[str] = []
    deadline = deadline_after(lock_timeout)
    with db_lock(db_path, False, deadline, lock_timeout):
        con = open_duckdb(db_path, True, deadline, lock_timeout)
        try:
            try:
                counts = full_scan(con)
                read_indexes(con)
                recorded = recorded_shards(con)
            except duckdb.Error as exc:
                return CheckReport(db_path, {}, 0, [str(damaged(db_path, exc))])
            on_disk = pending_shards(shards_at)
            good: list[tuple[Path, ShardManifest]] = []
            for s in on_disk:
                try:
                    m = verify_shard(s)
                except ShardError as exc:
                    problems.append(str(exc))
                    continue
                if s.name not in recorded:
                    refused = _trial_ingest(s, db_path)
                    problems.append(f"shard {s} ({m.n_rows} rows) is not in the database; the next harness command "
                                    "that opens it moves it in" if refused is None else
                                    f"shard {s} ({m.n_rows} rows) is not in the database and cannot be moved in: {refused}")
                    continue
                if recorded[s.name] != m.n_rows:
                    problems.append(f"shard {s}: the database records {recorded[s.name]} rows from it, its manifest {m.n_rows}")
                good.append((s, m))
            gone = sorted(set(recorded) - {s.name for s in on_disk})
            if gone:
                problems.append(f"{len(gone)} shard(s) the database records are gone from {shards_at} (first: {gone[0]}); "
                                "a rebuild could not restore their rows")
            files: dict[str, list[Path]] = {}
            for s, m in good:
                for t in m.tables:
                    files.setdefault(t, []).append(s / f"{t}.jsonl")
            for t, fs in sorted(files.items()):
                key = primary_key(con, t)
                if not key:
                    continue
                cols = [(c, ty) for c, ty in columns(con, t) if c in key]
                cond = " AND ".join(f'd."{c}" = s."{c}"' for c in key)
                sel = ", ".join(f'"{c}"' for c in key)
                try:
                    n = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {sel} FROM {read_json_sql(fs, cols)}) s "
                                    f'WHERE NOT EXISTS (SELECT 1 FROM main."{t}" d WHERE {cond})').fetchone()[0]
                except duckdb.Error as exc:
                    problems.append(f"table {t}: comparing with its shards failed ({first_line(exc)[:160]})")
                    continue
                if n:
                    problems.append(f"table {t} lacks {n} rows its shards hold; `harness db rebuild --db {db_path}` "
                                    "restores them")
        finally:
            con.close()
    return CheckReport(db_path, counts, len(on_disk), problems)


@dataclass
class QuarantineReport:
    db: Path
    moved_to: Path | None
    before: dict[str, int] | None
    before_error: str | None
    at_checkpoint: dict[str, int]
    after: dict[str, int]
    reingested: list[str]

    @property
    def lost(self) -> dict[str, int] | None:
        if self.before is None:
            return None
        return {t: n - self.after.get(t, 0) for t, n in self.before.items() if n > self.after.get(t, 0)}


def _counts(db: Path) -> tuple[dict[str, int] | None, str | None]:
    import duckdb

    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error as exc:
        return None, first_line(exc)
    try:
        return full_scan(con), None
    except duckdb.Error as exc:
        return None, first_line(exc)
    finally:
        con.close()


def quarantine_wal(db_path: Path, shard_dir: Path | None = None, lock_timeout: float = 120.0) -> QuarantineReport:
    """Move ``<db>.wal`` aside (unique timestamped name), re-ingest what the shards hold, report the difference."""
    from harness.store.database import Store

    db_path = Path(db_path)
    wal = db_path.with_name(db_path.name + ".wal")
    deadline = deadline_after(lock_timeout)
    with db_lock(db_path, True, deadline, lock_timeout):
        if not wal.exists():
            counts, err = _counts(db_path)
            if err:
                raise StorageError(f"no WAL beside {db_path}, and the file itself cannot be read ({err}); "
                                   f"`harness db rebuild --db {db_path}` recreates it from its shards")
            return QuarantineReport(db_path, None, counts, None, counts or {}, counts or {}, [])
        before, before_err = _counts(db_path)
        aside = _aside_name(wal, "quarantined")
        _keep_aside(wal, aside, keep_src=False)
        _fsync_dir(db_path.parent)
        at_checkpoint, err = _counts(db_path)
        if err:
            raise StorageError(f"moved {wal} aside to {aside}, but {db_path} itself cannot be read ({err}); "
                               f"`harness db rebuild --db {db_path}` recreates it from its shards")
        store = Store(db_path, shard_dir=shard_dir, lock_timeout=lock_timeout)
        reingested = store.repair(deadline)
        after, err = _counts(db_path)
        if err:
            raise damaged(db_path, StorageError(err))
    return QuarantineReport(db_path, aside, before, before_err, at_checkpoint or {}, after or {}, reingested)
