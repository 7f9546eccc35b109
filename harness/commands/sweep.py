"""`harness sweep`: every adapter at every LoRA scale in shared batches, the curve, the scale to ship."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.commands._evalrun import add_eval_arguments, errors_exit, prepare, print_stats
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
    from harness import distributed

    # under a launcher every rank evaluates its share; they all exit with the main process's code
    return distributed.agree(_run(args))


def _run(args: argparse.Namespace) -> int | None:
    from harness import distributed
    from harness.comparison import build_comparison
    from harness.runner import expand_targets, run_eval
    from harness.sweep import refine_scales

    scales = parse_scales(args.scales)
    if args.refine < 0:
        raise UsageError("--refine must be 0 or more")
    for name, v in (("--min-retention", args.min_retention), ("--max-leakage", args.max_leakage)):
        if not 0 <= v <= 1:
            raise UsageError(f"{name} {v!r}: a share between 0 and 1")
    prep = prepare(args, scales, need_adapter=True)
    prep.config.update(sweep={"scales": scales, "refine": args.refine, "min_retention": args.min_retention,
                              "max_leakage": args.max_leakage})
    store, base = prep.store, prep.base
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    common = dict(batch_size=args.batch_size, max_batch=args.max_batch, task_format=",".join(prep.keys) or None,
                  flush_every=args.flush_every, progress_bar=sys.stderr.isatty(), examples=prep.examples, log=log)
    total_generated = total_cached = 0
    with store.run(prep.run_info("sweep", args), ranks=True) as run_writer:
        stats = run_eval(base, expand_targets(prep.adapters, scales), prep.suites, run_writer, store, **common)
        all_stats = [stats]
        for step in range(args.refine):
            choices: list[tuple[int, float]] = []
            if distributed.is_main():  # the main process reads the store; every rank gets its choice
                run_writer.flush()
                c = build_comparison(store, run_writer.run_id)
                for i, a in enumerate(prep.adapters):
                    from harness.sweep import curve

                    mid = refine_scales(curve(c, a.adapter_id), args.min_retention, args.max_leakage)
                    if mid is not None:
                        choices.append((i, mid))
            extra = [(prep.adapters[i], mid) for i, mid in distributed.broadcast(choices)]
            if not extra:
                log(f"  refine {step + 1}: no boundary left to bisect")
                break
            log(f"  refine {step + 1}: " + ", ".join(f"{a.path.name} at {x:g}" for a, x in extra))
            for a, scale in extra:
                all_stats.append(run_eval(base, expand_targets([a], [scale], include_base=False), prep.suites,
                                          run_writer, store, **common))
        run_id = run_writer.run_id
        if not distributed.is_main():
            return None  # every row of this rank is in the store (run_eval synced); the main process reports
        gate_reports = _apply_gates(args, store, run_writer, prep) if prep.project_gates is not None else []
    for st in all_stats:
        total_generated += st.generated
        total_cached += st.cached
    stats.generated, stats.cached = total_generated, total_cached
    stats.errors = sum(st.errors for st in all_stats)
    stats.rescored = sum(st.rescored for st in all_stats)
    stats.first_error = next((st.first_error for st in all_stats if st.first_error), None)
    stats.seconds = sum(st.seconds for st in all_stats)
    print_stats(run_id, stats, base)
    comparison = build_comparison(store, run_id)
    print(sweep_tables(comparison, [a.adapter_id for a in prep.adapters], args.min_retention, args.max_leakage))
    if args.report:
        from harness.comparison import build_report
        from reports.render import write_report

        print(f"report: {write_report(build_report(store, [run_id]), args.report)}")
    failed = False
    if gate_reports:
        from harness.commands.check import print_report

        for label, report in gate_reports:
            if report is None:
                print(f"gates: {label}: no scale to ship (see the recommendation above)", file=sys.stderr)
                failed = True
                continue
            print(f"gates at {label}:")
            print_report(report)
            failed = failed or not report.passed
    code = errors_exit(run_id, stats)
    return code or (1 if failed else 0)


def _apply_gates(args, store, run_writer, prep) -> list:
    """The suites' and project gates, judged at each adapter's recommended scale (the scale to ship);
    stored with the run. A sweep whose adapter has no recommendable scale fails."""
    from harness.comparison import build_comparison
    from harness.gates import GateReport, evaluate_gates
    from harness.sweep import curve, recommend

    run_writer.flush()  # the gates read the store
    c = build_comparison(store, run_writer.run_id)
    out: list[tuple[str, GateReport | None]] = []
    for a in prep.adapters:
        rec = recommend(curve(c, a.adapter_id), args.min_retention, args.max_leakage)
        if rec.scale is None:
            out.append((a.path.name, None))
            continue
        report = evaluate_gates(store, run_writer.run_id, prep.suites, adapter_id=a.adapter_id, scale=rec.scale,
                                project_gates=prep.project_gates)
        run_writer.add_gate_results(report.rows())
        out.append((f"{a.path.name}@{rec.scale:g} (recommended)", report))
    return out


def sweep_tables(c, adapter_ids: list[str], min_retention: float, max_leakage: float) -> str:
    """One table per adapter: a row per scale (task, retention, leakage, Pareto), then the recommendation."""
    from harness.summary import format_table
    from harness.sweep import curve, pareto_front, recommend

    out = []
    for aid in adapter_ids:
        points = curve(c, aid)
        label = next((x.target.rsplit("@", 1)[0] for x in c.cells if x.adapter_id == aid), aid[:12])
        front = {p.scale for p in pareto_front(points)}
        rec = recommend(points, min_retention, max_leakage)
        pct = lambda v: "—" if v is None else f"{100 * v:5.1f}%"  # noqa: E731
        rows = [[f"{p.scale:g}" + (" (base)" if p.scale == 0 else ""), pct(p.task) + (f" (n={p.n_task})" if p.n_task else ""),
                 pct(p.retention) + (f" ({p.kept}/{p.base_correct})" if p.base_correct else ""),
                 pct(p.leakage) + (f" ({p.n_leaked}/{p.n_leakage})" if p.n_leakage else ""),
                 "*" if p.scale in front else "", "<- ship" if rec.scale == p.scale else ""] for p in points]
        out.append(f"\n{label}: task ↑, retention ↑, leakage ↓ per scale (* = Pareto front)\n"
                   + format_table(["scale", "task", "retention", "leakage", "pareto", ""], rows)
                   + f"\nrecommendation: {rec.sentence}")
    return "\n".join(out)
