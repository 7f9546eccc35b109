"""Build the ``Comparison`` of one run from the store: every aggregate is a GROUP BY in DuckDB.

Retention follows DESIGN.md: of the general-knowledge items the base model answers correctly, the
share the adapter still answers correctly (absolute accuracy is reported beside it). A target is the
base model (no adapter, or scale 0) or one adapter at one scale, labelled ``label@scale``; labels are
for display, ids stay the keys. Only aggregate rows (a few per target and suite) and the handful of
sample examples reach Python, never the per-example rows.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from harness.analysis.types import ROLE_ORDER, CategoryCell, Cell, Comparison, Retention, Sample, SuiteInfo

if TYPE_CHECKING:
    from harness.store import Store

# Databases written before suites declared roles (schema < 5) hold no role: these built-in suites are
# read as they were meant. Everything written since reads the suite's own role and headline.
_LEGACY = {"order-task": ("task", "json_exact"), "general-knowledge": ("general", "alias_match"),
           "format-leakage": ("leakage", "format_leakage"), "text-generation": ("reference", "rougeL")}

#: GROUPING() of the three groupings of build_comparison's one pass (a bit for each column left out)
_CELLS, _CATEGORIES, _EXAMPLES = 0b0011, 0b0001, 0b1110


class _Group(NamedTuple):
    """One row of build_comparison's pass: a cell, a category of a cell, or a (suite, example) pair."""

    kind: int
    adapter_id: str | None
    scale: float
    suite: str
    metric: str
    category: str | None
    example_id: str | None
    n: int
    n_scored: int
    total: float | None
    n_truncated: int
    first_example: str | None
    base_model: str | None
#: the base model's rows: no adapter, or an adapter at scale 0 (as ``target_label`` reads them)
IS_BASE = "(adapter_id IS NULL OR adapter_id = '' OR scale = 0)"


class Reader:
    """Queries over one open read-only connection (the store's lock is held while it lives)."""

    def __init__(self, con: Any) -> None:
        self.con = con
        self._parts: dict[str, list[tuple[Any, ...]]] = {}

    def run_parts(self, run_id: str) -> list[tuple[Any, ...]]:
        """The distinct (base model id, adapter id, suite id) of a run's results, read once per run."""
        if run_id not in self._parts:
            self._parts[run_id] = self.rows(
                "SELECT DISTINCT g.base_model_id, g.adapter_id, g.suite_id FROM generations g "
                "JOIN run_results rr USING (cache_key) WHERE rr.run_id = ?", [run_id])
        return self._parts[run_id]

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, list(params)).fetchall()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]


@contextmanager
def reading(store: Store | Reader) -> Iterator[Reader]:
    """One read-only connection for a whole build (opening DuckDB costs tens of ms a query)."""
    if isinstance(store, Reader):
        yield store
        return
    with store.connect(write=False) as con:
        yield Reader(con)


def finite(v: Any) -> float | None:
    """A stored number as a float, or None when it is missing or not finite."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def target_label(labels: dict[str, str], adapter_id: str | None, scale: float) -> str:
    """``base`` for the base model (no adapter, or scale 0), else ``label@scale``."""
    if not adapter_id or scale == 0:
        return "base"
    return f"{labels.get(adapter_id) or adapter_id[:12]}@{scale:g}"


def adapter_labels(store: Store | Reader, run_id: str) -> dict[str, str]:
    """Unique display labels of the adapters in one run (adapter id -> label); ids stay the keys."""
    from harness.util.labels import unique_labels

    with reading(store) as r:
        ids = sorted({aid for _, aid, _ in r.run_parts(run_id) if aid is not None})
        rows = r.rows("SELECT adapter_id, name, path FROM adapters WHERE adapter_id IN (SELECT unnest(?))", [ids]) if ids else []
        cfg = r.rows("SELECT config FROM runs WHERE run_id = ?", [run_id])
    try:
        names = (json.loads(cfg[0][0]) or {}).get("names") or {} if cfg and cfg[0][0] else {}
    except (ValueError, AttributeError):
        names = {}
    return unique_labels({aid: (name, path) for aid, name, path in rows}, names if isinstance(names, dict) else {})


def suite_infos(store: Store | Reader, run_id: str) -> dict[str, SuiteInfo]:
    """The role, headline and directions of every suite in one run (the newest version of each name)."""
    with reading(store) as r:
        ids = sorted({sid for _, _, sid in r.run_parts(run_id) if sid is not None})
        rows = r.rows("SELECT name, role, headline, directions, suite_id, kind FROM suites WHERE suite_id IN (SELECT unnest(?)) "
                      "ORDER BY name", [ids]) if ids else []
    out: dict[str, SuiteInfo] = {}
    for name, declared_role, declared_headline, directions_json, _, kind in rows:
        role, headline = declared_role, declared_headline
        if role is None:
            role, headline = _LEGACY.get(name, ("task", None))
        try:
            directions = json.loads(directions_json) if directions_json else {}
        except ValueError:
            directions = {}
        info = SuiteInfo(name, role, headline, tuple(sorted((str(k), bool(v)) for k, v in directions.items())),
                         kind or "generate")
        # a cached row can carry an older version's suite_id; a declared role beats a legacy guess
        if name not in out or (out[name].headline is None and headline is not None) or declared_role is not None:
            out[name] = info
    return out


def _only(adapter_ids: Collection[str] | None) -> tuple[str, list[Any]]:
    """The SQL condition (and its parameter) that keeps only these adapters and the base model."""
    if adapter_ids is None:
        return "", []
    return "AND (adapter_id IS NULL OR adapter_id IN (SELECT unnest(?)))", [list(adapter_ids)]


def _pairs(pairs: Sequence[tuple[str, str]]) -> tuple[str, list[Any], str, list[Any]]:
    """(suite_name, metric) pairs as a relation to join on and its parameters, and a condition (with
    its parameters) that lets DuckDB drop the other rows while it scans (the join alone does not)."""
    suites, metrics = [s for s, _ in pairs], [m for _, m in pairs]
    return ("(SELECT unnest(?) AS suite_name, unnest(?) AS metric)", [suites, metrics],
            "AND metric IN (SELECT unnest(?)) AND suite_name IN (SELECT unnest(?))", [sorted(set(metrics)), sorted(set(suites))])


def build_comparison(store: Store | Reader, run_id: str, title: str = "adapter-harness report", samples_per_suite: int = 5,
                     adapter_ids: Collection[str] | None = None) -> Comparison:
    """Read one run's aggregates from the store for a report, a summary or a gate.

    ``adapter_ids`` keeps only those adapters (and the base model); None keeps every adapter.
    ``samples_per_suite``: the first examples of each suite (by id) with every target's answer.
    """
    with reading(store) as r:
        labels = adapter_labels(r, run_id)
        infos = suite_infos(r, run_id)
        only, only_params = _only(adapter_ids)
        # One pass over the run's scores for three groupings: per target, suite and metric (the cells),
        # the same per category, and the run's (suite, example) pairs (for the samples).
        # mean = sum / n_scored: NULL scores (an error, a scorer that could not judge) are never averaged
        # in. fsum is a compensated sum: DuckDB adds rows in parallel in no fixed order, and a plain
        # sum's last digits would move with it. (The third grouping only when samples are asked for;
        # the GROUPING() codes stay the same.)
        kind, example, third = (("GROUPING(adapter_id, metric, category, example_id)", "example_id", ", (suite_name, example_id)")
                                if samples_per_suite > 0 else ("GROUPING(adapter_id, metric, category) * 2 + 1", "NULL", ""))
        grouped = [_Group(*g) for g in r.rows(
            f"""
            SELECT {kind}, adapter_id, scale, suite_name, metric, category, {example},
                   count(*), count(value), fsum(value), count(*) FILTER (WHERE output_truncated),
                   min(example_id), arg_min(base_model_name, example_id)
            FROM v_scores WHERE run_id = ? {only}
            GROUP BY GROUPING SETS ((adapter_id, scale, suite_name, metric), (adapter_id, scale, suite_name, metric, category){third})
            """, [run_id, *only_params])]
        groups = [g for g in grouped if g.kind == _CELLS]
        for name in {g.suite for g in groups} - set(infos):
            role, headline = _LEGACY.get(name, ("task", None))
            infos[name] = SuiteInfo(name, role, headline)
        headlines = [(s, i.headline) for s, i in sorted(infos.items()) if i.headline]
        general = [(s, h) for s, h in headlines if infos[s].role == "general"]
        retention_rows = _retention_rows(r, run_id, general, only, only_params) if general else []
        examples: dict[str, list[str]] = defaultdict(list)
        for g in grouped:
            if g.kind == _EXAMPLES and g.example_id is not None:
                examples[g.suite].append(g.example_id)
        shown = [(suite, ex) for suite, ids in examples.items() for ex in sorted(ids)[:samples_per_suite]]
        sample_rows = _sample_rows(r, run_id, shown, only, only_params) if shown else []
        prov = r.query("SELECT * FROM runs WHERE run_id = ?", [run_id])

    # the base model's name as the first row (by suite, then example) names it
    first = min(groups, key=lambda g: (g.suite or "", g.first_example or ""), default=None)
    base_model = (first.base_model if first else None) or "?"
    targets = sorted({target_label(labels, g.adapter_id, g.scale) for g in groups}, key=lambda t: (t != "base", t))
    order = {t: i for i, t in enumerate(targets)}

    # merge the groups of one target (the base model's rows may come from several ids at scale 0)
    acc: dict[tuple[str, float, str, str], list[Any]] = {}
    for g in groups:
        label = target_label(labels, g.adapter_id, g.scale)
        a = acc.setdefault((label, 0.0 if label == "base" else g.scale, g.suite, g.metric),
                           [None if label == "base" else g.adapter_id, 0, 0, 0.0, 0])
        a[1] += g.n
        a[2] += g.n_scored
        a[3] += g.total or 0.0
        a[4] += g.n_truncated
    cells = tuple(
        Cell(label, aid, scale, suite, metric, total / n_scored if n_scored else None, n, n_scored, n_cut,
             infos[suite].higher_is_better(metric))
        for (label, scale, suite, metric), (aid, n, n_scored, total, n_cut)
        in sorted(acc.items(), key=lambda kv: (order[kv[0][0]], kv[0][2], kv[0][3], kv[0][1]))
    )

    kept: dict[tuple[str, str, str], list[int]] = {}
    for aid, scale, suite, metric, n_kept, base_correct in retention_rows:
        k = kept.setdefault((target_label(labels, aid, scale), suite, metric), [0, base_correct])
        k[0] += n_kept
    # shown also when the base got nothing right: retention is then undefined (—, 0/0), not hidden
    retention = tuple(Retention(label, suite, metric, base_correct, n_kept, n_kept / base_correct if base_correct else None)
                      for (label, suite, metric), (n_kept, base_correct)
                      in sorted(kept.items(), key=lambda kv: (kv[0][1], order[kv[0][0]])))

    cats: dict[tuple[str, str, str, str], list[Any]] = {}
    for g in grouped:
        # per category: the headline's scored answers only
        if g.kind != _CATEGORIES or not g.category or not g.n_scored or infos[g.suite].headline != g.metric:
            continue
        c = cats.setdefault((target_label(labels, g.adapter_id, g.scale), g.suite, g.category, g.metric), [0, 0.0])
        c[0] += g.n_scored
        c[1] += g.total
    categories = tuple(CategoryCell(label, suite, cat, metric, total / n if n else None, n)
                       for (label, suite, cat, metric), (n, total) in sorted(cats.items()))

    samples = _samples(sample_rows, labels, infos, targets)
    provenance = tuple((k, str(v)) for k, v in (prov[0].items() if prov else ()) if v is not None)
    ordered = tuple(sorted(infos.values(), key=lambda i: (ROLE_ORDER.index(i.role), i.name)))
    return Comparison(title, run_id, base_model, tuple(targets), cells, retention, categories, samples,
                      provenance, ordered)


def _retention_rows(r: Reader, run_id: str, general: Sequence[tuple[str, str]], only: str,
                    only_params: list[Any]) -> list[tuple[Any, ...]]:
    """Per adapter and scale, on each general suite's headline: of the examples the base model got right
    (score 1.0), how many this target also got right; with the base model's count."""
    pairs, pair_params, within, within_params = _pairs(general)
    return r.rows(
        f"""
        WITH s AS (
            SELECT adapter_id, scale, suite_name, metric, example_id, value, {IS_BASE} AS is_base
            FROM v_scores JOIN {pairs} h USING (suite_name, metric)
            WHERE run_id = ? {within} {only}),
        ok AS (SELECT DISTINCT suite_name, metric, example_id FROM s WHERE is_base AND value = 1.0),
        n_ok AS (SELECT suite_name, metric, count(*) AS n FROM ok GROUP BY suite_name, metric)
        SELECT s.adapter_id, s.scale, s.suite_name, s.metric,
               count(*) FILTER (WHERE s.value = 1.0 AND ok.example_id IS NOT NULL), coalesce(any_value(n_ok.n), 0)
        FROM s LEFT JOIN ok USING (suite_name, metric, example_id) LEFT JOIN n_ok USING (suite_name, metric)
        WHERE NOT s.is_base
        GROUP BY s.adapter_id, s.scale, s.suite_name, s.metric
        """, [*pair_params, run_id, *within_params, *only_params])


def _sample_rows(r: Reader, run_id: str, shown: Sequence[tuple[str, str]], only: str,
                 only_params: list[Any]) -> list[tuple[Any, ...]]:
    """Every row of the ``shown`` (suite, example) pairs, by suite and example."""
    return r.rows(
        f"""
        SELECT adapter_id, scale, suite_name, example_id, metric, value, input, target, output
        FROM v_scores JOIN (SELECT unnest(?) AS suite_name, unnest(?) AS example_id) x USING (suite_name, example_id)
        WHERE run_id = ? AND example_id IN (SELECT unnest(?)) {only}
        ORDER BY suite_name, example_id
        """, [[s for s, _ in shown], [e for _, e in shown], run_id, sorted({e for _, e in shown}), *only_params])


def _samples(rows: Sequence[tuple[Any, ...]], labels: dict[str, str], infos: dict[str, SuiteInfo],
             targets: Sequence[str]) -> tuple[Sample, ...]:
    texts: dict[tuple[str, str], tuple[str, str | None]] = {}
    outputs: dict[tuple[str, str], dict[str, str | None]] = defaultdict(dict)
    scores: dict[tuple[str, str, str, str], float | None] = {}
    for aid, scale, suite, ex, metric, value, inp, ref, output in rows:
        label = target_label(labels, aid, scale)
        texts.setdefault((suite, ex), (inp, ref))
        outputs[(suite, ex)][label] = output
        scores[(label, suite, metric, ex)] = value
    samples = []
    for (suite, ex), (inp, ref) in sorted(texts.items(), key=lambda kv: (ROLE_ORDER.index(infos[kv[0][0]].role), kv[0])):
        shown = infos[suite].headline or ""
        outs = tuple((lab, outputs[(suite, ex)].get(lab), scores.get((lab, suite, shown, ex))) for lab in targets)
        samples.append(Sample(suite, ex, inp, ref, outs))
    return tuple(samples)
