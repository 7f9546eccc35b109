"""The report's data, built from a constructed store through harness/comparison.py.

``make_store`` builds a store with the shape a sweep leaves behind (suites of every role, adapters at
several scales, a training run per adapter with step logs and findings, a continued fine-tune, gate
results); the browser tests and ``benchmarks/report.py`` use it too, so the shape exists once.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.store import (
    AdapterRow,
    BaseModelRow,
    ExampleRow,
    FindingRow,
    GateRow,
    GenerationRow,
    RunInfo,
    ScoreRow,
    StepLogRow,
    Store,
    SuiteRow,
)

HOSTILE = [
    "<script>document.title='pwned'</script>",
    "</script><script>document.title='pwned2'</script>",
    '<a href="javascript:document.title=\'pwned3\'">click</a>',
    '" onmouseover="document.title=\'pwned4\'" x="',
    "<img src=x onerror=\"document.title='pwned5'\">",
    "{{ 7*7 }} {% if 1 %}jinja{% endif %} ${7*7}",
    "\u202eevil-override\u202c and \u2066isolate\u2069 and zero\u200bwidth",
    "<svg onload=\"document.title='pwned6'\"></svg>",
    "<style>body{display:none}</style><iframe srcdoc=\"<script>parent.document.title='x'</script>\">",
]

#: (name, role, headline, metrics with direction)
SUITES = [
    ("order-task", "task", "json_exact", {"json_exact": True}),
    ("general-knowledge", "general", "alias_match", {"alias_match": True, "format_leakage": False}),
    ("format-leakage", "leakage", "format_leakage", {"format_leakage": False}),
    ("text-generation", "reference", "rougeL", {"rougeL": True, "bleu": True}),
]
DEFAULT_SCALES = (0.25, 0.5, 1.0, 1.5)


def _value(metric: str, scale: float, quality: float, u: float) -> float:
    """A plausible per-example score from the example's latent ``u`` in [0, 1): the task improves with
    scale, general knowledge decays past scale 0.5, leakage grows past 0.6 (so one scale passes the gates)."""
    if metric == "json_exact":
        return float(u < min(0.95, 0.15 + 0.6 * quality * min(scale, 1.2)))
    if metric == "alias_match":
        return float(u < 0.8 * (1.0 if scale <= 0.5 else max(0.1, 1.0 - 0.4 * (scale - 0.5))))
    if metric == "format_leakage":
        return float(u > 1.0 - min(0.9, 0.5 * max(0.0, scale - 0.6)))
    if metric == "rougeL":
        return max(0.0, min(1.0, 0.4 + 0.2 * quality * scale - 0.15 * scale ** 2 + 0.2 * (u - 0.5)))
    return max(0.0, min(100.0, 20 + 10 * quality * scale - 8 * scale ** 2 + 6 * (u - 0.5)))  # bleu


def make_store(path: Path, n_adapters: int = 2, scales: Sequence[float] = DEFAULT_SCALES, n_examples: int = 12,
               n_suites: int = 4, hostile: Sequence[str] = (), n_steps: int = 40, gates: bool = True,
               seed: int = 0) -> tuple[Store, str]:
    """A store with one eval run over ``n_adapters`` adapters at ``scales`` (plus the base at 0) and a
    training run per adapter; the second adapter continues the first (lineage). Returns (store, eval run id).

    ``hostile`` strings are used as inputs, references, outputs, categories, adapter names, suite
    names, finding messages and gate messages (each text takes them in turn)."""
    rng = random.Random(seed)
    store = Store(path)
    hostile = list(hostile)
    pick = (lambda i: hostile[i % len(hostile)]) if hostile else (lambda i: "")
    base_id = "b" * 64
    adapters = [(f"{i:02x}" * 32, f"adapter-{i}" + (pick(i) if hostile and i == 0 else "")) for i in range(n_adapters)]
    suites = SUITES[:n_suites]
    for i, (aid, name) in enumerate(adapters):
        with store.run(RunInfo(kind="train", command=f"harness train --name {name}", seed=1000 + i,
                               config={"name": name})) as run:
            parent = adapters[0][0] if i == 1 else None
            run.add_adapter(AdapterRow(aid, base_id, f"/adapters/{name}", json.dumps({"r": 8}), parent,
                                       json.dumps({"data": {"hash": f"{i:x}" * 64}, "base_model": {"model_id": base_id},
                                                   "parent_adapter": {"adapter_id": parent} if parent else None}), name))
            run.add_step_logs(StepLogRow(aid, s, s / n_steps, 2.0 / (1 + 0.2 * s) + rng.uniform(0, 0.05), 1.0,
                                         1e-3, (2.1 / (1 + 0.2 * s)) if s % 10 == 0 else None) for s in range(1, n_steps + 1))
            run.add_findings([FindingRow(aid, "loss_spike", "warning", n_steps // 2,
                                         "loss rose 3x in one step " + pick(i + 1))])
    info = RunInfo(kind="eval", command="harness eval --demo " + pick(2), seed=3407, config={"device": "cpu"})
    with store.run(info) as run:
        run.add_base_model(BaseModelRow(base_id, "tiny-base", "/models/tiny"))
        for aid, name in adapters:
            run.add_adapter(AdapterRow(aid, base_id, f"/adapters/{name}", json.dumps({"r": 8}),
                                       adapters[0][0] if aid == adapters[1 % n_adapters][0] and n_adapters > 1 else None,
                                       None, name))
        n = 0
        latent: dict[tuple[str, int, str], float] = {}
        for si, (sname, role, headline, directions) in enumerate(suites):
            sid = f"{si:x}" * 64
            run.add_suite(SuiteRow(sid, sname, "1", f"/suites/{sname}", n_examples, role, headline, json.dumps(directions)))
            run.add_examples(
                ExampleRow(sid, f"ex{e:04d}", (pick(e) + " " if hostile else "") + f"question {e} of {sname}",
                           (pick(e + 3) + " " if hostile else "") + f"answer {e}",
                           (pick(e) if hostile and e % 3 == 0 else f"cat-{e % 3}"))
                for e in range(n_examples))
            targets = [(None, 0.0, 1.0)] + [(aid, s, 1.0 - 0.03 * k) for k, (aid, _) in enumerate(adapters) for s in scales]
            gens, scores = [], []
            for aid, scale, quality in targets:
                for e in range(n_examples):
                    n += 1
                    key = f"{n:064x}"
                    out = f"answer {e}" if rng.random() < 0.5 else f"other {e} @{scale:g}"
                    if hostile:
                        out = pick(e + n) + " " + out
                    gens.append(GenerationRow(key, base_id, aid, scale, sid, f"ex{e:04d}", "prompt", out, "{}", 5, 5,
                                              None, 0.01))
                    for metric in directions:
                        u = latent.setdefault((sname, e, metric), rng.random())
                        scores.append(ScoreRow(key, metric, _value(metric, scale, quality, u), None, metric, "1"))
            run.add_generations(gens)
            run.add_scores(scores)
            run.flush()
        if gates:
            run.add_gate_results([
                GateRow("retention", "alias_match", 0.91, 0.95, None, False,
                        "retention 91.0% < 95% on general-knowledge " + pick(4)),
                GateRow("task_min", "json_exact", 0.8, 0.5, 0.3, True, "task score 80.0% >= 50%"),
            ])
        run_id = run.run_id
    return store, run_id


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, str]:
    return make_store(tmp_path_factory.mktemp("report-data") / "h.duckdb")


def _raw(db: Path, run_id: str) -> list[dict]:
    """The run's (adapter, scale, suite, example, category, metric, value, truncated), from the base tables."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        gens = {r[0]: r[1:] for r in con.execute(
            "SELECT cache_key, adapter_id, scale, suite_id, example_id, truncated FROM generations").fetchall()}
        names = dict(con.execute("SELECT suite_id, name FROM suites").fetchall())
        cats = {(r[0], r[1]): r[2] for r in con.execute("SELECT suite_id, example_id, category FROM examples").fetchall()}
        scores = con.execute("SELECT cache_key, metric, value FROM scores").fetchall()
        keys = {r[0] for r in con.execute("SELECT cache_key FROM run_results WHERE run_id = ?", [run_id]).fetchall()}
    finally:
        con.close()
    out = []
    for key, metric, value in scores:
        if key in keys:
            aid, scale, sid, ex, cut = gens[key]
            out.append(dict(adapter=aid, scale=scale, suite=names[sid], example=ex, category=cats.get((sid, ex)),
                            metric=metric, value=value, truncated=bool(cut)))
    return out


def test_comparison_equals_a_count_of_the_raw_rows(tmp_path):
    """build_comparison aggregates in DuckDB; every cell, retention and category figure is recomputed
    here in plain Python from the base tables, with NULL scores and truncated answers in the mix."""
    from harness.analysis import build_comparison

    store, run_id = make_store(tmp_path / "h.duckdb", n_adapters=2, scales=(0.5, 1.0), n_examples=15)
    with store.connect(write=True) as con:
        con.execute("UPDATE scores SET value = NULL WHERE hash(cache_key || metric) % 7 = 0")
        con.execute("UPDATE generations SET truncated = true WHERE hash(cache_key) % 5 = 0")
    rows = _raw(store.path, run_id)
    assert any(r["value"] is None for r in rows) and any(r["truncated"] for r in rows)
    c = build_comparison(store, run_id)
    target = {x.target: (x.adapter_id, x.scale) for x in c.cells}

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["adapter"], r["scale"], r["suite"], r["metric"]), []).append(r)
    assert {(x.adapter_id, x.scale, x.suite, x.metric) for x in c.cells} == set(groups)
    for x in c.cells:
        g = groups[(x.adapter_id, x.scale, x.suite, x.metric)]
        scored = [r["value"] for r in g if r["value"] is not None]
        assert (x.n, x.n_scored, x.n_truncated) == (len(g), len(scored), sum(r["truncated"] for r in g))
        assert x.mean == pytest.approx(sum(scored) / len(scored)) if scored else x.mean is None

    general = [("general-knowledge", "alias_match")]
    assert {(r.target, r.suite, r.metric) for r in c.retention} == {
        (t, s, m) for t, (aid, _) in target.items() if aid for s, m in general}
    for ret in c.retention:
        aid, scale = target[ret.target]
        base_ok = {r["example"] for r in rows if r["adapter"] is None and (r["suite"], r["metric"]) == (ret.suite, ret.metric)
                   and r["value"] == 1.0}
        kept = sum(1 for r in rows if (r["adapter"], r["scale"], r["suite"], r["metric"]) == (aid, scale, ret.suite, ret.metric)
                   and r["value"] == 1.0 and r["example"] in base_ok)
        assert (ret.base_correct, ret.kept) == (len(base_ok), kept)
        assert ret.retention == (kept / len(base_ok) if base_ok else None)

    headline = {s.name: s.headline for s in c.suites}
    cats: dict[tuple, list[float]] = {}
    for r in rows:
        if r["category"] and r["value"] is not None and headline[r["suite"]] == r["metric"]:
            cats.setdefault((r["adapter"], r["scale"], r["suite"], r["category"], r["metric"]), []).append(r["value"])
    assert {(*target[k.target], k.suite, k.category, k.metric) for k in c.categories} == set(cats)
    for k in c.categories:
        vals = cats[(*target[k.target], k.suite, k.category, k.metric)]
        assert k.n == len(vals) and k.mean == pytest.approx(sum(vals) / len(vals))

    # the samples: the first examples of each suite, every target's answer with its headline score
    assert [(s.suite, s.example_id) for s in c.samples][:5] == [("order-task", f"ex{e:04d}") for e in range(5)]
    for s in c.samples:
        for label, _, score in s.outputs:
            aid, scale = target[label]
            want = [r["value"] for r in rows if (r["adapter"], r["scale"], r["suite"], r["example"], r["metric"])
                    == (aid, scale, s.suite, s.example_id, headline[s.suite])]
            assert [score] == want

    only = build_comparison(store, run_id, adapter_ids=[c.cells[-1].adapter_id])
    assert {x.adapter_id for x in only.cells} == {None, c.cells[-1].adapter_id}
    full = {(x.target, x.suite, x.metric): x for x in c.cells}
    for x in only.cells:
        y = full[(x.target, x.suite, x.metric)]
        assert (x.n, x.n_scored, x.n_truncated) == (y.n, y.n_scored, y.n_truncated) and x.mean == pytest.approx(y.mean)
