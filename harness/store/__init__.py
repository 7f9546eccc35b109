"""The results store: one DuckDB file, written through per-run shard files under a file lock.

DuckDB lets one process hold the file at a time (even a read-only open conflicts), so every
connection here is short-lived and taken under ``<db>.lock``; a process that finds it busy waits, up
to a timeout, and then names the holder. A run buffers rows, writes them to a shard directory (one
JSONL file per table, temporary name, fsync, rename) and ingests the shard in one transaction; a
shard is recorded in ``ingested_shards`` in that same transaction, so it is moved in exactly once.
The shards are the durable record: a shard whose writer was killed before its ingest is picked up by
the next process that opens the database, and ``harness db rebuild`` recreates the database from them.

Schema: ``schema.sql`` is the current schema, for reading; the numbered files in ``migrations/``
build it. A database written by a newer harness (higher migration number) is refused, never altered.

    import duckdb
    duckdb.connect("harness.duckdb").sql(
        "SELECT adapter_name, scale, suite_name, metric, avg(value) FROM v_scores GROUP BY ALL")
"""

from __future__ import annotations

import json
import socket
import sys
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import IncompatibleError, StorageError

SCHEMA = Path(__file__).with_name("schema.sql")
MIGRATIONS = Path(__file__).with_name("migrations")


def migrations() -> list[tuple[int, Path]]:
    """(version, file) of every migration, in order."""
    out = []
    for f in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        out.append((int(f.name[:4]), f))
    return out


SCHEMA_VERSION = migrations()[-1][0]


def default_db_path() -> Path:
    return Path(os.environ.get("HARNESS_DB") or "harness.duckdb")


def cache_key(**parts: Any) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (sorted keys): the identity of one result."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class RunInfo:
    kind: str
    command: str
    seed: int | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None


@dataclass(frozen=True)
class BaseModelRow:
    base_model_id: str
    name: str
    path: str


@dataclass(frozen=True)
class AdapterRow:
    adapter_id: str
    base_model_id: str
    path: str
    config_json: str
    parent_adapter_id: str | None = None
    harness_json: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class SuiteRow:
    suite_id: str
    name: str
    version: str
    path: str
    n_examples: int


@dataclass(frozen=True)
class ExampleRow:
    suite_id: str
    example_id: str
    input: str
    target: str | None
    category: str | None


@dataclass(frozen=True)
class GenerationRow:
    cache_key: str
    base_model_id: str
    adapter_id: str | None
    scale: float
    suite_id: str
    example_id: str
    prompt: str
    output: str | None
    settings_json: str
    n_prompt_tokens: int | None
    n_new_tokens: int | None
    error: str | None
    seconds: float | None


@dataclass(frozen=True)
class ScoreRow:
    cache_key: str
    metric: str
    value: float | None
    reason: str | None
    scorer: str
    scorer_version: str

    def __post_init__(self) -> None:
        if self.value is not None and not math.isfinite(self.value):
            object.__setattr__(self, "reason", self.reason or f"non-finite value {self.value!r}")
            object.__setattr__(self, "value", None)


@dataclass(frozen=True)
class StepLogRow:
    adapter_id: str | None
    step: int
    epoch: float | None
    loss: float | None
    grad_norm: float | None
    learning_rate: float | None
    eval_loss: float | None


@dataclass(frozen=True)
class FindingRow:
    adapter_id: str | None
    kind: str
    severity: str
    step: int | None
    message: str


@dataclass(frozen=True)
class GateRow:
    gate: str
    metric: str
    observed: float | None
    threshold: float | None
    baseline: float | None
    passed: bool
    message: str


@dataclass(frozen=True)
class CachedResult:
    output: str | None
    error: str | None
    scores: tuple[ScoreRow, ...]


# row type -> (table, owned by a run: the run_id column is added, sequenced: a per-run seq is added)
_TABLES: dict[type, tuple[str, bool, bool]] = {
    BaseModelRow: ("base_models", False, False),
    AdapterRow: ("adapters", False, False),
    SuiteRow: ("suites", False, False),
    ExampleRow: ("examples", False, False),
    GenerationRow: ("generations", True, False),
    ScoreRow: ("scores", False, False),
    StepLogRow: ("step_logs", True, True),
    FindingRow: ("findings", True, True),
    GateRow: ("gate_results", True, True),
}
_COLUMN_RENAMES = {"config_json": "config", "harness_json": "harness", "settings_json": "settings"}
_SHARD_SUFFIX = ".shard"


def _now() -> str:
    # Naive UTC, a format DuckDB's JSON reader parses as TIMESTAMP.
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Store:
    """Access to one results database; connections are short-lived and taken under a file lock."""

    def __init__(self, path: str | Path, lock_timeout: float = 120.0, shard_dir: Path | None = None) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.shard_dir = shard_dir or self.path.with_name(self.path.name + ".shards")
        self._ready = False

    # -- connections ---------------------------------------------------------------------------------

    @property
    def _owner_file(self) -> Path:
        return self.path.with_name(self.path.name + ".lock.owner")

    def _holder(self) -> str:
        try:
            o = json.loads(self._owner_file.read_text())
            return f"PID {o['pid']} on {o['host']} ({o['command'][:80]}) since {o['since']}"
        except (OSError, ValueError, KeyError):
            return "another harness process"

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A connection under the store's lock: migrated to the current schema, leftover shards ingested."""
        import time

        import duckdb
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock")
        deadline = time.monotonic() + self.lock_timeout
        try:
            lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            raise StorageError(
                f"results DB {self.path} locked by {self._holder()} for over {self.lock_timeout:.0f}s; "
                "wait for it to finish or pass --db another.duckdb"
            ) from None
        try:
            try:
                self._owner_file.write_text(json.dumps({
                    "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv), "since": _now(),
                }))
            except OSError:
                pass
            while True:
                try:
                    con = duckdb.connect(str(self.path))
                    break
                except duckdb.IOException as exc:
                    if "lock" not in str(exc).lower():
                        raise self._damaged(exc) from None
                    # Another program (a `duckdb` shell, a notebook) holds DuckDB's own lock: wait for it too.
                    if time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    raise StorageError(f"results DB {self.path} is held open by another program "
                                       f"({str(exc).splitlines()[0]}); close it or pass --db another.duckdb") from None
                except duckdb.Error as exc:
                    raise self._damaged(exc) from None
            try:
                if not self._ready:
                    try:
                        _migrate(con, self.path)
                    except duckdb.IOException as exc:
                        raise self._damaged(exc) from None
                    _recover_shards(con, self.shard_dir)
                    self._ready = True
                yield con
            finally:
                con.close()
        finally:
            lock.release()

    def _damaged(self, exc: Exception) -> StorageError:
        return StorageError(
            f"results DB {self.path} cannot be read ({str(exc).splitlines()[0]}): the file is damaged or not a DuckDB "
            f"database; nothing was changed. `harness db rebuild --db {self.path}` recreates it from its shards and "
            "keeps this file beside it as .bak-<time>"
        )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.connect() as con:
            cur = con.execute(sql, list(params))
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def cached(self, keys: Iterable[str]) -> dict[str, CachedResult]:
        keys = list(keys)
        if not keys:
            return {}
        with self.connect() as con:
            con.execute("CREATE OR REPLACE TEMP TABLE _want (k VARCHAR)")
            con.executemany("INSERT INTO _want VALUES (?)", [(k,) for k in keys])
            gens = con.execute(
                "SELECT cache_key, output, error FROM generations JOIN _want ON k = cache_key"
            ).fetchall()
            scores = con.execute(
                "SELECT cache_key, metric, value, reason, scorer, scorer_version FROM scores JOIN _want ON k = cache_key"
            ).fetchall()
        by_key: dict[str, list[ScoreRow]] = {}
        for row in scores:
            by_key.setdefault(row[0], []).append(ScoreRow(*row))
        return {k: CachedResult(out, err, tuple(by_key.get(k, ()))) for k, out, err in gens}

    @contextmanager
    def run(self, info: RunInfo) -> Iterator[RunWriter]:
        writer = RunWriter(self, info)
        writer.start()
        try:
            yield writer
        except BaseException:
            # Keep what was produced (every buffered row is whole) and mark the run failed.
            writer.finish("failed")
            raise
        writer.finish(writer.final_status)


def _migrate(con: Any, path: Path) -> None:
    """Bring the database to SCHEMA_VERSION, one transaction per migration; refuse a newer one."""
    import duckdb

    has_table = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_migrations' AND schema_name = 'main'"
    ).fetchone()[0]
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0] if has_table else 0
    if current > SCHEMA_VERSION:
        raise IncompatibleError(
            f"results DB {path} has schema v{current} > supported v{SCHEMA_VERSION}: it was written by a newer "
            "adapter-harness; upgrade the harness (pip install -U adapter-harness) or pass --db another.duckdb"
        )
    for version, file in migrations():
        if version <= current:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(file.read_text(encoding="utf-8"))
            con.execute("INSERT INTO schema_migrations (version) VALUES (?)", [version])
            con.execute("COMMIT")
        except duckdb.Error as exc:
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
            if isinstance(exc, duckdb.IOException):
                raise  # an unreadable file, not a failed migration: the caller names the damage
            raise StorageError(f"migrating results DB {path} to schema v{version} failed, nothing changed: {exc}") from None


def _pending_shards(shard_dir: Path) -> list[Path]:
    if not shard_dir.is_dir():
        return []
    return sorted(p for p in shard_dir.iterdir() if p.name.endswith(_SHARD_SUFFIX) and p.is_dir())


def _recover_shards(con: Any, shard_dir: Path) -> int:
    """Ingest complete shards whose writer died before ingesting them (a killed run)."""
    shards = _pending_shards(shard_dir)
    if not shards:
        return 0
    done = {r[0] for r in con.execute("SELECT shard FROM ingested_shards").fetchall()}
    n = 0
    for shard in shards:
        if shard.name not in done:
            n += _ingest(con, shard)
    return n


class RunWriter:
    """Buffers one run's rows and moves them into the database shard by shard."""

    def __init__(self, store: Store, info: RunInfo) -> None:
        self.store = store
        self.info = info
        self.run_id = info.run_id or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._n_shards = 0
        self._seq: dict[str, int] = {}
        self.n_expected = 0
        self._run_row: dict[str, Any] = {}
        #: status recorded when the run ends without an exception ("stopped": ended early on purpose)
        self.final_status = "complete"

    def start(self) -> None:
        from harness.provenance import provenance

        prov = provenance()
        self._run_row = {
            "run_id": self.run_id, "kind": self.info.kind, "command": self.info.command, "seed": self.info.seed,
            "config": json.dumps(dict(self.info.config), default=str), "git_commit": prov["git_commit"],
            "git_dirty": prov["git_dirty"], "packages": json.dumps(prov["packages"]),
            "device": self.info.config.get("device", prov["device"]), "python": prov["python"],
            "started_at": _now(), "finished_at": None, "status": "running", "pid": os.getpid(),
            "host": socket.gethostname(), "n_expected": None,
        }
        self.flush(force=True)

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
        if not self._rows and not force:
            return None
        self._n_shards += 1
        tables = {"runs": [dict(self._run_row, n_expected=self.n_expected or None)], **self._rows}
        shard = write_shard(self.store.shard_dir, f"{self.run_id}-{self._n_shards:05d}", self.run_id, tables)
        with self.store.connect() as con:
            _ingest(con, shard)
        self._rows = {}
        return shard

    def finish(self, status: str) -> None:
        self._run_row.update(status=status, finished_at=_now())
        self.flush(force=True)


def write_shard(shard_dir: Path, name: str, run_id: str, tables: Mapping[str, list[dict[str, Any]]]) -> Path:
    """Write one shard directory atomically: files under a temporary name, fsync'd, then one rename."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    final = shard_dir / (name + _SHARD_SUFFIX)
    tmp = shard_dir / (name + _SHARD_SUFFIX + ".tmp")
    tmp.mkdir(exist_ok=True)
    manifest = {"run_id": run_id, "tables": {}}
    for table, rows in tables.items():
        if not rows:
            continue
        with open(tmp / f"{table}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, default=str, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        manifest["tables"][table] = len(rows)
    with open(tmp / "MANIFEST.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(shard_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


_COLUMN_CACHE: dict[str, list[tuple[str, str]]] = {}


def _columns(con: Any, table: str) -> list[tuple[str, str]]:
    if table not in _COLUMN_CACHE:
        rows = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? AND schema_name = 'main' "
            "ORDER BY column_index", [table]
        ).fetchall()
        if not rows:
            raise StorageError(f"unknown table {table!r} in a shard; is the harness older than the shard's writer?")
        _COLUMN_CACHE[table] = [(c, "VARCHAR" if t == "JSON" else t) for c, t in rows]
    return _COLUMN_CACHE[table]


def _ingest(con: Any, shard: Path) -> int:
    """Move one shard's rows into the database in a single transaction (once: shards are recorded)."""
    import duckdb

    if con.execute("SELECT 1 FROM ingested_shards WHERE shard = ?", [shard.name]).fetchone():
        return 0
    try:
        manifest = json.loads((shard / "MANIFEST.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StorageError(f"shard {shard} is unreadable ({exc}); move it aside and rerun") from None
    n_rows = 0
    con.execute("BEGIN TRANSACTION")
    try:
        for table, n in manifest["tables"].items():
            cols = _columns(con, table)
            names = ", ".join(c for c, _ in cols)
            spec = "{" + ", ".join(f"{_sql_str(c)}: {_sql_str(t)}" for c, t in cols) + "}"
            # Run rows carry the latest status; everything else is keyed and never duplicated.
            verb = "INSERT OR REPLACE" if table == "runs" else "INSERT OR IGNORE"
            con.execute(
                f"{verb} INTO {table} ({names}) SELECT {names} FROM read_json({_sql_str(str(shard / (table + '.jsonl')))}, "
                f"format = 'newline_delimited', columns = {spec})"
            )
            n_rows += n
        con.execute("INSERT INTO ingested_shards VALUES (?, ?, ?, ?)", [shard.name, manifest["run_id"], n_rows, _now()])
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise StorageError(f"ingest of shard {shard} failed, nothing from it was stored: {str(exc).splitlines()[0]}") from None
    return n_rows




def rebuild(db_path: Path, shard_dir: Path | None = None) -> tuple[int, Path | None]:
    """Recreate the database from its shards. The old file is moved aside, never deleted.

    Returns (number of shards ingested, where the old database went).
    """
    store = Store(db_path, shard_dir=shard_dir)
    shards = _pending_shards(store.shard_dir)
    if not shards:
        raise StorageError(f"no shards in {store.shard_dir}: nothing to rebuild {db_path} from")
    from filelock import FileLock

    with FileLock(str(db_path) + ".lock", timeout=store.lock_timeout):
        moved = None
        if db_path.exists():
            moved = db_path.with_name(db_path.name + ".bak-" + datetime.now().strftime("%Y%m%d-%H%M%S"))
            os.replace(db_path, moved)
            wal = db_path.with_name(db_path.name + ".wal")
            if wal.exists():
                os.replace(wal, moved.with_name(moved.name + ".wal"))
    with store.connect() as con:  # migrates the fresh file and ingests every shard
        n = con.execute("SELECT count(*) FROM ingested_shards").fetchone()[0]
    return n, moved


def run_status(row: Mapping[str, Any]) -> str:
    """A run's status for people: a 'running' run whose process is gone was interrupted."""
    status = row.get("status") or "unknown"
    if status == "running" and row.get("host") == socket.gethostname() and row.get("pid"):
        try:
            os.kill(int(row["pid"]), 0)
        except ProcessLookupError:
            return "interrupted"
        except PermissionError:
            pass
    return status


__all__ = [
    "AdapterRow", "BaseModelRow", "CachedResult", "ExampleRow", "FindingRow", "GateRow", "GenerationRow",
    "RunInfo", "RunWriter", "SCHEMA_VERSION", "ScoreRow", "StepLogRow", "Store", "SuiteRow", "cache_key",
    "default_db_path", "migrations", "rebuild", "run_status", "write_shard",
]
