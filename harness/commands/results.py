"""`harness results`: the summary table of one run, or every result of one adapter, without SQL."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

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
    g.add_argument("--run", default=None, metavar="RUN_ID", help="a run id from `harness runs` (default: the newest eval, sweep, check or demo run)")
    g.add_argument("--adapter", default=None, metavar="DIR|NAME|ID",
                   help="an adapter directory, its name or its id (a prefix is enough)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def run(args: argparse.Namespace) -> int:
    from harness.analysis.summary import format_table
    from harness.commands._common import existing_store, pick_run
    from harness.errors import InputError
    from harness.util.lineage import chain, parents_first

    store = existing_store(args.db)
    path = store.path
    if args.adapter:
        ident = args.adapter
        if Path(ident).is_dir():
            from harness.models.adapters import inspect_adapter

            ident = inspect_adapter(ident).adapter_id
        found = store.queries.find_adapters(ident)
        if not found:
            raise InputError(f"no adapter {args.adapter!r} in {path}; `harness runs` lists what was evaluated")
        known = {a.adapter_id: a for a in store.queries.lineage()}
        parent_of = {aid: a.parent_adapter_id for aid, a in known.items()}
        ids = parents_first([a.adapter_id for a in found], parent_of)  # a parent before its children
        rank = {aid: i for i, aid in enumerate(ids)}
        rows = sorted(store.queries.adapter_vs_base(ids),
                      key=lambda r: (r.run_id, r.suite_name or "", r.metric, rank[r.adapter_id], r.scale))
        vs_parent = sorted(store.queries.child_vs_parent(ids),
                           key=lambda r: (r.run_id, r.suite_name or "", r.metric, rank[r.adapter_id], r.scale))
        lineage: list[dict[str, Any]] = []
        for aid in ids:
            line = chain(aid, parent_of)
            if len(line) > 1:
                lineage.append({"adapter_id": aid, "chain": [
                    {"adapter_id": x, "name": known[x].name if x in known else None} for x in line]})
        if args.json:
            print(json.dumps({"vs_base": [asdict(r) for r in rows], "lineage": lineage,
                              "vs_parent": [asdict(r) for r in vs_parent]}, indent=2, default=str))
            return 0
        fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
        for item in lineage:
            print("lineage: " + " <- ".join(f"{x['name'] or '?'} [{x['adapter_id'][:8]}]" for x in item["chain"]))
        print(format_table(
            ["run", "adapter", "scale", "suite", "metric", "n", "adapter", "base", "delta"],
            [[r.run_id, f"{r.adapter_name} [{r.adapter_id[:8]}]", f"{r.scale:g}", r.suite_name or "?", r.metric,
              str(r.n_pairs), fmt(r.adapter_mean), fmt(r.base_mean), fmt(r.mean_delta)] for r in rows],
        ))
        if vs_parent:
            print("\nagainst the parent adapter (same run, same scale, paired on the same examples):")
            print(format_table(
                ["run", "adapter", "parent", "scale", "suite", "metric", "n", "adapter", "parent", "delta"],
                [[r.run_id, r.child_name or "?", r.parent_name or "?", f"{r.scale:g}", r.suite_name or "?", r.metric,
                  str(r.n_pairs), fmt(r.child_mean), fmt(r.parent_mean), fmt(r.mean_delta)] for r in vs_parent],
            ))
        return 0
    run_id = pick_run(store, args.run)
    state = store.queries.run(run_id)
    if state is None:
        raise InputError(f"no run {run_id!r} in {path}; `harness runs` lists them")
    if args.json:
        from harness.analysis import build_comparison

        results = [asdict(r) for r in store.queries.suite_summary(run_id)]
        retention = [asdict(r) for r in build_comparison(store, run_id).retention]
        print(json.dumps({"run": {k: (str(v) if k.endswith("_at") else v) for k, v in asdict(state).items()},
                          "results": results, "retention": retention}, indent=2, default=str))
        return 0
    from harness.analysis.summary import print_run_summary

    expected = "?" if state.n_expected is None else str(state.n_expected)
    print(f"run {run_id} ({state.kind}, {state.status}): {state.n_results}/{expected} results, {state.n_errors} errors"
          + ("  — INCOMPLETE: rerun its command to finish it" if state.incomplete else ""))
    print_run_summary(store, run_id)
    return 0
