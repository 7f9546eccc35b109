"""The typed ``Comparison`` a report renders: built from the store, never computed in templates.

Retention follows DESIGN.md: of the general-knowledge items the base model answers correctly, the
share the adapter still answers correctly (absolute accuracy is reported beside it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.store import Store

# Databases written before suites declared roles (schema < 5) hold no role: these built-in suites are
# read as they were meant. Everything written since reads the suite's own role and headline.
_LEGACY = {"order-task": ("task", "json_exact"), "general-knowledge": ("general", "alias_match"),
           "format-leakage": ("leakage", "format_leakage"), "text-generation": ("reference", "rougeL")}
ROLE_ORDER = ("task", "general", "leakage", "reference")


@dataclass(frozen=True)
class SuiteInfo:
    """What a suite measures, as it declared it: role, headline metric, metric directions."""

    name: str
    role: str
    headline: str | None
    directions: tuple[tuple[str, bool], ...] = ()

    def higher_is_better(self, metric: str) -> bool:
        from harness.suites import higher_is_better

        return higher_is_better(metric, dict(self.directions))


@dataclass(frozen=True)
class Cell:
    """One (target, suite, metric) aggregate: mean over scored examples, with counts."""

    target: str
    adapter_id: str | None
    scale: float
    suite: str
    metric: str
    mean: float | None
    n: int
    n_scored: int
    #: answers cut by max_new_tokens (they may be incomplete, and a cut number can match a wrong alias)
    n_truncated: int = 0
    higher_is_better: bool = True


@dataclass(frozen=True)
class Retention:
    target: str
    suite: str
    metric: str
    base_correct: int
    kept: int
    retention: float | None


@dataclass(frozen=True)
class CategoryCell:
    target: str
    suite: str
    category: str
    metric: str
    mean: float | None
    n: int


@dataclass(frozen=True)
class Sample:
    suite: str
    example_id: str
    input: str
    target: str | None
    outputs: tuple[tuple[str, str | None, float | None], ...]  # (target label, output, headline score)


@dataclass(frozen=True)
class Comparison:
    title: str
    run_id: str
    base_model: str
    targets: tuple[str, ...]
    cells: tuple[Cell, ...]
    retention: tuple[Retention, ...]
    categories: tuple[CategoryCell, ...]
    samples: tuple[Sample, ...]
    provenance: tuple[tuple[str, str], ...]
    suites: tuple[SuiteInfo, ...] = ()

    def suite(self, name: str) -> SuiteInfo | None:
        return next((x for x in self.suites if x.name == name), None)

    def headline(self, suite: str) -> str | None:
        info = self.suite(suite)
        return info.headline if info else None

    def cell(self, target: str, suite: str, metric: str) -> Cell | None:
        for c in self.cells:
            if (c.target, c.suite, c.metric) == (target, suite, metric):
                return c
        return None


def _label(adapter_label: str | None, scale: float) -> str:
    return "base" if adapter_label is None or scale == 0 else f"{adapter_label}@{scale:g}"


def adapter_labels(store: Store, run_id: str) -> dict[str, str]:
    """Unique display labels of the adapters in one run (adapter id -> label); ids stay the keys."""
    import json

    from harness.labels import unique_labels

    rows = store.query(
        "SELECT DISTINCT a.adapter_id, a.name, a.path FROM adapters a JOIN generations g USING (adapter_id) "
        "JOIN run_results rr USING (cache_key) WHERE rr.run_id = ?", [run_id])
    cfg = store.query("SELECT config FROM runs WHERE run_id = ?", [run_id])
    try:
        names = (json.loads(cfg[0]["config"]) or {}).get("names") or {} if cfg and cfg[0]["config"] else {}
    except (ValueError, AttributeError):
        names = {}
    return unique_labels({r["adapter_id"]: (r["name"], r["path"]) for r in rows}, names if isinstance(names, dict) else {})


def suite_infos(store: Store, run_id: str) -> dict[str, SuiteInfo]:
    """The role, headline and directions of every suite in one run (the newest version of each name)."""
    import json

    rows = store.query(
        "SELECT DISTINCT s.name, s.role, s.headline, s.directions, s.suite_id FROM suites s "
        "JOIN generations g ON g.suite_id = s.suite_id JOIN run_results rr ON rr.cache_key = g.cache_key "
        "WHERE rr.run_id = ? ORDER BY s.name", [run_id])
    out: dict[str, SuiteInfo] = {}
    for r in rows:
        role, headline = r["role"], r["headline"]
        if role is None:
            role, headline = _LEGACY.get(r["name"], ("task", None))
        try:
            directions = json.loads(r["directions"]) if r["directions"] else {}
        except ValueError:
            directions = {}
        info = SuiteInfo(r["name"], role, headline, tuple(sorted((str(k), bool(v)) for k, v in directions.items())))
        # a cached row can carry an older version's suite_id; a declared role beats a legacy guess
        if r["name"] not in out or (out[r["name"]].headline is None and headline is not None) or r["role"] is not None:
            out[r["name"]] = info
    return out


def build_comparison(store: Store, run_id: str, title: str = "adapter-harness report", samples_per_suite: int = 5,
                     adapter_ids: Collection[str] | None = None) -> Comparison:
    """Read one run's per-example scores from the store and aggregate them for a report.

    ``adapter_ids`` keeps only those adapters (and the base model); None keeps every adapter.
    """
    only = "" if adapter_ids is None else "AND (adapter_id IS NULL OR adapter_id IN (SELECT unnest(?)))"
    rows = store.query(
        f"""
        SELECT adapter_name, adapter_id, scale, suite_name AS suite, example_id, metric, value,
               input, target, category, output, base_model_name, output_truncated
        FROM v_scores WHERE run_id = ? {only}
        ORDER BY suite, example_id
        """,
        [run_id] if adapter_ids is None else [run_id, list(adapter_ids)],
    )
    base_model = rows[0]["base_model_name"] if rows else "?"
    labels = adapter_labels(store, run_id)
    infos = suite_infos(store, run_id)
    for name in {r["suite"] for r in rows} - set(infos):
        role, headline = _LEGACY.get(name, ("task", None))
        infos[name] = SuiteInfo(name, role, headline)

    def direction(suite: str, metric: str) -> bool:
        return infos[suite].higher_is_better(metric)
    groups: dict[tuple, list[float | None]] = defaultdict(list)
    cut: dict[tuple, int] = defaultdict(int)
    ids: dict[tuple, str | None] = {}
    per_example: dict[tuple, float | None] = {}
    cats: dict[tuple, list[float]] = defaultdict(list)
    texts: dict[tuple, dict] = {}
    targets: list[str] = []
    for r in rows:
        label = _label(labels.get(r["adapter_id"], r["adapter_name"]) if r["adapter_id"] else None, r["scale"])
        if label not in targets:
            targets.append(label)
        key = (label, r["scale"], r["suite"], r["metric"])
        groups[key].append(r["value"])
        cut[key] += bool(r["output_truncated"])
        ids[key] = r["adapter_id"]
        per_example[(label, r["suite"], r["metric"], r["example_id"])] = r["value"]
        if r["category"] and r["value"] is not None:
            cats[(label, r["suite"], r["category"], r["metric"])].append(r["value"])
        texts.setdefault((r["suite"], r["example_id"]), {"input": r["input"], "target": r["target"], "out": {}})
        texts[(r["suite"], r["example_id"])]["out"][label] = r["output"]
    targets.sort(key=lambda t: (t != "base", t))
    cells = tuple(
        Cell(label, ids[(label, scale, suite, metric)], scale, suite, metric,
             _mean(vals), len(vals), sum(v is not None for v in vals), cut[(label, scale, suite, metric)],
             direction(suite, metric))
        for (label, scale, suite, metric), vals in sorted(groups.items(), key=lambda kv: (targets.index(kv[0][0]), kv[0][2], kv[0][3]))
    )
    retention = []
    present = {k[:3] for k in per_example}
    for suite, info in sorted(infos.items()):
        if info.role != "general" or not info.headline:
            continue
        metric = info.headline
        base_ok = {ex for (lab, s, m, ex), v in per_example.items() if (lab, s, m) == ("base", suite, metric) and v == 1.0}
        for label in targets:
            if label == "base":
                continue
            kept = sum(per_example.get((label, suite, metric, ex)) == 1.0 for ex in base_ok)
            # shown also when the base got nothing right: retention is then undefined (—, 0/0), not hidden
            if (label, suite, metric) in present:
                retention.append(Retention(label, suite, metric, len(base_ok), kept, kept / len(base_ok) if base_ok else None))
    categories = tuple(
        CategoryCell(label, suite, cat, metric, _mean(vals), len(vals))
        for (label, suite, cat, metric), vals in sorted(cats.items())
        if infos[suite].headline == metric
    )
    samples = []
    for suite in sorted({s for s, _ in texts}, key=lambda n: (ROLE_ORDER.index(infos[n].role), n)):
        shown = infos[suite].headline
        for (_, ex), t in list((k, v) for k, v in texts.items() if k[0] == suite)[:samples_per_suite]:
            outs = tuple((lab, t["out"].get(lab), per_example.get((lab, suite, shown, ex))) for lab in targets)
            samples.append(Sample(suite, ex, t["input"], t["target"], outs))
    prov = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    provenance = tuple((k, str(v)) for k, v in (prov[0].items() if prov else ()) if v is not None)
    ordered = tuple(sorted(infos.values(), key=lambda i: (ROLE_ORDER.index(i.role), i.name)))
    return Comparison(title, run_id, base_model, tuple(targets), cells, tuple(retention), categories, tuple(samples),
                      provenance, ordered)


def _mean(vals: Sequence[float | None]) -> float | None:
    # Never trust an average over NULLs: a mean over the scored values only, and None when none are.
    scored = [v for v in vals if v is not None]
    return sum(scored) / len(scored) if scored else None


# -- the full report: overview, sweeps, training curves, per-example diffs, lineage, provenance ---------
# Everything a report shows is decided here, from the store; reports/ turns it into HTML and charts.

#: texts longer than this are cut in the per-example table (the store keeps them whole)
MAX_TEXT = 2000
#: metrics not on a 0..1 scale: "failed" is judged against the base model for them, not against 0.5
RAW_METRICS = frozenset({"bleu", "chrf", "nll", "perplexity"})


@dataclass(frozen=True)
class MetricCurve:
    """One metric of one suite at every scale of an adapter (the base model is scale 0)."""

    suite: str
    metric: str
    higher_is_better: bool
    points: tuple[tuple[float, float | None], ...]


@dataclass(frozen=True)
class AdapterSweep:
    """An adapter's sweep: harness.sweep's curve, Pareto front and recommendation, and other metrics."""

    adapter_id: str
    label: str
    points: tuple  # tuple[harness.sweep.ScalePoint, ...]
    front: tuple[float, ...]
    recommended: float | None
    sentence: str
    #: the scale the per-example table shows: the recommended one, else 1.0 (or the nearest evaluated)
    chosen: float
    curves: tuple[MetricCurve, ...] = ()


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
    """The per-example comparison of one adapter at its chosen scale, regressions first, capped."""

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


def resolve_adapters(store: Store, run_ids: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """Adapter ids of the runs named by id, id prefix (6+ characters) or label; an InputError for a
    name that matches no adapter of any of the runs."""
    from harness.errors import InputError

    labels: dict[str, str] = {}
    for run_id in run_ids:
        labels.update(adapter_labels(store, run_id))
    names = {r["adapter_id"]: r["name"] for r in store.query(
        "SELECT adapter_id, name FROM adapters WHERE adapter_id IN (SELECT unnest(?))", [list(labels)])}
    out: list[str] = []
    for w in wanted:
        hits = [a for a, lab in labels.items()
                if w in (a, lab, names.get(a)) or (len(w) >= 6 and a.startswith(w))]
        if not hits:
            known = ", ".join(sorted(labels.values())) or "none"
            raise InputError(f"--adapter {w!r}: not in run {', '.join(run_ids)} (its adapters: {known})")
        out.extend(h for h in hits if h not in out)
    return out


def build_report(store: Store, run_ids: Sequence[str], adapter_ids: Collection[str] | None = None,
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
    # one read-only connection for the whole report: opening DuckDB costs tens of ms per query
    with store.connect(write=False) as con:
        reader: Any = _Reader(con)
        runs = []
        for run_id in run_ids:
            c = build_comparison(reader, run_id, title=title, adapter_ids=adapter_ids)
            runs.append(_run_report(reader, run_id, c, max_examples, baseline))
        ids = [s.adapter_id for r in runs for s in r.sweeps]
        ids = list(dict.fromkeys(ids))
        labels = {s.adapter_id: s.label for r in runs for s in r.sweeps}
        training = _training(reader, ids, labels)
        lineage = _lineage(reader, ids, labels)
        train_runs = list(dict.fromkeys(t.run_id for t in training))
        provenance = tuple(_provenance(reader, r) for r in [*run_ids, *[t for t in train_runs if t not in run_ids]])
    return Report(title, tuple(runs), training, lineage, provenance, max_examples)


class _Reader:
    """``Store.query`` over one open connection (the store's lock is held while it lives)."""

    def __init__(self, con: Any) -> None:
        self.con = con

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]


def _chosen_scale(points: Sequence, recommended: float | None) -> float:
    scales = [p.scale for p in points if p.scale > 0]
    if recommended is not None:
        return recommended
    if not scales:
        return 0.0
    return min(scales, key=lambda s: (abs(s - 1.0), s))


def _run_report(store: Store, run_id: str, c: Comparison, max_examples: int, baseline: str | None) -> RunReport:
    from harness import sweep

    ids = list(dict.fromkeys(x.adapter_id for x in c.cells if x.adapter_id))
    label_of = {x.adapter_id: x.target.rsplit("@", 1)[0] for x in c.cells if x.adapter_id}
    sweeps = []
    reference = [s for s in c.suites if s.role == "reference"]
    for aid in ids:
        points = sweep.curve(c, aid)
        rec = sweep.recommend(points)
        front = tuple(p.scale for p in sweep.pareto_front(points))
        by_scale = {0.0: "base", **{x.scale: x.target for x in c.cells if x.adapter_id == aid}}
        curves = []
        for info in reference:
            for metric in sorted({x.metric for x in c.cells if x.suite == info.name}, key=lambda m: (m != info.headline, m)):
                pts = tuple((s, (c.cell(t, info.name, metric) or _NO_CELL).mean) for s, t in sorted(by_scale.items()))
                curves.append(MetricCurve(info.name, metric, info.higher_is_better(metric), pts))
        sweeps.append(AdapterSweep(aid, label_of[aid], tuple(points), front, rec.scale, rec.sentence,
                                   _chosen_scale(points, rec.scale), tuple(curves)))
    columns = _columns(c)
    gates = _gates(store, run_id, c)
    recommended = {(s.adapter_id, s.recommended) for s in sweeps}
    overview = []
    for t in c.targets:
        first = next(x for x in c.cells if x.target == t)
        row_aid = first.adapter_id if t != "base" else None
        cells = tuple(_overview_cell(c, t, col) for col in columns)
        overview.append(OverviewRow(t, row_aid, first.scale if row_aid else 0.0, (row_aid, first.scale) in recommended, cells,
                                    tuple(g for g in gates if g.target == t)))
    examples = _examples(store, run_id, c, sweeps, max_examples, baseline)
    return RunReport(c, columns, tuple(overview), gates, tuple(sweeps), examples)


_NO_CELL = Cell("", None, 0.0, "", "", None, 0, 0)


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
        from harness.sweep import MIN_RETENTION

        # retention is 1.0 for the base by definition: judged against the sweep's gate instead
        verdict = None if r.retention is None else ("same" if r.retention >= MIN_RETENTION else "worse")
        return OverviewCell(r.retention, r.kept, r.base_correct, verdict)
    cell = c.cell(target, col.suite, col.metric)
    if cell is None:
        return OverviewCell(None, 0, 0, None)
    base = c.cell("base", col.suite, col.metric)
    return OverviewCell(cell.mean, cell.n_scored, cell.n,
                        None if target == "base" else _verdict(cell.mean, base.mean if base else None, col.higher_is_better),
                        col.metric in RAW_METRICS)


def _verdict(value: float | None, base: float | None, higher_is_better: bool) -> str | None:
    if value is None or base is None:
        return None
    if abs(value - base) < 1e-9:
        return "same"
    return "better" if (value > base) == higher_is_better else "worse"


def _gates(store: Store, run_id: str, c: Comparison) -> tuple[Gate, ...]:
    rows = store.query("SELECT * FROM gate_results WHERE run_id = ? ORDER BY seq", [run_id])
    out = []
    labels = {(x.adapter_id, x.scale): x.target for x in c.cells if x.adapter_id}
    for r in rows:
        # gate rows name the run; a later schema may add the adapter (and scale) a gate judged
        target = r.get("target")
        if target is None and r.get("adapter_id"):
            target = labels.get((r["adapter_id"], r.get("scale", 1.0)))
        out.append(Gate(str(r["gate"]), str(r["metric"] or ""), _finite(r["observed"]), _finite(r["threshold"]),
                        _finite(r["baseline"]), bool(r["passed"]), str(r["message"] or ""), target))
    return tuple(out)


def _finite(v: float | None) -> float | None:
    import math

    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _examples(store: Store, run_id: str, c: Comparison, sweeps: Sequence[AdapterSweep], max_examples: int,
              baseline: str | None) -> tuple[ExampleTable, ...]:
    if not sweeps:
        return ()
    parents = {r["adapter_id"]: r["parent_adapter_id"] for r in store.query(
        "SELECT adapter_id, parent_adapter_id FROM adapters WHERE adapter_id IN (SELECT unnest(?))",
        [[s.adapter_id for s in sweeps]])}
    by_id = {s.adapter_id: s for s in sweeps}
    chosen_baseline = None
    if baseline is not None:
        chosen_baseline = next((s.adapter_id for s in sweeps if baseline in (s.adapter_id, s.label)
                                or (len(baseline) >= 6 and s.adapter_id.startswith(baseline))), None)
    pairs = {(s.adapter_id, s.chosen) for s in sweeps}
    headline = {i.name: i.headline for i in c.suites if i.headline}
    rows = store.query(
        """
        SELECT v.adapter_id, v.scale, v.suite_name AS suite, v.example_id, v.category, v.input, v.target,
               v.output, v.error, v.metric, v.value
        FROM v_scores v
        LEFT JOIN (SELECT unnest(?) AS aid, unnest(?) AS sc) p ON p.aid = v.adapter_id AND p.sc = v.scale
        WHERE v.run_id = ? AND (v.adapter_id IS NULL OR p.aid IS NOT NULL)
        ORDER BY v.suite_name, v.example_id
        """,
        [[a for a, _ in pairs], [s for _, s in pairs], run_id])
    texts: dict[tuple[str, str], tuple[str, str | None, str | None]] = {}
    answers: dict[tuple[str | None, str, str], Answer] = {}
    for r in rows:
        if headline.get(r["suite"]) != r["metric"]:
            continue
        key = (r["suite"], r["example_id"])
        texts.setdefault(key, (r["input"] or "", r["target"], r["category"]))
        who = r["adapter_id"] if r["adapter_id"] and r["scale"] != 0 else None
        label = "base" if who is None else by_id[who].label + f"@{r['scale']:g}"
        answer_key = (who, *key)  # built first: mypy 2.4 misreads d[(a, *b)] as Python 3.11's d[a, *b]
        answers[answer_key] = Answer(label, _clip(r["output"]), r["value"], _clip(r["error"]))
    tables = []
    for s in sweeps:
        base_line = chosen_baseline if chosen_baseline and chosen_baseline != s.adapter_id else None
        if base_line is None and parents.get(s.adapter_id) in by_id:
            base_line = parents[s.adapter_id]
        diffs = []
        for key, (inp, ref, cat) in texts.items():
            mine = answers.get((s.adapter_id, *key))
            if mine is None:
                continue
            info = c.suite(key[0])
            hib = info.higher_is_better(headline[key[0]]) if info else True
            base = answers.get((None, *key))
            diffs.append(_diff(key, cat, headline[key[0]], hib, inp, ref, base, mine,
                               answers.get((base_line, *key)) if base_line else None))
        rank = {"regression": 0, "improved": 1, "changed": 2, "same": 3}
        diffs.sort(key=lambda d: (rank[d.status], not d.failed))
        cats = tuple(sorted({d.category for d in diffs if d.category}))
        tables.append(ExampleTable(
            s.adapter_id, s.label, s.chosen, by_id[base_line].label if base_line else None, tuple(diffs[:max_examples]),
            len(diffs), sum(d.status == "regression" for d in diffs), sum(d.failed for d in diffs),
            sum(d.changed for d in diffs), cats))
    return tuple(tables)


def _diff(key: tuple[str, str], cat: str | None, metric: str, hib: bool, inp: str, ref: str | None,
          base: Answer | None, mine: Answer, baseline: Answer | None) -> ExampleDiff:
    verdict = _verdict(mine.score, base.score if base else None, hib)
    if base is not None and base.score is not None and mine.score is None:
        verdict = "worse"  # an error where the base answered
    changed = base is not None and (mine.output or "") != (base.output or "")
    status = {"worse": "regression", "better": "improved"}.get(verdict or "", "changed" if changed else "same")
    if metric in RAW_METRICS:
        failed = mine.score is None or status == "regression"
    else:
        failed = mine.score is None or (mine.score < 0.5 if hib else mine.score > 0.5)
    return ExampleDiff(key[0], key[1], cat, metric, hib, _clip(inp) or "", _clip(ref), base, mine, baseline,
                       status, failed, changed)


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    # a lone surrogate cannot be written as UTF-8: it becomes U+FFFD, as any decoder would show it
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if len(text) > MAX_TEXT:
        return text[:MAX_TEXT] + f" … [{len(text) - MAX_TEXT} more characters]"
    return text


def _training(store: Store, ids: Sequence[str], labels: dict[str, str]) -> tuple[TrainingCurve, ...]:
    import math

    if not ids:
        return ()
    steps = store.query("SELECT run_id, adapter_id, step, loss, eval_loss FROM step_logs "
                        "WHERE adapter_id IN (SELECT unnest(?)) ORDER BY run_id, seq", [list(ids)])
    finds = store.query("SELECT run_id, adapter_id, kind, severity, step, message FROM findings "
                        "WHERE adapter_id IN (SELECT unnest(?)) ORDER BY run_id, seq", [list(ids)])
    groups: dict[tuple[str, str], list[LossPoint]] = defaultdict(list)
    bad: dict[tuple[str, str], int] = defaultdict(int)
    for r in steps:
        key = (r["adapter_id"], r["run_id"])
        loss, ev = r["loss"], r["eval_loss"]
        for v in (loss, ev):
            bad[key] += v is not None and not math.isfinite(v)
        groups[key].append(LossPoint(int(r["step"] or 0), _finite(loss), _finite(ev)))
    found: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for r in finds:
        found[(r["adapter_id"], r["run_id"])].append(Finding(str(r["kind"]), str(r["severity"]), r["step"], str(r["message"] or "")))
    keys = sorted(set(groups) | set(found), key=lambda k: (ids.index(k[0]), k[1]))
    return tuple(TrainingCurve(a, labels.get(a, a[:12]), run, tuple(groups.get((a, run), ())),
                               tuple(found.get((a, run), ())), bad.get((a, run), 0)) for a, run in keys)


def _lineage(store: Store, ids: Sequence[str], labels: dict[str, str]) -> tuple[LineageNode, ...]:
    """The reported adapters with their ancestors, as a forest in depth-first order."""
    known: dict[str, tuple[str | None, str | None]] = {}
    todo = list(ids)
    while todo:
        rows = store.query("SELECT adapter_id, parent_adapter_id, name FROM adapters WHERE adapter_id IN (SELECT unnest(?))",
                           [todo])
        todo = []
        for r in rows:
            if r["adapter_id"] not in known:
                known[r["adapter_id"]] = (r["parent_adapter_id"], r["name"])
                if r["parent_adapter_id"] and r["parent_adapter_id"] not in known:
                    todo.append(r["parent_adapter_id"])
    if not any(p for p, _ in known.values()):
        return ()  # no continued fine-tune: nothing to draw
    for parent, _ in list(known.values()):
        if parent and parent not in known:
            known[parent] = (None, None)  # a parent the store never saw: shown by its id
    children: dict[str | None, list[str]] = defaultdict(list)
    for aid, (parent, _) in known.items():
        children[parent].append(aid)
    out: list[LineageNode] = []

    def walk(aid: str, depth: int) -> None:
        if depth > 64:
            return  # a cycle in hand-edited data: stop rather than recurse forever
        name = known[aid][1]
        out.append(LineageNode(aid, labels.get(aid) or name or aid[:12], depth, known[aid][0], aid in ids))
        for child in sorted(children.get(aid, ()), key=lambda a: labels.get(a) or known[a][1] or a):
            walk(child, depth + 1)

    for root in sorted(children[None], key=lambda a: labels.get(a) or known[a][1] or a):
        walk(root, 0)
    return tuple(out)


def _provenance(store: Store, run_id: str) -> RunProvenance:
    import json

    rows = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    r = rows[0] if rows else {"run_id": run_id}
    fields = tuple((k, str(r[k])) for k in ("kind", "status", "command", "git_commit", "git_dirty", "device", "python",
                                            "seed", "started_at", "finished_at", "host", "n_expected")
                   if r.get(k) is not None)
    try:
        packages = tuple(sorted((str(k), str(v)) for k, v in (json.loads(r.get("packages") or "{}") or {}).items()))
    except (ValueError, AttributeError):
        packages = (("(unreadable)", str(r.get("packages"))),)
    hashes: list[tuple[str, str]] = []
    used = [] if r.get("kind") == "train" else store.query(
        "SELECT DISTINCT g.base_model_id, g.adapter_id, s.name AS suite, g.suite_id FROM generations g "
        "JOIN run_results rr USING (cache_key) LEFT JOIN suites s USING (suite_id) WHERE rr.run_id = ?", [run_id])
    for b in sorted({u["base_model_id"] for u in used if u["base_model_id"]}):
        hashes.append(("base model", b))
    for a in sorted({u["adapter_id"] for u in used if u["adapter_id"]}):
        hashes.append(("adapter", a))
    for name, sid in sorted({(u["suite"] or "?", u["suite_id"]) for u in used}):
        hashes.append((f"suite {name}", sid))
    for a in store.query("SELECT DISTINCT a.adapter_id, a.harness FROM adapters a JOIN step_logs s USING (adapter_id) "
                         "WHERE s.run_id = ?", [run_id]):
        hashes.append(("adapter", a["adapter_id"]))
        try:
            h = json.loads(a["harness"]) if a["harness"] else {}
        except ValueError:
            h = {}
        h = h if isinstance(h, dict) else {}
        for label, value in (("training data", (h.get("data") or {}).get("hash")),
                             ("base model", (h.get("base_model") or {}).get("model_id")),
                             ("parent adapter", (h.get("parent_adapter") or {}).get("adapter_id"))):
            if value:
                hashes.append((label, str(value)))
    return RunProvenance(run_id, r.get("kind"), fields, packages, tuple(hashes))
