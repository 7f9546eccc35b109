"""`harness eval`: evaluate a base model and adapters (at one or more LoRA scales) on suites."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.commands._evalrun import add_eval_arguments, errors_exit, prepare, print_stats
from harness.errors import UsageError


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
    from harness import distributed

    # under a launcher every rank evaluates its share; they all exit with the main process's code
    return distributed.agree(_run(args))


def _run(args: argparse.Namespace) -> int | None:
    from harness import distributed
    from harness.runner import expand_targets, run_eval
    from harness.summary import print_run_summary

    if not args.adapter and args.no_base:
        raise UsageError("nothing to evaluate: --no-base given and no --adapter")
    scales = args.scale or [1.0]
    # Everything cheap is checked before the model loads: flags, suites, data, adapters, base files, store.
    prep = prepare(args, scales)
    store, base = prep.store, prep.base
    targets = expand_targets(prep.adapters, scales, include_base=not args.no_base)
    with store.run(prep.run_info("eval", args), ranks=True) as run_writer:
        stats = run_eval(base, targets, prep.suites, run_writer, store, batch_size=args.batch_size, max_batch=args.max_batch,
                         task_format=",".join(prep.keys) or None,
                         flush_every=args.flush_every, progress_bar=sys.stderr.isatty(), examples=prep.examples,
                         log=lambda m: print(m, file=sys.stderr))
        run_id = run_writer.run_id
        gate_report = None
        if not distributed.is_main():
            return None  # every row of this rank is in the store (run_eval synced); the main process reports
        if prep.project_gates is not None:
            from harness.gates import evaluate_gates

            run_writer.flush()  # cached results are buffered until a flush: the gates read the store
            gate_report = evaluate_gates(store, run_id, prep.suites, project_gates=prep.project_gates)
            run_writer.add_gate_results(gate_report.rows())  # stored with the run, in its last shard
    print_stats(run_id, stats, base)
    print_run_summary(store, run_id)
    if args.report:
        from harness.comparison import build_report
        from reports.render import write_report

        print(f"report: {write_report(build_report(store, [run_id]), args.report)}")
    gates_failed = False
    from harness.gates import QUALITY_KINDS

    if gate_report is not None and (gate_report.failures or any(o.kind in QUALITY_KINDS for o in gate_report.outcomes)):
        from harness.commands.check import print_report

        print_report(gate_report)
        gates_failed = not gate_report.passed
    # A run with errors is not a result to ship on: CI must see it (the completeness rule; errors allowed:
    # 0). The error rows are stored, and a rerun retries them.
    return errors_exit(run_id, stats) or (1 if gates_failed else 0)
