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
        lineage = _lineage(store, [r["adapter_id"] for r in ids])
        vs_parent = _vs_parent(store, [r["adapter_id"] for r in ids])
        if args.json:
            print(json.dumps({"vs_base": rows, "lineage": lineage, "vs_parent": vs_parent}, indent=2, default=str))
            return 0
        fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
        for line in lineage:
            print("lineage: " + " <- ".join(f"{x['name'] or '?'} [{x['adapter_id'][:8]}]" for x in line["chain"]))
        print(format_table(
            ["run", "adapter", "scale", "suite", "metric", "n", "adapter", "base", "delta"],
            [[r["run_id"], f"{r['adapter_name']} [{r['adapter_id'][:8]}]", f"{r['scale']:g}", r["suite_name"], r["metric"], str(r["n_pairs"]),
              fmt(r["adapter_mean"]), fmt(r["base_mean"]), fmt(r["mean_delta"])] for r in rows],
        ))
        if vs_parent:
            print("\nagainst the parent adapter (same run, same scale, paired on the same examples):")
            print(format_table(
                ["run", "adapter", "parent", "scale", "suite", "metric", "n", "adapter", "parent", "delta"],
                [[r["run_id"], r["child_name"], r["parent_name"], f"{r['scale']:g}", r["suite_name"], r["metric"],
                  str(r["n_pairs"]), fmt(r["child_mean"]), fmt(r["parent_mean"]), fmt(r["mean_delta"])] for r in vs_parent],
            ))
        return 0
    run_id = pick_run(store, args.run)
    state = store.query("SELECT * FROM v_runs WHERE run_id = ?", [run_id])
    if not state:
        raise InputError(f"no run {run_id!r} in {path}; `harness runs` lists them")
    from harness.store import run_status

    s = dict(state[0])
    s["status"] = run_status(s)  # a 'running' run whose process is gone was interrupted
    if args.json:
        from dataclasses import asdict

        from harness.comparison import build_comparison

        rows = store.query("SELECT * FROM v_suite_summary WHERE run_id = ? ORDER BY suite_name, metric, adapter_name, scale", [run_id])
        retention = [asdict(r) for r in build_comparison(store, run_id).retention]
        print(json.dumps({"run": {k: (str(v) if k.endswith("_at") else v) for k, v in s.items()}, "results": rows,
                          "retention": retention}, indent=2, default=str))
        return 0
    from harness.summary import print_run_summary

    print(f"run {run_id} ({s['kind']}, {s['status']}): {s['n_results']}/{s['n_expected'] or 0} results, {s['n_errors']} errors"
          + ("  — INCOMPLETE: rerun its command to finish it" if s["incomplete"] else ""))
    print_run_summary(store, run_id)
    return 0


def _lineage(store, adapter_ids: list[str]) -> list[dict]:
    """For each adapter, its chain of parents as far as the store (or harness.json records) knows it."""
    rows = {r["adapter_id"]: r for r in store.query("SELECT adapter_id, name, parent_adapter_id FROM adapters")}
    out = []
    for aid in adapter_ids:
        chain: list[dict] = []
        seen: set[str] = set()
        cur = aid
        while cur and cur not in seen and len(chain) < 32:
            seen.add(cur)
            r = rows.get(cur, {"adapter_id": cur, "name": None, "parent_adapter_id": None})
            chain.append({"adapter_id": cur, "name": r["name"]})
            cur = r["parent_adapter_id"]
        if len(chain) > 1:
            out.append({"adapter_id": aid, "chain": chain})
    return out


def _vs_parent(store, adapter_ids: list[str]) -> list[dict]:
    """A continued adapter against its parent, where both were evaluated in one run at one scale."""
    return store.query(
        """
        SELECT c.run_id, c.adapter_id, c.adapter_name AS child_name, p.adapter_name AS parent_name, c.scale,
               c.suite_name, c.metric,
               count(*) FILTER (WHERE c.value IS NOT NULL AND p.value IS NOT NULL) AS n_pairs,
               avg(c.value) FILTER (WHERE p.value IS NOT NULL) AS child_mean,
               avg(p.value) FILTER (WHERE c.value IS NOT NULL) AS parent_mean,
               avg(c.value - p.value) AS mean_delta
        FROM v_scores c
        JOIN adapters a ON a.adapter_id = c.adapter_id
        JOIN v_scores p ON p.run_id = c.run_id AND p.adapter_id = a.parent_adapter_id AND p.scale = c.scale
                       AND p.suite_name = c.suite_name AND p.example_id = c.example_id AND p.metric = c.metric
        WHERE c.adapter_id IN (SELECT unnest(?))
        GROUP BY ALL ORDER BY c.run_id, c.suite_name, c.metric, c.scale
        """, [adapter_ids])
