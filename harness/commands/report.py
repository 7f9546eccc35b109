"""`harness report`: write the HTML report of a stored run."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands._common import add_db_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write the HTML report of a stored run",
        description=(
            "Write a self-contained HTML page comparing the base model and every adapter@scale of one run: "
            "headline metrics, retention, per-category accuracy and sample outputs, read from the results store."
        ),
    )
    add_db_argument(p)
    p.add_argument("--run", default=None, metavar="RUN_ID", help="a run id from `harness runs` (default: the newest eval or demo run)")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write (default: %(default)s)")
    p.add_argument("--title", default=None, help="page title (default: the run id)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from harness.commands._common import existing_store, pick_run
    from harness.comparison import build_comparison
    from reports.render import check_out_path, write_report

    check_out_path(args.out)  # before the store is read
    store = existing_store(args.db)
    run_id = pick_run(store, args.run)
    comparison = build_comparison(store, run_id)
    if args.title:
        comparison = replace(comparison, title=args.title)
    print(write_report(comparison, args.out))
    return 0
