"""The typed ``Comparison`` a report renders: built from the store, never computed in templates.

Retention follows DESIGN.md: of the general-knowledge items the base model answers correctly, the
share the adapter still answers correctly (absolute accuracy is reported beside it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


def adapter_labels(store: "Store", run_id: str) -> dict[str, str]:
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


def suite_infos(store: "Store", run_id: str) -> dict[str, SuiteInfo]:
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


def build_comparison(store: "Store", run_id: str, title: str = "adapter-harness report", samples_per_suite: int = 5) -> Comparison:
    """Read one run's per-example scores from the store and aggregate them for a report."""
    rows = store.query(
        """
        SELECT adapter_name, adapter_id, scale, suite_name AS suite, example_id, metric, value,
               input, target, category, output, base_model_name, output_truncated
        FROM v_scores WHERE run_id = ?
        ORDER BY suite, example_id
        """,
        [run_id],
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
            if any(k[:3] == (label, suite, metric) for k in per_example):
                retention.append(Retention(label, suite, metric, len(base_ok), kept, kept / len(base_ok) if base_ok else None))
    categories = tuple(
        CategoryCell(label, suite, cat, metric, _mean(vals), len(vals))
        for (label, suite, cat, metric), vals in sorted(cats.items())
        if infos[suite].headline == metric
    )
    samples = []
    for suite in sorted({s for s, _ in texts}, key=lambda n: (ROLE_ORDER.index(infos[n].role), n)):
        metric = infos[suite].headline
        for (s, ex), t in list((k, v) for k, v in texts.items() if k[0] == suite)[:samples_per_suite]:
            outs = tuple((lab, t["out"].get(lab), per_example.get((lab, suite, metric, ex))) for lab in targets)
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
