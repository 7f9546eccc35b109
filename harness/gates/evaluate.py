"""Evaluating a plan against one stored run.

``evaluate_gates`` reads the run's per-example values once (``RunData``), picks the candidates (each
adapter at each scale, or the base model alone), hands each planned gate to its kind's evaluator
(``harness.gates.kinds``, which sees the run through ``GateContext`` and decides by ``harness.gates.decide``),
lists the release defaults the gates file opted out of, and fails a check that has no quality gate when one
is required. ``check_run``
returns the same as plain ``GateResult`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.gates.context import GateContext, read_run
from harness.gates.kinds import (
    _completeness,
    _gain,
    _health,
    _leakage,
    _provenance,
    _regressions,
    _retention,
    _threshold,
)
from harness.gates.report import OPT_OUT, GateOutcome, GateReport, GateResult
from harness.gates.spec import QUALITY_KINDS, PlannedGate, ProjectGates, plan_gates

if TYPE_CHECKING:
    from harness.store import Store
    from harness.suites.types import Suite


def evaluate_gates(
    store: Store,
    run_id: str,
    suites: Sequence[Suite],
    *,
    adapter_id: str | None = None,
    scale: float | None = None,
    baseline_adapter_id: str | None = None,
    baseline_scale: float = 1.0,
    project_gates: ProjectGates | None = None,
    plan: Sequence[PlannedGate] | None = None,
    require_gates: bool = False,
) -> GateReport:
    """Evaluate every planned gate (default: ``plan_gates`` of the suites and project) on one stored run.

    Candidates are the run's adapters at their scales (only ``adapter_id`` / ``scale`` when given; the
    baseline adapter is never a candidate); a run of the base model alone is judged on its thresholds.
    ``require_gates``: a check with no quality gate fails (a vacuous pass is impossible).
    """
    from harness.analysis.build import build_comparison

    project = project_gates or ProjectGates()
    if plan is None:
        plan = plan_gates(suites, project, with_baseline=baseline_adapter_id is not None, provenance=adapter_id is not None)
    data = read_run(store, run_id)
    comparison = build_comparison(store, run_id, samples_per_suite=0)
    labels = {(c.adapter_id, c.scale): c.target for c in comparison.cells if c.adapter_id}
    by_suite = {s.name: s for s in suites}
    cands = sorted(t for t in data.targets if t[0] is not None and t[0] != baseline_adapter_id
                   and (adapter_id is None or t[0] == adapter_id) and (scale is None or math.isclose(t[1], scale)))
    base_only = not any(t[0] for t in data.targets) and adapter_id is None
    if base_only:
        cands = [(None, 0.0)]
    ctx = GateContext(store, run_id, data, comparison, labels, by_suite, project, baseline_adapter_id, baseline_scale)
    outcomes: list[GateOutcome] = []
    skipped: list[tuple[str, str]] = []
    regressions: list[tuple[PlannedGate, tuple]] = []
    for g in plan:
        if g.kind == "completeness":
            outcomes.append(_completeness(ctx, g))
            continue
        if g.kind == "provenance":
            outcomes.append(_provenance(ctx, g, adapter_id, scale, cands))
            continue
        if g.kind == "training_health":
            for aid in sorted({t[0] for t in cands if t[0]}):
                o = _health(ctx, g, aid)
                (outcomes.append(o) if isinstance(o, GateOutcome) else skipped.append((g.name, o)))
            continue
        if not cands:
            what = f"adapter {adapter_id[:12]}" if adapter_id else "any adapter"
            at = f" at scale {scale:g}" if scale is not None else ""
            outcomes.append(GateOutcome(GateResult(g.name, g.metric, None, g.min if g.min is not None else g.max, None, False,
                                                   f"{g.name}: run {run_id} holds no results of {what}{at}; evaluate it first: FAIL"),
                                        g.kind, suite=g.suite, source=g.source))
            continue
        for t in cands:
            if g.kind == "threshold":
                outcomes.append(_threshold(ctx, g, t))
            elif base_only:
                skipped.append((g.name, "the run holds the base model only: relative gates need an adapter"))
            elif g.kind == "retention":
                outcomes.append(_retention(ctx, g, t))
            elif g.kind == "leakage":
                outcomes.append(_leakage(ctx, g, t))
            elif g.kind in ("task_gain", "gain"):
                outcomes.append(_gain(ctx, g, t))
            elif g.kind == "regression":
                regressions.append((g, t))
    outcomes.extend(_regressions(ctx, regressions))
    for name in project.skip:  # release defaults the gates file opted out of: shown and stored, never silent
        skipped.append((name, f"{OPT_OUT} in {project.source} (skip = {list(project.skip)}): the {name} release default "
                              "is not judged"))
    if require_gates and not any(o.kind in QUALITY_KINDS for o in outcomes):
        outcomes.append(GateOutcome(GateResult("gates", "gates", 0.0, 1.0, None, False,
                                               "no quality gate applies: define gates in the suites (gates:) or in "
                                               "harness.toml [gates]; a check with no gates cannot pass"), "gates"))
    return GateReport(run_id, tuple(outcomes), tuple(skipped))


def check_run(
    store: Store,
    run_id: str,
    suites: Sequence[Suite],
    *,
    adapter_id: str | None = None,
    scale: float | None = None,
    baseline_adapter_id: str | None = None,
    baseline_scale: float = 1.0,
    project_gates: ProjectGates | None = None,
) -> list[GateResult]:
    """Every gate applicable to a stored run, as ``GateResult`` rows (``evaluate_gates`` for the details)."""
    return evaluate_gates(store, run_id, suites, adapter_id=adapter_id, scale=scale,
                          baseline_adapter_id=baseline_adapter_id, baseline_scale=baseline_scale,
                          project_gates=project_gates).results


