"""`harness sweep`: every adapter at every LoRA scale in shared batches, the curve, the scale to ship."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.commands._evalrun import add_eval_arguments, errors_exit, eval_request, print_stats
from harness.errors import UsageError

DEFAULT_SCALES = "0,0.1,0.25,0.5,0.75,1"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="evaluate adapters at several LoRA scales and recommend the scale to ship",
        description=(
            "Evaluate each adapter at every scale (its update multiplied by the scale at run time, never merged; "
            "scale 0 is the base model) on the suites, with all scales sharing generation batches. Prints a table "
            "per adapter (task score, retention, leakage per scale, the Pareto front) and the recommended scale: the "
            "highest task score whose retention and leakage meet the gates. Re-running a finished sweep does no model work."
        ),
    )
    add_eval_arguments(p)
    p.add_argument("--scales", default=DEFAULT_SCALES, metavar="S,S,...", help="comma-separated scales (default: %(default)s)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="bisect N times between the grid points around the boundary where the gates start to fail")
    p.add_argument("--min-retention", type=float, default=0.95, metavar="R",
                   help="retention the recommended scale must keep, of the base's correct answers (default: %(default)s)")
    p.add_argument("--max-leakage", type=float, default=0.02, metavar="L",
                   help="format leakage the recommended scale may show at most (default: %(default)s)")
    p.add_argument("--gates", type=Path, default=None, metavar="FILE",
                   help="project gates file (default: harness.toml or [tool.harness] in pyproject.toml, when present)")
    p.add_argument("--no-gates", action="store_true", help="do not apply the suites' and project gates")


def parse_scales(text: str) -> list[float]:
    try:
        scales = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--scales {text!r}: give numbers separated by commas, e.g. {DEFAULT_SCALES}") from None
    if not scales:
        raise UsageError(f"--scales {text!r}: no scale given")
    return scales


def run(args: argparse.Namespace) -> int:
    from harness.util import distributed

    # under a launcher every rank evaluates its share; they all exit with the main process's code
    return distributed.agree(_run(args))


def _run(args: argparse.Namespace) -> int | None:
    from harness.analysis.sweep import Limits
    from harness.jobs.sweep import SweepRequest, sweep
    from harness.reports.terminal import sweep_tables

    req = SweepRequest(eval_request(args, parse_scales(args.scales)), args.refine, Limits(args.min_retention, args.max_leakage))
    out = sweep(req)
    if out.run_id is None:
        return None  # every row of this rank is in the store; the main process reports
    print_stats(out.run_id, out.stats, out.base_loaded)
    print(sweep_tables(out.views))
    if args.report:
        from harness.analysis import build_report
        from harness.reports.render import write_report

        print(f"report: {write_report(build_report(out.store, [out.run_id]), args.report)}")
    failed = False
    if out.gate_reports:
        from harness.reports.gates import print_report

        for label, report in out.gate_reports:
            if report is None:
                print(f"gates: {label}: no scale to ship (see the recommendation above)", file=sys.stderr)
                failed = True
                continue
            print(f"gates at {label}:")
            print_report(report)
            failed = failed or not report.passed
    code = errors_exit(out.run_id, out.stats)
    return code or (1 if failed else 0)
