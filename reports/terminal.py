"""Terminal renderings of analysis results: the sweep's table per adapter. Nothing here computes a figure or
a decision; each function formats what it is given."""

from __future__ import annotations

from collections.abc import Sequence

from harness.analysis.summary import format_table
from harness.analysis.sweep import SweepView


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:5.1f}%"


def sweep_tables(views: Sequence[SweepView]) -> str:
    """One table per adapter: a row per scale (task, retention, leakage, Pareto), then the recommendation."""
    out = []
    for v in views:
        rec = v.recommendation
        rows = [[f"{p.scale:g}" + (" (base)" if p.scale == 0 else ""), _pct(p.task) + (f" (n={p.n_task})" if p.n_task else ""),
                 _pct(p.retention) + (f" ({p.kept}/{p.base_correct})" if p.base_correct else ""),
                 _pct(p.leakage) + (f" ({p.n_leaked}/{p.n_leakage})" if p.n_leakage else ""),
                 "*" if p.scale in v.front else "", v.gate_mark(p.scale), "<- ship" if rec.scale == p.scale else ""]
                for p in v.points]
        judged = v.blocked is not None
        out.append(f"\n{v.label}: task ↑, retention ↑, leakage ↓ per scale (* = Pareto front"
                   + ("; release gates judged at every scale" if judged else "") + ")\n"
                   + format_table(["scale", "task", "retention", "leakage", "pareto", "release gates" if judged else "", ""],
                                  rows)
                   + f"\nrecommendation: {rec.sentence}")
    return "\n".join(out)
