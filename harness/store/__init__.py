"""The results store: one DuckDB file, written through per-run shard files under a file lock.

DuckDB lets one process hold the file at a time (a read-only open conflicts with a writer), so every
connection here is short-lived and taken under ``<db>.lock`` (exclusive for writers, shared for
readers, who open DuckDB read-only); a process that finds it busy waits, up to one deadline for both
locks, and then names the holder. A run buffers rows, writes them to a shard directory (one JSONL file
per table plus a manifest of counts and SHA-256s, temporary name, fsync, rename) and ingests the shard
in one transaction; a shard is recorded in ``ingested_shards`` in that same transaction, so it is
moved in exactly once.

The shards are the durable record. The first open of a store compares the shards on disk with
``ingested_shards`` (names and row counts) and moves in every shard the database does not hold (a
writer killed before its ingest, a WAL cut short), after a full read of the file proves it is not
damaged: nothing is ever written into a damaged file. ``harness db rebuild`` recreates the database
from the shards (swapping it in only when it holds every row the old one did), ``harness db check``
reads every row and compares with the shards, ``harness db quarantine-wal`` moves a damaged WAL aside.

Schema: ``schema.sql`` is the current schema, for reading; the numbered files in ``migrations/``
build it. A database written by a newer harness (higher migration number) is refused, never altered.

    import duckdb
    duckdb.connect("harness.duckdb", read_only=True).sql(
        "SELECT adapter_name, scale, suite_name, metric, avg(value) FROM v_scores GROUP BY ALL")
"""

from harness.store.database import RunWriter, Store, default_db_path
from harness.store.migrate import SCHEMA, SCHEMA_VERSION, migrations
from harness.store.queries import run_status
from harness.store.rebuild import RebuildReport, check, quarantine_wal, rebuild
from harness.store.rows import (
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
    cache_key,
)
from harness.store.shards import ShardError, ShardManifest, read_manifest, verify_shard, write_shard

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "AdapterRow", "BaseModelRow", "CachedResult", "ExampleRow", "FindingRow", "GateRow",
    "GenerationRow", "RebuildReport", "RunInfo", "RunWriter", "ScoreRow", "ShardError", "ShardManifest",
    "StepLogRow", "Store", "SuiteRow", "cache_key", "check", "default_db_path", "migrations", "quarantine_wal",
    "read_manifest", "rebuild", "run_status", "verify_shard", "write_shard",
]
