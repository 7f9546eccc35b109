"""`harness eval`: evaluate a base model and adapters (at one or more LoRA scales) on suites."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands._evalrun import add_eval_arguments, errors_exit, eval_request, print_stats


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate adapters against their base model on suites",
        description=(
            "Evaluate the base model and each adapter (at each LoRA scale) on each suite. Results already in "
            "the store (same base, adapter, scale, prompt, settings and scorer versions) are reused, not regenerated."
        ),
    )
    add_eval_arguments(p)
    p.add_argument("--scale", type=float, action="append", default=None, metavar="S", help="LoRA scale multiplier, 0 = base model; repeatable (default: 1.0)")
    p.add_argument("--no-base", action="store_true", help="skip the base model (scale 0) rows")
    gates = p.add_mutually_exclusive_group()
    gates.add_argument("--gates", type=Path, default=None, metavar="FILE",
                       help="project gates file applied with the suites' gates (default: ./harness.toml, or [tool.harness] "
                            "in ./pyproject.toml); a failed gate is exit 1")
    gates.add_argument("--no-gates", action="store_true", help="do not judge gates (an evaluation only)")


def run(args: argparse.Namespace) -> int:
    from harness.util import distributed

    # under a launcher every rank evaluates its share; they all exit with the main process's code
    return distributed.agree(_run(args))


def _run(args: argparse.Namespace) -> int | None:
    from harness.analysis.summary import print_run_summary
    from harness.gates import QUALITY_KINDS
    from harness.jobs.evaluate import evaluate

    out = evaluate(eval_request(args, args.scale or [1.0], include_base=not args.no_base))
    if out.run_id is None:
        return None  # every row of this rank is in the store; the main process reports
    print_stats(out.run_id, out.stats, out.base_loaded)
    print_run_summary(out.store, out.run_id)
    if args.report:
        from harness.analysis import build_report
        from harness.reports.render import write_report

        print(f"report: {write_report(build_report(out.store, [out.run_id]), args.report)}")
    gates_failed = False
    report = out.gate_report
    if report is not None and (report.failures or any(o.kind in QUALITY_KINDS for o in report.outcomes)):
        from harness.reports.gates import print_report

        print_report(report)
        gates_failed = not report.passed
    # A run with errors is not a result to ship on: CI must see it (the completeness rule; errors allowed:
    # 0). The error rows are stored, and a rerun retries them.
    return errors_exit(out.run_id, out.stats) or (1 if gates_failed else 0)
