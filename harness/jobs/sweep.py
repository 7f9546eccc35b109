"""The sweep job: every adapter at every LoRA scale in shared batches (optionally bisecting the boundary
where the limits start to fail), the one recommendation per adapter under the run's limits, and the gates
judged at the recommended scale. ``harness sweep`` and the demo call it; the limits are stored with the run
(``config["sweep"]``), so the report and ``harness check --recommended`` show the same recommendation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.analysis.sweep import Limits, SweepView
from harness.errors import UsageError
from harness.jobs.evaluate import EvalRequest, log_to_stderr, prepare


@dataclass(frozen=True)
class SweepRequest:
    """An evaluation over several scales (``evaluation.scales``), plus the sweep's own settings."""

    evaluation: EvalRequest
    refine: int = 0
    limits: Limits = field(default_factory=Limits)


@dataclass
class SweepOutcome:
    """The sweep's run, counts, one view per adapter (curve, front, recommendation) and the gate reports at
    each recommended scale (label, report; report None where the adapter has no scale to ship)."""

    run_id: str | None  # None on a launched job's other ranks: the main process reports
    stats: Any  # harness.evaluation.runner.EvalStats, summed over the grid and the refinements
    views: list[SweepView]
    gate_reports: list[tuple[str, Any]]
    store: Any
    base_loaded: bool


def sweep(req: SweepRequest, log: Callable[[str], None] = log_to_stderr) -> SweepOutcome:
    from harness.analysis.build import build_comparison
    from harness.analysis.sweep import curve, refine_scales, sweep_views
    from harness.evaluation.runner import run_eval
    from harness.evaluation.targets import expand_targets
    from harness.util import distributed

    ev, limits = req.evaluation, req.limits
    scales = sorted(set(ev.scales))
    if req.refine < 0:
        raise UsageError("--refine must be 0 or more")
    for name, v in (("--min-retention", limits.min_retention), ("--max-leakage", limits.max_leakage)):
        if not 0 <= v <= 1:
            raise UsageError(f"{name} {v!r}: a share between 0 and 1")
    prep = prepare(ev, scales, need_adapter=True, log=log)
    prep.config.update(sweep={"scales": scales, "refine": req.refine, "min_retention": limits.min_retention,
                              "max_leakage": limits.max_leakage})
    store, base = prep.store, prep.base
    common: dict[str, Any] = dict(batch_size=ev.batch_size, max_batch=ev.max_batch, task_format=prep.task_format,
                                  flush_every=ev.flush_every, progress_bar=ev.progress_bar, examples=prep.examples, log=log)
    with store.run(prep.run_info("sweep", ev), ranks=True) as run_writer:
        stats = run_eval(base, expand_targets(prep.adapters, scales), prep.suites, run_writer, store, **common)
        all_stats = [stats]
        for step in range(req.refine):
            choices: list[tuple[int, float]] = []
            if distributed.is_main():  # the main process reads the store; every rank gets its choice
                run_writer.flush()
                c = build_comparison(store, run_writer.run_id)
                for i, a in enumerate(prep.adapters):
                    mid = refine_scales(curve(c, a.adapter_id), *limits)
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
            return SweepOutcome(None, stats, [], [], store, base.loaded)
        run_writer.flush()  # the recommendation and the gates read the store
        comparison = build_comparison(store, run_id)
        blocked = release_blocked(store, run_id, prep.suites, prep.adapters, comparison, prep.project_gates, limits)
        run_writer.update_config(sweep={**prep.config["sweep"], "blocked": blocked})
        views = sweep_views(comparison, [a.adapter_id for a in prep.adapters], limits,
                            {aid: {float(s): why for s, why in b.items()} for aid, b in blocked.items()})
        gate_reports = _apply_gates(store, run_writer, prep, views) if prep.project_gates is not None else []
    stats.generated = sum(st.generated for st in all_stats)
    stats.cached = sum(st.cached for st in all_stats)
    stats.errors = sum(st.errors for st in all_stats)
    stats.rescored = sum(st.rescored for st in all_stats)
    stats.first_error = next((st.first_error for st in all_stats if st.first_error), None)
    stats.seconds = sum(st.seconds for st in all_stats)
    return SweepOutcome(run_id, stats, views, gate_reports, store, base.loaded)


def release_blocked(store: Any, run_id: str, suites: Any, adapters: Any, comparison: Any, project_gates: Any,
                    limits: Limits) -> dict[str, dict[str, str]]:
    """Per adapter, the scales (as text keys, for the run's stored config) at which a release gate fails: scale ->
    the failed gates, one line. Judged once here, stored with the run, read by every face (``run_blocked``)."""
    from harness.analysis.sweep import curve
    from harness.gates import evaluate_gates
    from harness.jobs.check import release_gates

    gates = release_gates(project_gates, limits)
    out: dict[str, dict[str, str]] = {}
    for a in adapters:
        for p in curve(comparison, a.adapter_id):
            if p.scale == 0:
                continue
            report = evaluate_gates(store, run_id, suites, adapter_id=a.adapter_id, scale=p.scale, project_gates=gates)
            failed = [o.result.gate for o in report.outcomes if not o.passed]
            if failed:
                first = next(o for o in report.outcomes if not o.passed)
                out.setdefault(a.adapter_id, {})[f"{p.scale:g}"] = (
                    f"fails {', '.join(dict.fromkeys(failed))} -- {first.result.message}")
    return out


def _apply_gates(store: Any, run_writer: Any, prep: Any, views: list[SweepView]) -> list[tuple[str, Any]]:
    """The suites' and project gates, judged at each adapter's recommended scale (the scale to ship);
    stored with the run. An adapter with no recommendable scale gets None (a failed sweep)."""
    from harness.gates import evaluate_gates

    out: list[tuple[str, Any]] = []
    for a, view in zip(prep.adapters, views):
        rec = view.recommendation
        if rec.scale is None:
            out.append((a.path.name, None))
            continue
        report = evaluate_gates(store, run_writer.run_id, prep.suites, adapter_id=a.adapter_id, scale=rec.scale,
                                project_gates=prep.project_gates)
        run_writer.add_gate_results(report.rows())
        out.append((f"{a.path.name}@{rec.scale:g} (recommended)", report))
    return out
