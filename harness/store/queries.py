"""The named read queries the commands use, each returning typed rows (``store.queries.<name>(...)``).

The SQL of the commands lives here, not in ``harness/commands/``: a command asks for "the runs,
newest first" or "this adapter against its parent" and gets rows with named, typed fields. Every
query goes through ``Store.query`` (a short read-only connection under the store's shared lock), so
a damaged or locked file is a StorageError here as anywhere. ``harness sql`` (the user's own
read-only query) is the one command that runs SQL it did not name.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class _Querier(Protocol):
    """What the queries need of a store (``Store.query``); typed structurally so this file need not import
    the Store that builds on it."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class RunState:
    """One row of ``v_runs``: a run with its completeness.

    ``status`` is the status for people: a 'running' run whose process is gone reads 'interrupted'
    (``run_status``). ``incomplete`` is None when the run declared no expected count
    (a training run).
    """

    run_id: str
    kind: str | None
    status: str
    command: str | None
    started_at: datetime | None
    finished_at: datetime | None
    pid: int | None
    host: str | None
    n_expected: int | None
    n_results: int
    n_errors: int
    incomplete: bool | None


@dataclass(frozen=True)
class AdapterRef:
    adapter_id: str
    name: str | None


@dataclass(frozen=True)
class AdapterLineage:
    """An adapter and its parent (a continued fine-tune), with the parent's name where the store has it."""

    adapter_id: str
    name: str | None
    parent_adapter_id: str | None
    parent_name: str | None


@dataclass(frozen=True)
class RunAdapter:
    """An adapter a run evaluated (it has generations in the run) or trained (step logs or findings)."""

    run_id: str
    adapter_id: str
    name: str | None
    parent_adapter_id: str | None
    parent_name: str | None


@dataclass(frozen=True)
class SuiteSummaryRow:
    """One row of ``v_suite_summary``: a metric's mean per run × model (adapter, scale) × suite."""

    run_id: str
    base_model_name: str | None
    adapter_id: str | None
    adapter_name: str | None
    scale: float
    suite_name: str | None
    metric: str
    n: int
    n_scored: int
    mean: float | None
    n_truncated: int


@dataclass(frozen=True)
class VsBaseRow:
    """An adapter at one scale against its base on one suite and metric, paired on the same examples."""

    run_id: str
    adapter_id: str
    adapter_name: str | None
    scale: float
    suite_name: str | None
    metric: str
    n_pairs: int
    adapter_mean: float | None
    base_mean: float | None
    mean_delta: float | None


@dataclass(frozen=True)
class VsParentRow:
    """A continued adapter against its parent: same run, same scale, paired on the same examples."""

    run_id: str
    adapter_id: str
    child_name: str | None
    parent_name: str | None
    scale: float
    suite_name: str | None
    metric: str
    n_pairs: int
    child_mean: float | None
    parent_mean: float | None
    mean_delta: float | None


@dataclass(frozen=True)
class DbCounts:
    schema_version: int | None
    runs: int
    generations: int
    scores: int
    shards: int


# The parent as the adapters table records it, else as the adapter's harness.json does (a row written
# before the parent column was read from harness.json's parent_adapter).
_PARENT = "coalesce(a.parent_adapter_id, json_extract_string(a.harness, '$.parent_adapter.adapter_id'))"

_RUN_COLUMNS = ("run_id, kind, status, command, started_at, finished_at, pid, host, n_expected, n_results, n_errors, "
                "incomplete")


class Queries:
    """The read queries of one store (``Store.queries``)."""

    def __init__(self, store: _Querier) -> None:
        self._store = store

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._store.query(sql, params)

    def ping(self) -> None:
        """Open the database once: a damaged or locked file is a StorageError (exit 5) now, before any model work."""
        self._rows("SELECT 1")

    # -- runs ----------------------------------------------------------------------------------------

    def newest_run_id(self, kinds: Iterable[str] = ("eval", "demo")) -> str | None:
        """The newest run (by start) of one of these kinds, or None."""
        rows = self._rows("SELECT run_id FROM runs WHERE kind IN (SELECT unnest(?)) ORDER BY started_at DESC LIMIT 1",
                          [list(kinds)])
        return rows[0]["run_id"] if rows else None

    def has_run(self, run_id: str) -> bool:
        return bool(self._rows("SELECT 1 FROM runs WHERE run_id = ?", [run_id]))

    def runs(self, limit: int | None = None) -> list[RunState]:
        """Every run (at most ``limit``), newest start first."""
        rows = self._rows(f"SELECT {_RUN_COLUMNS} FROM v_runs ORDER BY started_at DESC, run_id DESC"
                          + (" LIMIT ?" if limit is not None else ""), [limit] if limit is not None else [])
        return [_run_state(r) for r in rows]

    def run(self, run_id: str) -> RunState | None:
        rows = self._rows(f"SELECT {_RUN_COLUMNS} FROM v_runs WHERE run_id = ?", [run_id])
        return _run_state(rows[0]) if rows else None

    def run_adapters(self, run_ids: Sequence[str]) -> list[RunAdapter]:
        """The adapters each run evaluated or trained, with their parents; ordered by run, then adapter id
        (``harness.util.lineage.parents_first`` orders them for people)."""
        rows = self._rows(
            f"""
            WITH used AS (
                SELECT DISTINCT rr.run_id, g.adapter_id FROM run_results rr JOIN generations g USING (cache_key)
                WHERE rr.run_id IN (SELECT unnest(?)) AND g.adapter_id IS NOT NULL
                UNION SELECT run_id, adapter_id FROM step_logs WHERE run_id IN (SELECT unnest(?)) AND adapter_id IS NOT NULL
                UNION SELECT run_id, adapter_id FROM findings WHERE run_id IN (SELECT unnest(?)) AND adapter_id IS NOT NULL
            )
            SELECT u.run_id, u.adapter_id, a.name, {_PARENT} AS parent_adapter_id, p.name AS parent_name
            FROM used u
            LEFT JOIN adapters a ON a.adapter_id = u.adapter_id
            LEFT JOIN adapters p ON p.adapter_id = {_PARENT}
            ORDER BY u.run_id, u.adapter_id
            """, [list(run_ids)] * 3)
        return [RunAdapter(**r) for r in rows]

    def newest_sweep_run_id(self, adapter_id: str) -> str | None:
        """The newest run (by start) that evaluated this adapter at two or more non-zero scales, or None."""
        rows = self._rows(
            "SELECT rr.run_id, max(r.started_at) AS t FROM run_results rr JOIN generations g USING (cache_key) "
            "JOIN runs r ON r.run_id = rr.run_id WHERE g.adapter_id = ? AND g.scale > 0 GROUP BY rr.run_id "
            "HAVING count(DISTINCT g.scale) >= 2 ORDER BY t DESC, rr.run_id DESC LIMIT 1", [adapter_id])
        return rows[0]["run_id"] if rows else None

    def run_config(self, run_id: str) -> dict[str, Any]:
        """The ``config`` a run was stored with (its flags and settings), as a dict; {} when it has none."""
        rows = self._rows("SELECT config FROM runs WHERE run_id = ?", [run_id])
        raw = rows[0]["config"] if rows else None
        return dict(json.loads(raw)) if isinstance(raw, str) else dict(raw or {})

    def suite_summary(self, run_id: str) -> list[SuiteSummaryRow]:
        rows = self._rows(
            "SELECT run_id, base_model_name, adapter_id, adapter_name, scale, suite_name, metric, n, n_scored, mean, "
            "n_truncated FROM v_suite_summary WHERE run_id = ? ORDER BY suite_name, metric, adapter_name, scale", [run_id])
        return [SuiteSummaryRow(**r) for r in rows]

    # -- adapters ------------------------------------------------------------------------------------

    def find_adapters(self, ident: str) -> list[AdapterRef]:
        """Adapters whose id starts with ``ident`` or whose stored name is ``ident``."""
        rows = self._rows("SELECT DISTINCT adapter_id, name FROM adapters WHERE starts_with(adapter_id, ?) OR name = ? "
                          "ORDER BY adapter_id", [ident, ident])
        return [AdapterRef(**r) for r in rows]

    def lineage(self, adapter_ids: Sequence[str] | None = None) -> list[AdapterLineage]:
        """Adapters with their parents (every adapter the store holds, or these)."""
        where = "" if adapter_ids is None else "WHERE a.adapter_id IN (SELECT unnest(?))"
        rows = self._rows(
            f"SELECT a.adapter_id, a.name, {_PARENT} AS parent_adapter_id, p.name AS parent_name FROM adapters a "
            f"LEFT JOIN adapters p ON p.adapter_id = {_PARENT} {where} ORDER BY a.adapter_id",
            [] if adapter_ids is None else [list(adapter_ids)])
        return [AdapterLineage(**r) for r in rows]

    def adapter_vs_base(self, adapter_ids: Sequence[str]) -> list[VsBaseRow]:
        rows = self._rows(
            "SELECT run_id, adapter_id, adapter_name, scale, suite_name, metric, n_pairs, adapter_mean, base_mean, "
            "mean_delta FROM v_adapter_vs_base WHERE adapter_id IN (SELECT unnest(?)) "
            "ORDER BY run_id, suite_name, metric, scale, adapter_id", [list(adapter_ids)])
        return [VsBaseRow(**r) for r in rows]

    def child_vs_parent(self, adapter_ids: Sequence[str]) -> list[VsParentRow]:
        """These adapters against their parents, where both were evaluated in one run at one scale."""
        rows = self._rows(
            f"""
            SELECT c.run_id, c.adapter_id, c.adapter_name AS child_name, p.adapter_name AS parent_name, c.scale,
                   c.suite_name, c.metric,
                   count(*) FILTER (WHERE c.value IS NOT NULL AND p.value IS NOT NULL) AS n_pairs,
                   avg(c.value) FILTER (WHERE p.value IS NOT NULL) AS child_mean,
                   avg(p.value) FILTER (WHERE c.value IS NOT NULL) AS parent_mean,
                   avg(c.value - p.value) AS mean_delta
            FROM v_scores c
            JOIN adapters a ON a.adapter_id = c.adapter_id
            JOIN v_scores p ON p.run_id = c.run_id AND p.adapter_id = {_PARENT} AND p.scale = c.scale
                           AND p.suite_name = c.suite_name AND p.example_id = c.example_id AND p.metric = c.metric
            WHERE c.adapter_id IN (SELECT unnest(?))
            GROUP BY ALL ORDER BY c.run_id, c.suite_name, c.metric, c.scale, c.adapter_id
            """, [list(adapter_ids)])
        return [VsParentRow(**r) for r in rows]

    # -- the database --------------------------------------------------------------------------------

    def counts(self) -> DbCounts:
        """Schema version and row counts (``harness db info``)."""
        [row] = self._rows(
            "SELECT (SELECT max(version) FROM schema_migrations) AS schema_version, (SELECT count(*) FROM runs) AS runs, "
            "(SELECT count(*) FROM generations) AS generations, (SELECT count(*) FROM scores) AS scores, "
            "(SELECT count(*) FROM ingested_shards) AS shards")
        return DbCounts(**row)


def _run_state(row: dict[str, Any]) -> RunState:

    return RunState(**{**row, "status": run_status(row)})

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
