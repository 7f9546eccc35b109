"""What a report, a summary or a gate reads from the store, as typed records: never computed in templates.

- ``types``: the ``Comparison`` of one run (per target, suite and metric aggregates, retention,
  categories) and ``report_types``: everything the HTML report shows. Plain records that import
  nothing from the store, so ``reports/`` renders them without DuckDB.
- ``build``: the ``Comparison`` from the store, every aggregate a GROUP BY in DuckDB.
- ``report``: the full ``Report`` (overview, gates, sweeps), with ``examples`` (per-example diffs)
  and ``history`` (training curves, lineage, provenance).
"""

from harness.analysis.build import adapter_labels, build_comparison, suite_infos
from harness.analysis.report import build_report, resolve_adapters
from harness.analysis.report_types import (
    MAX_TEXT,
    RAW_METRICS,
    AdapterSweep,
    Answer,
    Column,
    ExampleDiff,
    ExampleTable,
    Finding,
    Gate,
    LineageNode,
    LossPoint,
    MetricCurve,
    OverviewCell,
    OverviewRow,
    Report,
    RunProvenance,
    RunReport,
    TrainingCurve,
)
from harness.analysis.types import ROLE_ORDER, CategoryCell, Cell, Comparison, Retention, Sample, SuiteInfo

__all__ = [
    "MAX_TEXT", "RAW_METRICS", "ROLE_ORDER", "AdapterSweep", "Answer", "CategoryCell", "Cell", "Column", "Comparison",
    "ExampleDiff", "ExampleTable", "Finding", "Gate", "LineageNode", "LossPoint", "MetricCurve", "OverviewCell",
    "OverviewRow", "Report", "Retention", "RunProvenance", "RunReport", "Sample", "SuiteInfo", "TrainingCurve",
    "adapter_labels", "build_comparison", "build_report", "resolve_adapters", "suite_infos",
]
