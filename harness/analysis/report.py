"""Build the full ``Report`` from the store: per run the overview, gates, sweeps and per-example tables;
then the training curves, lineage and provenance of the adapters shown.

Everything a report shows is decided here; ``reports/`` turns it into HTML and charts.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from harness.analysis.build import Reader, adapter_labels, build_comparison, finite, reading
from harness.analysis.examples import example_tables, verdict
from harness.analysis.history import lineage, provenance, training_curves
from harness.analysis.report_types import (
    RAW_METRICS,
    AdapterSweep,
    Column,
    Gate,
    MetricCurve,
    OverviewCell,
    OverviewRow,
    Report,
    RunReport,
)
from harness.analysis.sweep import curve, diagnose, pareto_front, recommend, run_blocked, run_limits
from harness.analysis.types import Cell, Comparison, SuiteInfo

if TYPE_CHECKING:
    from harness.analysis.sweep import ScalePoint
    from harness.store import Store


def resolve_adapters(store: Store | Reader, run_ids: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """Adapter ids of the runs named by id, id prefix (6+ characters) or label; an InputError for a
    name that matches no adapter of any of the runs."""
    from harness.errors import InputError

    with reading(store) as r:
        labels: dict[str, str] = {}
        for run_id in run_ids:
            labels.update(adapter_labels(r, run_id))
        names = dict(r.rows("SELECT adapter_id, name FROM adapters WHERE adapter_id IN (SELECT unnest(?))", [list(labels)]))
    out: list[str] = []
    for w in wanted:
        hits = [a for a, lab in labels.items()
                if w in (a, lab, names.get(a)) or (len(w) >= 6 and a.startswith(w))]
        if not hits:
            known = ", ".join(sorted(labels.values())) or "none"
            raise InputError(f"--adapter {w!r}: not in run {', '.join(run_ids)} (its adapters: {known})")
        out.extend(h for h in hits if h not in out)
    return out


def build_report(store: Store | Reader, run_ids: Sequence[str], adapter_ids: Collection[str] | None = None,
                 title: str = "adapter-harness report", max_examples: int = 100,
                 baseline: str | None = None) -> Report:
    """Everything the HTML report shows, read from the store.

    Args:
        run_ids: evaluation runs, one section each.
        adapter_ids: keep only these adapters (None: every adapter of each run).
        max_examples: per-example rows kept per adapter (regressions first, then improvements, then
            other changed answers); the counts of all of them are kept.
        baseline: an adapter id or label to show beside each adapter's answers; by default the
            adapter's parent (a continued fine-tune) when the run evaluated it.
    """
    with reading(store) as r:
        runs = []
        for run_id in run_ids:
            # the report shows every example in its own tables: no samples
            c = build_comparison(r, run_id, title=title, samples_per_suite=0, adapter_ids=adapter_ids)
            runs.append(_run_report(r, run_id, c, max_examples, baseline))
        ids = list(dict.fromkeys(s.adapter_id for run in runs for s in run.sweeps))
        labels = {s.adapter_id: s.label for run in runs for s in run.sweeps}
        training = training_curves(r, ids, labels)
        tree = lineage(r, ids, labels)
        train_runs = list(dict.fromkeys(t.run_id for t in training))
        prov = tuple(provenance(r, x) for x in [*run_ids, *[t for t in train_runs if t not in run_ids]])
    return Report(title, tuple(runs), training, tree, prov, max_examples)


def _chosen_scale(points: Sequence[ScalePoint], recommended: float | None) -> float:
    scales = [p.scale for p in points if p.scale > 0]
    if recommended is not None:
        return recommended
    if not scales:
        return 0.0
    return min(scales, key=lambda s: (abs(s - 1.0), s))


def _run_report(r: Reader, run_id: str, c: Comparison, max_examples: int, baseline: str | None) -> RunReport:
    ids = list(dict.fromkeys(x.adapter_id for x in c.cells if x.adapter_id))
    label_of = {x.adapter_id: x.target.rsplit("@", 1)[0] for x in c.cells if x.adapter_id}
    sweeps = []
    reference = [s for s in c.suites if s.role == "reference"]
    metrics_of = {info.name: _reference_metrics(c, info) for info in reference}
    # the limits the run recommended with (a sweep's --min-retention / --max-leakage), so the report shows the
    # recommendation the sweep printed, not one recomputed under the defaults
    config = r.rows("SELECT config FROM runs WHERE run_id = ?", [run_id])
    stored = json.loads(config[0][0]) if config and isinstance(config[0][0], str) else None
    limits = run_limits(stored)
    for aid in ids:
        points = curve(c, aid)
        rec = recommend(points, *limits, blocked=run_blocked(stored, aid))
        front = tuple(p.scale for p in pareto_front(points))
        by_scale = {0.0: "base", **{x.scale: x.target for x in c.cells if x.adapter_id == aid}}
        curves = []
        for info in reference:
            for metric in metrics_of[info.name]:
                pts = tuple((s, (c.cell(t, info.name, metric) or _NO_CELL).mean) for s, t in sorted(by_scale.items()))
                curves.append(MetricCurve(info.name, metric, info.higher_is_better(metric), pts))
        sweeps.append(AdapterSweep(aid, label_of[aid], tuple(points), front, rec.scale, rec.sentence,
                                   _chosen_scale(points, rec.scale), tuple(curves), diagnose(points, limits.min_retention)))
    columns = _columns(c)
    gates = _gates(r, run_id, c)
    recommended = {(s.adapter_id, s.recommended) for s in sweeps}
    first_cell: dict[str, Cell] = {}
    for x in c.cells:
        first_cell.setdefault(x.target, x)
    overview = []
    for t in c.targets:
        first = first_cell[t]
        row_aid = first.adapter_id if t != "base" else None
        cells = tuple(_overview_cell(c, t, col) for col in columns)
        overview.append(OverviewRow(t, row_aid, first.scale if row_aid else 0.0, (row_aid, first.scale) in recommended, cells,
                                    tuple(g for g in gates if g.target == t)))
    examples = example_tables(r, run_id, c, sweeps, max_examples, baseline)
    return RunReport(c, columns, tuple(overview), gates, tuple(sweeps), examples)


_NO_CELL = Cell("", None, 0.0, "", "", None, 0, 0)


def _reference_metrics(c: Comparison, info: SuiteInfo) -> list[str]:
    """A reference suite's metrics, its headline first."""
    return sorted({x.metric for x in c.cells if x.suite == info.name}, key=lambda m: (m != info.headline, m))


def _columns(c: Comparison) -> tuple[Column, ...]:
    cols = []
    present = {(x.suite, x.metric) for x in c.cells}
    for info in c.suites:
        if info.headline and (info.name, info.headline) in present:
            cols.append(Column(info.name, info.headline, "headline", info.higher_is_better(info.headline)))
        if info.role == "general" and any(r.suite == info.name for r in c.retention):
            cols.append(Column(info.name, info.headline or "", "retention", True))
        if info.role in ("general", "leakage") and info.headline != "format_leakage" and (info.name, "format_leakage") in present:
            cols.append(Column(info.name, "format_leakage", "leakage", info.higher_is_better("format_leakage")))
    return tuple(cols)


def _overview_cell(c: Comparison, target: str, col: Column) -> OverviewCell:
    if col.kind == "retention":
        if target == "base":
            return OverviewCell(None, 0, 0, None)
        r = next((x for x in c.retention if x.target == target and x.suite == col.suite), None)
        if r is None:
            return OverviewCell(None, 0, 0, None)
        from harness.analysis.sweep import MIN_RETENTION

        # retention is 1.0 for the base by definition: judged against the sweep's gate instead
        judged = None if r.retention is None else ("same" if r.retention >= MIN_RETENTION else "worse")
        return OverviewCell(r.retention, r.kept, r.base_correct, judged)
    cell = c.cell(target, col.suite, col.metric)
    if cell is None:
        return OverviewCell(None, 0, 0, None)
    base = c.cell("base", col.suite, col.metric)
    return OverviewCell(cell.mean, cell.n_scored, cell.n,
                        None if target == "base" else verdict(cell.mean, base.mean if base else None, col.higher_is_better),
                        col.metric in RAW_METRICS)


def _gates(r: Reader, run_id: str, c: Comparison) -> tuple[Gate, ...]:
    rows = r.query("SELECT * FROM gate_results WHERE run_id = ? ORDER BY seq", [run_id])
    out = []
    labels = {(x.adapter_id, x.scale): x.target for x in c.cells if x.adapter_id}
    for g in rows:
        # gate rows name the run; a later schema may add the adapter (and scale) a gate judged
        target = g.get("target")
        if target is None and g.get("adapter_id"):
            target = labels.get((g["adapter_id"], g.get("scale", 1.0)))
        out.append(Gate(str(g["gate"]), str(g["metric"] or ""), finite(g["observed"]), finite(g["threshold"]),
                        finite(g["baseline"]), bool(g["passed"]), str(g["message"] or ""), target, g.get("rule")))
    return tuple(out)
