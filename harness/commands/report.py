"""`harness report`: write the HTML report of stored runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands._common import add_db_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write the HTML report of stored runs",
        description=(
            "Write one self-contained HTML page (works offline and from file://) for one or more runs: "
            "adapters x suites x scales with gate results and the recommended scale, sweep charts with the "
            "Pareto front, training and eval loss with anomaly findings, a per-example comparison with filters, "
            "the lineage of continued fine-tunes and the provenance of every run, read from the results store."
        ),
    )
    add_db_argument(p)
    p.add_argument("--run", action="append", default=None, metavar="RUN_ID",
                   help="a run id from `harness runs`; repeat for several (default: the newest eval or demo run)")
    p.add_argument("--adapter", action="append", default=None, metavar="ID_OR_NAME",
                   help="show only this adapter (id, id prefix of 6+ characters, or label); repeat for several")
    p.add_argument("--baseline", default=None, metavar="ID_OR_NAME",
                   help="adapter whose answers are shown beside each adapter's (default: its parent, when evaluated)")
    p.add_argument("--max-examples", type=int, default=100, metavar="N",
                   help="per-example rows per adapter, regressions first (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write (default: %(default)s)")
    p.add_argument("--title", default=None, help="page title (default: adapter-harness report)")


def run(args: argparse.Namespace) -> int:
    from harness.analysis import build_report, resolve_adapters
    from harness.commands._common import existing_store, pick_run
    from harness.errors import UsageError
    from harness.reports.render import check_out_path, write_report

    if args.max_examples < 0:
        raise UsageError(f"--max-examples {args.max_examples}: must be 0 or more")
    check_out_path(args.out)  # before the store is read
    store = existing_store(args.db)
    run_ids = list(dict.fromkeys(pick_run(store, r) for r in (args.run or [None])))
    adapter_ids = resolve_adapters(store, run_ids, args.adapter) if args.adapter else None
    report = build_report(store, run_ids, adapter_ids, title=args.title or "adapter-harness report",
                          max_examples=args.max_examples, baseline=args.baseline)
    print(write_report(report, args.out))
    return 0
