"""The ``Store`` and its ``RunWriter``: connections, shard ingest on open, runs (see the package docstring)."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import StorageError
from harness.store.errors import damaged, disk_full, is_damage, is_disk_full, is_programming_error
from harness.store.ingest import ingest, scan_or_raise
from harness.store.locking import db_lock, deadline_after, open_duckdb
from harness.store.migrate import (
    SCHEMA_VERSION,
    migrate,
    recorded_shards,
    refuse_newer,
    schema_version,
)
from harness.store.queries import Queries
from harness.store.rows import (
    _COLUMN_RENAMES,
    _TABLES,
    AdapterRow,
    BaseModelRow,
    CachedResult,
    ExampleRow,
    FindingRow,
    GateRow,
    GenerationRow,
    RunInfo,
    ScoreRow,
    StepLogRow,
    SuiteRow,
    _now,
)
from harness.store.shards import (
    ShardError,
    clean_stale_tmp,
    pending_shards,
    read_manifest,
    write_shard,
)

log = logging.getLogger("harness.store")


def _writer_gone(shard: Path) -> bool:
    try:
        m = read_manifest(shard)
    except ShardError:
        return True
    return m.writer_gone() or not m.writer


def default_db_path() -> Path:
    return Path(os.environ.get("HARNESS_DB") or "harness.duckdb")


class Store:
    """Access to one results database; connections are short-lived and taken under a file lock.

    ``read_only`` stores (the commands that only read) open DuckDB read-only; they still move in
    shards the database lacks at their first open, as any process does, but a failure to (a lock, a
    full disk) is a warning for them: they show what the database holds.
    """

    def __init__(self, path: str | Path, lock_timeout: float = 120.0, shard_dir: Path | None = None,
                 read_only: bool = False) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.shard_dir = Path(shard_dir) if shard_dir else self.path.with_name(self.path.name + ".shards")
        self.read_only = read_only
        #: names of the shards this store moved in at its first open (the database did not hold them)
        self.recovered: list[str] = []
        self._ready = False
        #: the named read queries, with typed rows (``harness/store/queries.py``)
        self.queries = Queries(self)

    # -- opening: check against the shards, repair what can be repaired ------------------------------

    def _prepare(self, deadline: float) -> None:
        if self._ready:
            return
        clean_stale_tmp(self.shard_dir)
        with db_lock(self.path, True, deadline, self.lock_timeout):
            self.repair(deadline)
        self._ready = True

    def repair(self, deadline: float) -> list[str]:
        """Under the write lock: migrate and move in every shard the database lacks; names moved in.

        Cheap unless there is work: a read-only look at the schema version and ``ingested_shards``,
        compared with the shard names and manifest totals on disk. Before anything is written, every
        table is read in full, so that a damaged file is refused instead of written to.
        """
        import duckdb

        version, recorded, scanned = 0, {}, False
        if self.path.exists():
            con = open_duckdb(self.path, True, deadline, self.lock_timeout)
            try:
                version, recorded = schema_version(con), recorded_shards(con)
                refuse_newer(version, self.path)
                if not self.read_only:
                    scan_or_raise(con, self.path)
                    scanned = True
            except duckdb.Error as exc:
                raise damaged(self.path, exc) from None
            finally:
                con.close()
        existed = self.path.exists()
        on_disk = pending_shards(self.shard_dir)
        for shard in on_disk:
            if shard.name not in recorded:
                continue
            with suppress(ShardError):  # a damaged manifest of a shard already moved in: `db check` reports it
                n = read_manifest(shard).n_rows
                if recorded[shard.name] != n:
                    raise StorageError(
                        f"results DB {self.path} records {recorded[shard.name]} rows from shard {shard.name}, whose "
                        f"manifest says {n}: the database and its shards disagree; run `harness db check --db "
                        f"{self.path}`, then `harness db rebuild --db {self.path}`")
        missing = [s for s in on_disk if s.name not in recorded]
        if version == SCHEMA_VERSION and not missing:
            return []
        try:
            if self.path.exists() and not scanned:
                con = open_duckdb(self.path, True, deadline, self.lock_timeout)
                try:
                    scan_or_raise(con, self.path)
                finally:
                    con.close()
            con = open_duckdb(self.path, False, deadline, self.lock_timeout)
            try:
                migrate(con, self.path)
                moved = []
                for shard in missing:
                    ingest(con, shard, self.path)
                    moved.append(shard.name)
            finally:
                con.close()
        except StorageError as exc:
            if not self.read_only or version != SCHEMA_VERSION or "cannot be read" in str(exc):
                raise
            log.warning("warning: %s (showing what the database holds)", exc)
            return []
        # A shard whose writer lives is one it is about to move in itself: only the others are news.
        orphans = [n for n in moved if _writer_gone(self.shard_dir / n)]
        if orphans and existed:
            log.warning("warning: moved %d shard(s) into %s that it did not hold (a writer killed before its ingest, "
                        "or a lost WAL): %s", len(orphans), self.path, ", ".join(orphans[:5]) + (" ..." if len(orphans) > 5 else ""))
        self.recovered.extend(moved)
        return moved

    # -- connections ---------------------------------------------------------------------------------

    @contextmanager
    def connect(self, write: bool | None = None) -> Iterator[Any]:
        """A connection under the store's lock (writers exclusive, readers shared and DuckDB read-only).

        The first connection of a store migrates and moves in leftover shards (see ``repair``).
        Damage met while the connection is used is a StorageError naming the file and the fix.
        """
        import duckdb

        write = (not self.read_only) if write is None else write
        deadline = deadline_after(self.lock_timeout)
        self._prepare(deadline)
        with db_lock(self.path, write, deadline, self.lock_timeout):
            con = open_duckdb(self.path, not write, deadline, self.lock_timeout)
            try:
                yield con
            except duckdb.Error as exc:
                if is_disk_full(exc):
                    raise disk_full(self.path, exc, "writing") from None
                if is_damage(exc):
                    raise damaged(self.path, exc) from None
                raise
            finally:
                with suppress(duckdb.Error):
                    con.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of one read-only query as dicts; any error reading the file is a StorageError (exit 5)."""
        import duckdb

        with self.connect(write=False) as con:
            try:
                cur = con.execute(sql, list(params))
                cols = [d[0] for d in cur.description]
                return [dict(zip(cols, row)) for row in cur.fetchall()]
            except duckdb.Error as exc:
                if is_programming_error(exc):
                    raise
                raise damaged(self.path, exc) from None

    def cached(self, keys: Iterable[str]) -> dict[str, CachedResult]:
        keys = list(keys)
        if not keys:
            return {}
        gens = self.query("SELECT cache_key, output, error FROM generations WHERE cache_key IN (SELECT unnest(?))", [keys])
        scores = self.query("SELECT cache_key, metric, value, reason, scorer, scorer_version FROM scores "
                            "WHERE cache_key IN (SELECT unnest(?))", [keys])
        by_key: dict[str, list[ScoreRow]] = {}
        for row in scores:
            by_key.setdefault(row["cache_key"], []).append(ScoreRow(**row))
        return {g["cache_key"]: CachedResult(g["output"], g["error"], tuple(by_key.get(g["cache_key"], ()))) for g in gens}

    @contextmanager
    def run(self, info: RunInfo, *, ranks: bool = False) -> Iterator[RunWriter]:
        """A run's writer. ``ranks``: one run shared by every rank of an ``accelerate launch`` /
        ``torchrun`` job (call it on every rank; see ``RunWriter``); without a launcher it changes nothing."""
        writer = RunWriter(self, info, ranks=ranks)
        writer.start()
        try:
            yield writer
        except BaseException:
            # Keep what was produced (every buffered row is whole) and mark the run failed; a failure to
            # (the disk is still full) must not hide the error that stopped the run.
            with suppress(Exception):
                writer.finish("failed")
            raise
        writer.finish(writer.final_status)


class RunWriter:
    """Buffers one run's rows and moves them into the database shard by shard.

    With ``ranks`` under a launcher (``WORLD_SIZE`` > 1) the run is one run of every rank: the run id
    is the main process's; each rank writes its own shards (``<run>-r<rank>-<n>``); only the main
    process opens DuckDB (its own shards carry the run row and are moved in as they are written); the
    other ranks' shards are moved in by the main process at ``sync()`` (or, if a rank was killed, by
    the next process that opens the store: shards are the durable record).
    """

    def __init__(self, store: Store, info: RunInfo, ranks: bool = False) -> None:
        from harness.util import distributed

        self.store = store
        self.info = info
        self.run_id = info.run_id or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        #: one run written by every rank of a launched job (see the class docstring)
        self.ranks = bool(ranks) and distributed.is_distributed()
        self.rank = distributed.rank() if self.ranks else 0
        #: this process opens DuckDB and ingests (always, but for the non-main ranks of a launched job)
        self.lead = self.rank == 0
        self._unsynced: list[str] = []  # this rank's shards the main process has not been told of
        if self.ranks:
            self.run_id = distributed.broadcast(self.run_id)
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._n_shards = 0
        self._seq: dict[str, int] = {}
        self.n_expected = 0
        self._run_row: dict[str, Any] = {}
        #: status recorded when the run ends without an exception ("stopped": ended early on purpose)
        self.final_status = "complete"

    def start(self) -> None:
        from harness.util.provenance import provenance

        if not self.lead:
            return  # the main process opens the store and writes the run row
        # Check the database against its shards before this run's first shard exists (so that shard is not
        # mistaken for one a killed writer left behind).
        self.store._prepare(deadline_after(self.store.lock_timeout))
        prov = provenance()
        self._run_row = {
            "run_id": self.run_id, "kind": self.info.kind, "command": self.info.command, "seed": self.info.seed,
            "config": json.dumps(dict(self.info.config), default=str), "git_commit": prov["git_commit"],
            "git_dirty": prov["git_dirty"], "packages": json.dumps(prov["packages"]),
            "device": self.info.device_or(prov["device"]), "python": prov["python"],
            "started_at": self.info.started_at or _now(), "finished_at": None, "status": "running", "pid": os.getpid(),
            "host": socket.gethostname(), "n_expected": None,
        }
        self.flush(force=True)

    def update_config(self, **values: Any) -> None:
        """Add ``values`` to the run's stored config (written with the run row at the next flush): what the run
        decided at its end, such as a sweep's per-scale gate verdicts."""
        if not self.lead or not self._run_row:
            return
        config = json.loads(self._run_row["config"])
        config.update(values)
        self._run_row["config"] = json.dumps(config, default=str)

    def expect(self, n: int) -> None:
        """Declare ``n`` more results this run must hold (scored or errored) to be complete."""
        self.n_expected += n

    def _add(self, rows: Iterable[Any]) -> None:
        for r in rows:
            table, owned, sequenced = _TABLES[type(r)]
            d = {_COLUMN_RENAMES.get(k, k): v for k, v in asdict(r).items()}
            if owned:
                d = {"run_id": self.run_id, **d}
            if sequenced:
                self._seq[table] = self._seq.get(table, 0) + 1
                d["seq"] = self._seq[table]
            self._rows.setdefault(table, []).append(d)
            if table == "generations":
                self._rows.setdefault("run_results", []).append({"run_id": self.run_id, "cache_key": d["cache_key"]})

    def add_base_model(self, row: BaseModelRow) -> None:
        self._add([row])

    def add_adapter(self, row: AdapterRow) -> None:
        self._add([row])

    def add_suite(self, row: SuiteRow) -> None:
        self._add([row])

    def add_examples(self, rows: Iterable[ExampleRow]) -> None:
        self._add(rows)

    def add_generations(self, rows: Iterable[GenerationRow]) -> None:
        self._add(rows)

    def add_scores(self, rows: Iterable[ScoreRow]) -> None:
        self._add(rows)

    def add_step_logs(self, rows: Iterable[StepLogRow]) -> None:
        self._add(rows)

    def add_findings(self, rows: Iterable[FindingRow]) -> None:
        self._add(rows)

    def add_gate_results(self, rows: Iterable[GateRow]) -> None:
        self._add(rows)

    def use_cached(self, keys: Iterable[str]) -> None:
        self._rows.setdefault("run_results", []).extend({"run_id": self.run_id, "cache_key": k} for k in keys)

    def flush(self, force: bool = False) -> Path | None:
        """Write buffered rows to a shard (tmp, fsync, rename), then ingest it in one transaction.

        Every shard carries the run's row (status, expected count), so the database always knows how
        far a run got, even one killed before it finished.
        """
        if not self._rows and (not force or not self.lead):
            return None
        self._n_shards += 1
        if not self.lead:
            # another rank of a launched job: its rows only (the run row is the main process's); the main
            # process moves the shard in at sync(), or the next open of the store does
            name = f"{self.run_id}-r{self.rank}-{self._n_shards:05d}"
            shard = write_shard(self.store.shard_dir, name, self.run_id, self._rows)
            self._rows = {}
            self._unsynced.append(shard.name)
            return shard
        tables = {"runs": [dict(self._run_row, n_expected=self.n_expected or None)], **self._rows}
        name = f"{self.run_id}-r0-{self._n_shards:05d}" if self.ranks else f"{self.run_id}-{self._n_shards:05d}"
        shard = write_shard(self.store.shard_dir, name, self.run_id, tables)
        # The shard is durable now: if the ingest fails, the next open moves it in (the rows are not kept twice).
        self._rows = {}
        with self.store.connect(write=True) as con:
            ingest(con, shard, self.store.path)
        return shard

    def sync(self) -> None:
        """Every rank (collective): flush, then the main process moves in the other ranks' shards, so the
        store holds every row written so far. Nothing without ``ranks`` under a launcher."""
        if not self.ranks:
            return
        from harness.util import distributed

        self.flush()
        names = distributed.gather(self._unsynced)
        self._unsynced = []
        if self.lead and names:
            shards = [self.store.shard_dir / n for per_rank in names for n in per_rank]
            unseen = [s.name for s in shards if not s.is_dir()]
            if unseen:
                raise StorageError(
                    f"{len(unseen)} shard(s) the other ranks wrote are not in {self.store.shard_dir} here (first: "
                    f"{unseen[0]}): on several nodes the results DB (--db) must be on a filesystem every node shares; "
                    "the shards stay on the nodes that wrote them (copy them into that directory, and the next "
                    "harness command moves them in)")
            if shards:
                with self.store.connect(write=True) as con:
                    for shard in shards:
                        ingest(con, shard, self.store.path)  # once: a shard already moved in is skipped
        distributed.barrier()

    def finish(self, status: str) -> None:
        self._run_row.update(status=status, finished_at=_now())
        self.flush(force=True)  # another rank: its last rows, if any (a failed run's stay as shards)
