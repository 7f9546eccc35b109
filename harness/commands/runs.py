"""`harness runs`: list the runs in a results database, with their completeness and adapter lineage."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from harness.commands._common import add_db_argument
from harness.store.queries import RunAdapter, RunState


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="list the runs stored in a results database",
        description=(
            "List runs (newest start first): kind, status, results present vs expected, errors, when it started, "
            "the adapters it evaluated or trained (each with its parent adapter, by name and short id, parents "
            "listed before their children), command. A run whose results do not add up to the expected count is "
            "marked incomplete; a run whose process is gone before it finished is shown as interrupted (rerun its "
            "command: finished results are reused)."
        ),
    )
    add_db_argument(p)
    p.add_argument("--limit", type=int, default=50, help="show at most N runs, the newest (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    from harness.analysis.summary import format_table
    from harness.commands._common import existing_store
    from harness.errors import UsageError
    from harness.util.lineage import parents_first

    if args.limit <= 0:
        raise UsageError(f"--limit {args.limit}: show at least 1 run")
    store = existing_store(args.db)
    runs = store.queries.runs(args.limit)
    adapters: dict[str, list[RunAdapter]] = {r.run_id: [] for r in runs}
    for a in store.queries.run_adapters([r.run_id for r in runs]):
        adapters[a.run_id].append(a)
    for run_id, used in adapters.items():
        by_id = {a.adapter_id: a for a in used}
        order = parents_first([a.adapter_id for a in used], {a.adapter_id: a.parent_adapter_id for a in used})
        adapters[run_id] = [by_id[i] for i in order]
    if args.json:
        print(json.dumps([_json(r, adapters[r.run_id]) for r in runs], indent=2))
        return 0
    if not runs:
        print(f"no runs in {store.path}")
        return 0
    table = [
        [r.run_id, r.kind or "?", r.status + (" (incomplete)" if r.incomplete and r.status != "running" else ""),
         _results(r), str(r.n_errors), str(r.started_at)[:19] if r.started_at else "?",
         ", ".join(_adapter(a) for a in adapters[r.run_id]) or "—", (r.command or "")[:60]]
        for r in runs
    ]
    print(format_table(["run", "kind", "status", "results", "errors", "started", "adapters (<- parent)", "command"], table))
    return 0


def _results(r: RunState) -> str:
    """present/expected; '?' while an evaluating run has not declared its count yet, '—' for a run that has none."""
    if r.n_expected is None:
        return "—" if r.kind == "train" and not r.n_results else f"{r.n_results}/?"
    return f"{r.n_results}/{r.n_expected}"


def _short(name: str | None, adapter_id: str) -> str:
    return f"{name or '?'} [{adapter_id[:8]}]"


def _adapter(a: RunAdapter) -> str:
    return _short(a.name, a.adapter_id) + (f" <- {_short(a.parent_name, a.parent_adapter_id)}" if a.parent_adapter_id else "")


def _json(r: RunState, used: list[RunAdapter]) -> dict[str, Any]:
    row = {k: (str(v) if k.endswith("_at") and v is not None else v) for k, v in asdict(r).items() if k not in ("host", "pid")}
    row["incomplete"] = bool(r.incomplete)  # NULL (no expected count, e.g. training) is not incomplete
    row["adapters"] = [{k: v for k, v in asdict(a).items() if k != "run_id"} for a in used]
    return row
