"""`harness runs`: list the runs in a results database, with their completeness."""

from __future__ import annotations

import argparse
import json

from harness.commands._common import add_db_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="list the runs stored in a results database",
        description=(
            "List runs (newest first): kind, status, results present vs expected, errors, command. A run whose "
            "results do not add up to the expected count is marked incomplete; a run whose process is gone "
            "before it finished is shown as interrupted (rerun its command: finished results are reused)."
        ),
    )
    add_db_argument(p)
    p.add_argument("--limit", type=int, default=50, help="show at most N runs (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    from harness.commands._common import existing_store
    from harness.store import run_status
    from harness.summary import format_table

    store = existing_store(args.db)
    path = store.path
    rows = store.query(
        "SELECT run_id, kind, status, host, pid, n_expected, n_results, n_errors, incomplete, started_at, finished_at, command "
        "FROM v_runs ORDER BY started_at DESC LIMIT ?", [args.limit]
    )
    for r in rows:
        r["status"] = run_status(r)
        r["incomplete"] = bool(r["incomplete"])  # NULL (no expected count, e.g. training) is not incomplete
    if args.json:
        print(json.dumps([{k: (str(v) if k.endswith("_at") and v is not None else v) for k, v in r.items()
                           if k not in ("host", "pid")} for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no runs in {path}")
        return 0
    table = [
        [r["run_id"], r["kind"], r["status"] + (" (incomplete)" if r["incomplete"] and r["status"] != "running" else ""),
         f"{r['n_results']}/{r['n_expected'] or 0}", str(r["n_errors"]), str(r["started_at"])[:19], (r["command"] or "")[:60]]
        for r in rows
    ]
    print(format_table(["run", "kind", "status", "results", "errors", "started", "command"], table))
    return 0
