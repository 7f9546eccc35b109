"""Plain-text summary tables, read back from the store (never from in-memory results)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.comparison import HEADLINE, Comparison, build_comparison
from harness.store import Store


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:5.1f}%"


def summary_table(c: Comparison) -> str:
    """One row per model (base, adapter@scale), one column per suite's headline metric, plus retention."""
    suites = sorted({x.suite for x in c.cells if HEADLINE.get(x.suite) == x.metric})
    header = ["model", *[f"{s} ({HEADLINE[s]})" for s in suites]]
    has_ret = any(r.suite == "general-knowledge" for r in c.retention)
    if has_ret:
        header.append("gk retention")
    rows = []
    for t in c.targets:
        row = [t]
        for s in suites:
            cell = c.cell(t, s, HEADLINE[s])
            row.append("—" if cell is None else f"{_pct(cell.mean)} (n={cell.n_scored})")
        if has_ret:
            ret = next((r for r in c.retention if r.target == t and r.suite == "general-knowledge"), None)
            row.append("" if ret is None else f"{_pct(ret.retention)} ({ret.kept}/{ret.base_correct})")
        rows.append(row)
    return format_table(header, rows)


def print_run_summary(store: Store, run_id: str) -> Comparison:
    c = build_comparison(store, run_id)
    print(summary_table(c))
    return c
