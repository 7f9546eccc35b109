"""Terminal renderings of analysis results: the sweep's table per adapter. Nothing here computes a figure or
a decision; each function formats what it is given."""

from __future__ import annotations

from collections.abc import Sequence

from harness.analysis.summary import format_table
from harness.analysis.sweep import SweepView


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:5.1f}%"


def sweep_tables(views: Sequence[SweepView]) -> str:
    """One table per adapter: a row per scale (task; retention of knowledge and of behaviour where both were measured;
    leakage; drift; Pareto; release gates), then the recommendation and which of knowledge or behaviour was kept."""
    out = []
    for v in views:
        rec = v.recommendation
        both = "knowledge" in v.measured
        drift = "drift" in v.measured or both  # beside knowledge, an unmeasured drift shows as — with the hint below
        hint = ("\nbehaviour, leakage and drift not measured: they need general prompts the model answers; add a general "
                "suite that generates (e.g. --suite general-knowledge --suite format-leakage)"
                if both and all(p.retention is None for p in v.points if p.scale > 0) else "")
        rows = []
        for p in v.points:
            row = [f"{p.scale:g}" + (" (base)" if p.scale == 0 else ""), _pct(p.task) + (f" (n={p.n_task})" if p.n_task else "")]
            if both:
                row.append(_pct(p.knowledge) + (f" ({p.knowledge_kept}/{p.knowledge_base_correct})" if p.knowledge_base_correct else ""))
            row += [_pct(p.retention) + (f" ({p.kept}/{p.base_correct})" if p.base_correct else ""),
                    _pct(p.leakage) + (f" ({p.n_leaked}/{p.n_leakage})" if p.n_leakage else "")]
            if drift:
                row.append("—" if p.drift is None else f"{p.drift:.4f}")
            rows.append([*row, "*" if p.scale in v.front else "", v.gate_mark(p.scale), "<- ship" if rec.scale == p.scale else ""])
        judged = v.blocked is not None
        headers = ["scale", "task"] + (["knowledge", "behaviour"] if both else ["retention"]) + ["leakage"] \
            + (["drift (KL)"] if drift else []) + ["pareto", "release gates" if judged else "", ""]
        what = "task ↑, " + ("knowledge ↑ (likelihood), behaviour ↑ (answers)" if both else "retention ↑") + ", leakage ↓" \
            + (", drift ↓ (nats/token)" if drift else "")
        diagnosis = v.diagnosis
        out.append(f"\n{v.label}: {what} per scale (* = Pareto front"
                   + ("; release gates judged at every scale" if judged else "") + ")\n"
                   + format_table(headers, rows)
                   + f"\nrecommendation: {rec.sentence}" + (f"\nknowledge or behaviour: {diagnosis}" if diagnosis else "")
                   + hint)
    return "\n".join(out)
