"""`harness results`: the summary table of one run, or every result of one adapter, without SQL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.commands._common import add_db_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "results",
        help="show results of a run or an adapter",
        description=(
            "Show the per-suite, per-metric means of one run (default: the newest) as a table of models "
            "(base, adapter@scale), or, with --adapter, every run's results for one adapter against its base."
        ),
    )
    add_db_argument(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--run", default=None, metavar="RUN_ID", help="a run id from `harness runs` (default: the newest eval or demo run)")
    g.add_argument("--adapter", default=None, metavar="DIR|NAME|ID",
                   help="an adapter directory, its name or its id (a prefix is enough)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def run(args: argparse.Namespace) -> int:
    from harness.commands._common import existing_store, pick_run
    from harness.errors import InputError
    from harness.summary import format_table

    store = existing_store(args.db)
    path = store.path
    if args.adapter:
        ident = args.adapter
        if Path(ident).is_dir():
            from harness.adapters import inspect_adapter

            ident = inspect_adapter(ident).adapter_id
        ids = store.query(
            "SELECT DISTINCT adapter_id, name FROM adapters WHERE adapter_id LIKE ? OR name = ?", [ident + "%", ident]
        )
        if not ids:
            raise InputError(f"no adapter {args.adapter!r} in {path}; `harness runs` lists what was evaluated")
        rows = store.query(
            "SELECT run_id, adapter_id, adapter_name, scale, suite_name, metric, n_pairs, adapter_mean, base_mean, mean_delta "
            "FROM v_adapter_vs_base WHERE adapter_id IN (SELECT unnest(?)) ORDER BY run_id, suite_name, metric, scale",
            [[r["adapter_id"] for r in ids]],
        )
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
        print(format_table(
            ["run", "adapter", "scale", "suite", "metric", "n", "adapter", "base", "delta"],
            [[r["run_id"], f"{r['adapter_name']} [{r['adapter_id'][:8]}]", f"{r['scale']:g}", r["suite_name"], r["metric"], str(r["n_pairs"]),
              fmt(r["adapter_mean"]), fmt(r["base_mean"]), fmt(r["mean_delta"])] for r in rows],
        ))
        return 0
    run_id = pick_run(store, args.run)
    state = store.query("SELECT * FROM v_runs WHERE run_id = ?", [run_id])
    if not state:
        raise InputError(f"no run {run_id!r} in {path}; `harness runs` lists them")
    if args.json:
        rows = store.query("SELECT * FROM v_suite_summary WHERE run_id = ? ORDER BY suite_name, metric, adapter_name, scale", [run_id])
        print(json.dumps({"run": {k: (str(v) if k.endswith("_at") else v) for k, v in state[0].items()}, "results": rows},
                         indent=2, default=str))
        return 0
    from harness.summary import print_run_summary

    s = state[0]
    print(f"run {run_id} ({s['kind']}, {s['status']}): {s['n_results']}/{s['n_expected'] or 0} results, {s['n_errors']} errors"
          + ("  — INCOMPLETE: rerun its command to finish it" if s["incomplete"] else ""))
    print_run_summary(store, run_id)
    return 0
