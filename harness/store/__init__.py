"""The results store: one DuckDB file, written through per-run shard files under a file lock.

DuckDB lets one process hold the file at a time, so every connection here is short-lived and taken
under ``<db>.lock``. A run buffers rows, writes them to a shard (temporary name, fsync, rename) and
ingests the shard in one transaction; the shards are the durable record.

    import duckdb
    duckdb.connect("harness.duckdb").sql(
        "SELECT adapter_name, scale, suite_name, metric, avg(value) FROM v_scores GROUP BY ALL")
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import StorageError

SCHEMA = Path(__file__).with_name("schema.sql")


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


# table name -> (row type, columns in insert order); the run_id column is added for run-owned tables.
_TABLES: dict[type, tuple[str, bool]] = {
    BaseModelRow: ("base_models", False),
    AdapterRow: ("adapters", False),
    SuiteRow: ("suites", False),
    ExampleRow: ("examples", False),
    GenerationRow: ("generations", True),
    ScoreRow: ("scores", False),
    StepLogRow: ("step_logs", True),
    FindingRow: ("findings", True),
    GateRow: ("gate_results", True),
}
_COLUMN_RENAMES = {"config_json": "config", "harness_json": "harness", "settings_json": "settings"}
# Tables whose rows are content-addressed: a second copy of the same key is ignored, never duplicated.
_IGNORE_DUPLICATES = {"base_models", "adapters", "suites", "examples", "generations", "scores", "run_results"}


class Store:
    """Access to one results database; connections are short-lived and taken under a file lock."""

    def __init__(self, path: str | Path, lock_timeout: float = 60.0, shard_dir: Path | None = None) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.shard_dir = shard_dir or self.path.with_name(self.path.name + ".shards")
        self._ready = False

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[Any]:
        import duckdb
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock")
        try:
            lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            raise StorageError(
                f"results DB {self.path} locked by another harness process for over {self.lock_timeout:.0f}s; "
                "wait for it to finish or pass --db"
            ) from None
        try:
            try:
                con = duckdb.connect(str(self.path))
            except duckdb.Error as exc:
                raise StorageError(f"cannot open results DB {self.path}: {exc}") from None
            try:
                if not self._ready:
                    con.execute(SCHEMA.read_text())
                    con.execute("INSERT OR IGNORE INTO schema_migrations (version) VALUES (1)")
                    self._ready = True
                yield con
            finally:
                con.close()
        finally:
            lock.release()

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
            writer.finish("failed")
            raise
        writer.finish("complete")


class RunWriter:
    """Buffers one run's rows and moves them into the database shard by shard."""

    def __init__(self, store: Store, info: RunInfo) -> None:
        self.store = store
        self.info = info
        self.run_id = info.run_id or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        self._rows: list[tuple[str, dict[str, Any]]] = []
        self._n_shards = 0

    def start(self) -> None:
        from harness.provenance import provenance

        prov = provenance()
        with self.store.connect() as con:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 'running')",
                [self.run_id, self.info.kind, self.info.command, self.info.seed, json.dumps(dict(self.info.config), default=str),
                 prov["git_commit"], prov["git_dirty"], json.dumps(prov["packages"]),
                 self.info.config.get("device", prov["device"]), prov["python"], datetime.now(timezone.utc)],
            )

    def _add(self, rows: Iterable[Any]) -> None:
        for r in rows:
            table, owned = _TABLES[type(r)]
            d = {_COLUMN_RENAMES.get(k, k): v for k, v in asdict(r).items()}
            if owned:
                d = {"run_id": self.run_id, **d}
            self._rows.append((table, d))
            if table == "generations":
                self._rows.append(("run_results", {"run_id": self.run_id, "cache_key": d["cache_key"]}))

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
        self._rows.extend(("run_results", {"run_id": self.run_id, "cache_key": k}) for k in keys)

    def flush(self) -> None:
        """Write buffered rows to a shard file (tmp, fsync, rename), then ingest it in one transaction."""
        if not self._rows:
            return
        self.store.shard_dir.mkdir(parents=True, exist_ok=True)
        self._n_shards += 1
        shard = self.store.shard_dir / f"{self.run_id}-{self._n_shards:05d}.jsonl"
        tmp = shard.with_suffix(".jsonl.tmp")
        # JSONL: one line per row, readable and appendable; `harness db rebuild` replays them.
        with open(tmp, "w", encoding="utf-8") as f:
            for table, d in self._rows:
                f.write(json.dumps({"table": table, "row": d}, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, shard)
        ingest_shard(self.store, shard)
        self._rows = []

    def finish(self, status: str) -> None:
        if status == "complete":
            self.flush()
        with self.store.connect() as con:
            con.execute("UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?",
                        [status, datetime.now(timezone.utc), self.run_id])


def ingest_shard(store: Store, shard: Path) -> int:
    """Move one shard's rows into the database in a single transaction."""
    import duckdb

    by_table: dict[str, list[dict[str, Any]]] = {}
    with open(shard, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            by_table.setdefault(rec["table"], []).append(rec["row"])
    with store.connect() as con:
        con.execute("BEGIN TRANSACTION")
        try:
            for table, rows in by_table.items():
                cols = list(rows[0])
                verb = "INSERT OR IGNORE" if table in _IGNORE_DUPLICATES else "INSERT"
                con.executemany(
                    f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                    [[r[c] for c in cols] for r in rows],
                )
            con.execute("COMMIT")
        except duckdb.Error as exc:
            con.execute("ROLLBACK")
            raise StorageError(f"ingest of shard {shard} failed, nothing from it was stored: {exc}") from None
    return sum(len(v) for v in by_table.values())


__all__ = [
    "AdapterRow", "BaseModelRow", "CachedResult", "ExampleRow", "FindingRow", "GateRow", "GenerationRow",
    "RunInfo", "RunWriter", "ScoreRow", "StepLogRow", "Store", "SuiteRow", "cache_key", "default_db_path",
    "ingest_shard",
]
