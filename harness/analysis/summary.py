"""Plain-text summary tables, read back from the store (never from in-memory results)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from harness.analysis.build import build_comparison
from harness.analysis.report_types import RAW_METRICS
from harness.analysis.types import ROLE_ORDER, Comparison
from harness.store import Store
from harness.util.lineage import parents_first


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# Metrics not on a 0..1 scale: shown as numbers, not percentages.


def _pct(v: float | None, metric: str = "") -> str:
    if v is None:
        return "—"
    return f"{v:6.2f}" if metric in RAW_METRICS else f"{100 * v:5.1f}%"


def summary_table(c: Comparison) -> str:
    """Rows are (suite, metric), columns are the models (base, adapter@scale); retention follows."""
    def order(sm: tuple[str, str]) -> tuple:
        info = c.suite(sm[0])
        role = ROLE_ORDER.index(info.role) if info else len(ROLE_ORDER)
        return (role, sm[0], c.headline(sm[0]) != sm[1], sm[1])

    pairs = sorted({(x.suite, x.metric) for x in c.cells}, key=order)
    rows = []
    for suite, metric in pairs:
        first = next((x for x in c.cells if (x.suite, x.metric) == (suite, metric)), None)
        arrow = "" if first is None else (" ↑" if first.higher_is_better else " ↓")  # which way is better
        row = [suite, metric + arrow]
        for t in c.targets:
            cell = c.cell(t, suite, metric)
            row.append("—" if cell is None else f"{_pct(cell.mean, metric)} (n={cell.n_scored}/{cell.n}"
                       + (f", {cell.n_truncated} cut" if cell.n_truncated else "") + ")")
        rows.append(row)
    for suite in sorted({r.suite for r in c.retention}):
        by_target = {r.target: r for r in c.retention if r.suite == suite}
        rows.append([suite, "retention", *[
            f"{_pct(by_target[t].retention)} ({by_target[t].kept}/{by_target[t].base_correct})" if t in by_target
            else ("100.0%" if t == "base" else "—")
            for t in c.targets
        ]])
    return format_table(["suite", "metric", *c.targets], rows)


def category_tables(c: Comparison) -> str:
    """Per-category accuracy of each suite's headline metric: rows categories, columns models."""
    out = []
    for suite in sorted({k.suite for k in c.categories}):
        cells = {(k.category, k.target): k for k in c.categories if k.suite == suite}
        cats = sorted({cat for cat, _ in cells})
        targets = [t for t in c.targets if any((cat, t) in cells for cat in cats)]
        rows = [[cat, *[("—" if (cat, t) not in cells else f"{_pct(cells[(cat, t)].mean, cells[(cat, t)].metric)} (n={cells[(cat, t)].n})")
                         for t in targets]] for cat in cats]
        metric = next(iter(cells.values())).metric
        out.append(f"{suite}: {metric} by category\n" + format_table(["category", *targets], rows))
    return "\n\n".join(out)


def parents_before_children(c: Comparison, parent_of: Mapping[str, str | None]) -> Comparison:
    """``c`` with its models reordered: the base, then each adapter's scales, a parent adapter before its
    children (``parent_of``: adapter id -> parent id); otherwise in the order ``c`` has them."""
    ids = {x.target: x.adapter_id for x in c.cells}
    adapters = list(dict.fromkeys(i for i in (ids.get(t) for t in c.targets) if i is not None))
    rank = {aid: n for n, aid in enumerate(parents_first(adapters, parent_of))}
    pos = {t: n for n, t in enumerate(c.targets)}
    order = sorted(c.targets, key=lambda t: (t != "base", rank.get(ids.get(t) or "", -1), pos[t]))
    return replace(c, targets=tuple(order))


def print_run_summary(store: Store, run_id: str) -> Comparison:
    c = build_comparison(store, run_id)
    adapter_ids = sorted({x.adapter_id for x in c.cells if x.adapter_id})
    c = parents_before_children(c, {a.adapter_id: a.parent_adapter_id for a in store.queries.lineage(adapter_ids)})
    print(summary_table(c))
    if c.categories:
        print()
        print(category_tables(c))
    return c
