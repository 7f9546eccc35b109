"""What a report shows, as typed records: overview, sweeps, per-example diffs, training curves,
lineage and provenance.

Plain frozen records, like ``harness.analysis.types``: ``reports/`` renders them and never reads the
store. ``harness/analysis/report.py`` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.analysis.types import Comparison

#: texts longer than this are cut in the per-example table (the store keeps them whole)
MAX_TEXT = 2000
#: metrics not on a 0..1 scale: "failed" is judged against the base model for them, not against 0.5
RAW_METRICS = frozenset({"bleu", "chrf", "nll", "perplexity", "margin", "loglikelihood", "drift_kl", "drift_nll"})


@dataclass(frozen=True)
class MetricCurve:
    """One metric of one suite at every scale of an adapter (the base model is scale 0)."""

    suite: str
    metric: str
    higher_is_better: bool
    points: tuple[tuple[float, float | None], ...]


@dataclass(frozen=True)
class AdapterSweep:
    """An adapter's sweep: harness.analysis.sweep's curve, Pareto front and recommendation, and other metrics."""

    adapter_id: str
    label: str
    points: tuple  # tuple[harness.analysis.sweep.ScalePoint, ...]
    front: tuple[float, ...]
    recommended: float | None
    sentence: str
    #: the scale the per-example table shows: the recommended one, else 1.0 (or the nearest evaluated)
    chosen: float
    curves: tuple[MetricCurve, ...] = ()
    #: at the largest scale, which of knowledge (likelihood) and behaviour (answers) was kept (analysis.sweep.diagnose)
    diagnosis: str | None = None


@dataclass(frozen=True)
class Column:
    """One column of the overview: a suite's headline, its retention, or its format leakage."""

    suite: str
    metric: str
    kind: str  # headline | retention | leakage
    higher_is_better: bool


@dataclass(frozen=True)
class OverviewCell:
    value: float | None
    n_scored: int
    n: int
    #: against the base model, in the metric's direction: better | worse | same | None (base, or unmeasured)
    verdict: str | None
    raw: bool = False


@dataclass(frozen=True)
class Gate:
    gate: str
    metric: str
    observed: float | None
    threshold: float | None
    baseline: float | None
    passed: bool
    message: str
    #: the target label the gate judged, when the store records one (None: the run as a whole)
    target: str | None = None
    #: the rule that decided it ("bound", "point", "not measured"; "skip": a release default opted out of,
    #: shown but deciding nothing; None in runs stored before the rule was recorded)
    rule: str | None = None


@dataclass(frozen=True)
class OverviewRow:
    target: str
    adapter_id: str | None
    scale: float
    recommended: bool
    cells: tuple[OverviewCell, ...]
    gates: tuple[Gate, ...] = ()


@dataclass(frozen=True)
class Answer:
    label: str
    output: str | None
    score: float | None
    error: str | None = None


@dataclass(frozen=True)
class ExampleDiff:
    """One example: its input and reference, the base's, the adapter's and the baseline's answers."""

    suite: str
    example_id: str
    category: str | None
    metric: str
    higher_is_better: bool
    input: str
    reference: str | None
    base: Answer | None
    adapter: Answer
    baseline: Answer | None
    #: regression | improved | changed | same (scores against the base in the metric's direction)
    status: str
    failed: bool
    changed: bool


@dataclass(frozen=True)
class ExampleTable:
    """The per-example comparison of one adapter at one scale (its chosen one, or another), regressions first, capped."""

    adapter_id: str
    label: str
    scale: float
    baseline: str | None
    rows: tuple[ExampleDiff, ...]
    n_total: int
    n_regressions: int
    n_failed: int
    n_changed: int
    categories: tuple[str, ...]
    #: whether ``scale`` is the adapter's chosen scale (the table the report opens); the others are its other scales
    chosen: bool = True


@dataclass(frozen=True)
class LossPoint:
    step: int
    loss: float | None
    eval_loss: float | None


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str
    step: int | None
    message: str


@dataclass(frozen=True)
class TrainingCurve:
    adapter_id: str
    label: str
    run_id: str
    points: tuple[LossPoint, ...]
    findings: tuple[Finding, ...]
    #: logged losses that were NaN or infinite (left out of the curve, shown as a count)
    n_nonfinite: int = 0


@dataclass(frozen=True)
class LineageNode:
    adapter_id: str
    label: str
    depth: int
    parent_id: str | None
    in_report: bool


@dataclass(frozen=True)
class RunProvenance:
    run_id: str
    kind: str | None
    fields: tuple[tuple[str, str], ...]
    packages: tuple[tuple[str, str], ...]
    hashes: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RunReport:
    """One evaluation run of the report."""

    comparison: Comparison
    columns: tuple[Column, ...]
    overview: tuple[OverviewRow, ...]
    gates: tuple[Gate, ...]
    sweeps: tuple[AdapterSweep, ...]
    examples: tuple[ExampleTable, ...]


@dataclass(frozen=True)
class Report:
    title: str
    runs: tuple[RunReport, ...]
    training: tuple[TrainingCurve, ...]
    lineage: tuple[LineageNode, ...]
    provenance: tuple[RunProvenance, ...]
    max_examples: int
    max_text: int = MAX_TEXT
