"""The check job: evaluate what the store lacks for one adapter at one scale (and the base, and a baseline),
then judge every gate. ``harness check``, the pytest plugin and the demo's release checks all call
``run_check``; each renders the one ``GateReport`` it returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import GateFailure, UsageError
from harness.jobs.evaluate import log_to_stderr
from harness.models.base import DEFAULT_BASE


@dataclass(frozen=True)
class CheckRequest:
    """What one check evaluates and judges (parsed flags, or the pytest plugin's options)."""

    adapter: str
    suites: tuple[str, ...]
    project: Any  # harness.gates.ProjectGates
    base: str = DEFAULT_BASE
    db: Path | None = None
    scale: float | None = None
    recommended: bool = False
    baseline: str | None = None
    baseline_scale: float = 1.0
    gates_file: str | None = None
    task_format: str | None = None
    limit: int | None = None  # --limit: a stratified sample of each suite
    limit_per_suite: int | None = None  # --limit-per-suite: the first N of each suite
    batch_size: int = 16
    device: str | None = None
    allow_pickle: bool = False
    allow_base_mismatch: bool = False
    command: str = "harness check"


@dataclass(frozen=True)
class CheckResult:
    report: Any  # harness.gates.GateReport
    context: dict
    stats: Any  # harness.evaluation.runner.EvalStats


def run_check(req: CheckRequest, plan: Sequence[Any] | None = None, require_gates: bool = True,
              log: Callable[[str], None] = log_to_stderr) -> CheckResult:
    """Evaluate what the store lacks (base, adapter at its scale, baseline), then judge the gates
    (``plan``: these planned gates, else every gate of the suites and the project). The gate results
    are stored with the run."""
    from harness.evaluation.runner import run_eval
    from harness.evaluation.targets import Target
    from harness.gates import evaluate_gates
    from harness.models.adapters import inspect_for_base
    from harness.models.base import check_device, load_base
    from harness.store import RunInfo, Store, default_db_path
    from harness.suites import taskformat
    from harness.suites.spec import load_examples, load_suite

    for sc in (req.scale, req.baseline_scale):
        if sc is not None and (not math.isfinite(sc) or sc <= 0):
            raise UsageError(f"scale {sc!r}: judge an adapter at a finite scale > 0 (scale 0 is the base model)")
    if req.batch_size <= 0:
        raise UsageError("--batch-size must be positive")
    from harness.jobs.evaluate import adapter_warnings, example_limit

    limit = example_limit(req.limit, req.limit_per_suite)
    check_device(req.device)
    # Everything cheap is checked before the model loads: suites, data, adapters, base files, database.
    if not req.suites:
        raise UsageError("no suites to check: pass --suite, or list `suites = [...]` in harness.toml")
    suites = [load_suite(s) for s in req.suites]
    examples = {s.name: load_examples(s, limit) for s in suites}
    infos, ref = inspect_for_base([a for a in (req.adapter, req.baseline) if a], req.base, req.allow_pickle,
                                  req.allow_base_mismatch)
    adapter, baseline = infos[0], (infos[1] if req.baseline else None)
    if baseline is not None and baseline.adapter_id == adapter.adapter_id:
        raise UsageError(f"baseline {req.baseline} is the same adapter as {req.adapter} (same hash)")
    fmt, key_source = taskformat.resolve(suites, examples, [a for a in (adapter, baseline) if a], req.task_format)
    suites = taskformat.with_leakage(suites, fmt)
    log(f"task format: {taskformat.describe(fmt)} ({key_source})")
    project = release_defaults(req.project)
    warnings = adapter_warnings([a for a in (adapter, baseline) if a is not None], ref, req.allow_base_mismatch, log)
    db = Path(req.db or default_db_path())
    if req.recommended and not db.exists():
        raise UsageError(f"--recommended: no results database at {db}; run `harness sweep --adapter {req.adapter}` first")
    from harness.util import distributed

    store = Store(db)
    main = distributed.is_main()  # under a launcher only the main process opens the database
    if main:
        store.queries.ping()  # a damaged or locked database is exit 5 now, before the model loads
    picked = distributed.broadcast(recommended_scale(store, adapter.adapter_id, req.adapter, log)
                                   if req.recommended and main else None)
    scale = picked[0] if picked else (req.scale or 1.0)
    if picked:
        # the sweep judged its recommendation with the release gates at its own limits: the check judges the same
        from harness.analysis.sweep import Limits

        project = release_gates(req.project, Limits(*picked[1]))
    base = load_base(ref, device=distributed.device(req.device), lazy=True)
    targets = [Target(None, 0.0), Target(adapter, scale)] + ([Target(baseline, req.baseline_scale)] if baseline else [])
    info = RunInfo(kind="check", command=req.command, device=str(base.device),
                   config={"device": base.device, "base": req.base, "scales": [scale], "suites": [s.name for s in suites],
                           "warnings": warnings, "batch_size": req.batch_size, "gates_file": req.gates_file,
                           "adapter_id": adapter.adapter_id, "baseline_id": baseline.adapter_id if baseline else None,
                           "baseline_scale": req.baseline_scale if baseline else None,
                           "task_format": taskformat.to_config(fmt, key_source),
                           "limit": {"n": limit.n, "how": limit.how} if limit else None})
    with store.run(info, ranks=True) as writer:
        stats = run_eval(base, targets, suites, writer, store, batch_size=req.batch_size,
                         task_format=fmt, examples=examples, log=log)
        if not main:
            return CheckResult(None, {}, stats)  # this rank's rows are stored (run_eval synced)
        writer.flush()  # cached results are buffered until a flush: the gates read the store
        report = evaluate_gates(store, writer.run_id, suites, adapter_id=adapter.adapter_id, scale=scale,
                                baseline_adapter_id=baseline.adapter_id if baseline else None,
                                baseline_scale=req.baseline_scale, project_gates=project, plan=plan,
                                require_gates=require_gates)
        writer.add_gate_results(report.rows())
    log(f"run {report.run_id}: {stats.generated} generated, {stats.cached} cached, {stats.errors} errors")
    context = {"adapter": str(req.adapter), "adapter_id": adapter.adapter_id, "scale": scale,
               "baseline": str(req.baseline) if baseline else None, "baseline_id": baseline.adapter_id if baseline else None,
               "baseline_scale": req.baseline_scale if baseline else None, "base_model_id": ref.model_id,
               "db": str(db)}
    return CheckResult(report, context, stats)


def release_defaults(gates: Any) -> Any:
    """A release check gates retention, leakage and the task even where the project file does not, at the
    limits a sweep recommends with (``harness.analysis.sweep``: retention >= 0.95 of the base's correct
    answers, leakage <= 0.02) and a task gain over the base of at least 0. A default the run cannot measure
    (no general suite, no known task format, no task suite) is a failed gate that says what to add, never a
    gate left out; a team opts out only by name (``skip = [...]`` in the gates file), and the skip is
    printed and stored. A project file's own limits win; eval and sweep apply only the files' gates."""
    import dataclasses

    from harness.analysis.sweep import MAX_LEAKAGE, MIN_RETENTION

    defaults = (("retention", "min_retention", MIN_RETENTION), ("leakage", "max_leakage", MAX_LEAKAGE),
                ("task", "min_task_gain", 0.0))
    filled = {field: v for name, field, v in defaults if name not in gates.skip and getattr(gates, field) is None}
    if not filled:
        return gates
    return dataclasses.replace(gates, **filled, source=f"{gates.source} + release defaults ({', '.join(filled)})")


def release_gates(project_gates: Any, limits: Any) -> Any:
    """The gates a scale must pass to be recommended (and that ``check --recommended`` judges it on): the project
    file's (or none), the suites' own, and the release defaults at the sweep's limits (``harness.analysis.sweep.
    Limits``) where the file sets none. ``release_defaults`` with the default limits."""
    import dataclasses

    from harness.gates import ProjectGates

    gates = project_gates if project_gates is not None else ProjectGates()
    filled = {f: v for f, name, v in (("min_retention", "retention", limits.min_retention),
                                      ("max_leakage", "leakage", limits.max_leakage))
              if getattr(gates, f) is None and name not in gates.skip}
    return release_defaults(dataclasses.replace(gates, **filled) if filled else gates)


def recommended_scale(store: Any, adapter_id: str, adapter_path: str,
                      log: Callable[[str], None] = log_to_stderr) -> tuple[float, tuple[float, float]]:
    """The scale the newest stored sweep of this adapter (a run with it at two or more non-zero scales)
    recommends, under the limits that sweep ran with (``run_limits``) and the release gates it judged at every
    scale (``run_blocked``), with those limits: the sweep's table, its report and this check show one
    recommendation, and the check judges it on the same gates."""
    from harness.analysis import build_comparison
    from harness.analysis.sweep import curve, recommend, run_blocked, run_limits

    run_id = store.queries.newest_sweep_run_id(adapter_id)
    if run_id is None:
        raise UsageError(f"--recommended: {store.path} holds no sweep of adapter {adapter_path} over several scales; run "
                         f"`harness sweep --adapter {adapter_path}` (or `harness eval --adapter {adapter_path} --scale 0.5 "
                         "--scale 1 ...`) first")
    c = build_comparison(store, run_id, samples_per_suite=0)
    config = store.queries.run_config(run_id)
    rec = recommend(curve(c, adapter_id), *run_limits(config), blocked=run_blocked(config, adapter_id))
    if rec.scale is None:
        raise GateFailure(f"no recommended scale for {adapter_path} (sweep run {run_id}): {rec.sentence}")
    log(f"recommended scale (sweep run {run_id}): {rec.sentence}")
    limits = run_limits(config)
    return rec.scale, (limits.min_retention, limits.max_leakage)
