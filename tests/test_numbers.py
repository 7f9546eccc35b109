"""Every figure the harness shows, recomputed from the raw ``generations`` and ``scores`` rows
(issue 11): on a database that went through a suite edit, two adapters whose directories share a
name, and a fully cached re-run. The recomputation below reads only base tables, with plain Python,
so it shares no SQL view and no aggregation code with what it checks."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest
import torch

from harness.cli import main

SUITE = """\
name: facts
version: 1
data: {path: data.jsonl, fields: {input: question, target: answer}}
generation: {max_new_tokens: 6}
scorers:
  - name: alias_match
  - name: exact_match
"""
ROWS = [("q0", "What is two plus two?", "four"), ("q1", "Capital of France?", "Paris"),
        ("q2", "Colour of the sky?", "blue"), ("q3", "Opposite of hot?", "cold")]


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1.0)
    pm.save_pretrained(out)
    return out


def write_rows(d: Path, rows) -> None:
    (d / "data.jsonl").write_text("".join(json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, q, a in rows))


def raw_rows(db: Path) -> list[dict]:
    """(run, adapter, scale, suite name, example, metric, value), straight from the base tables."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        gens = {r[0]: r[1:] for r in con.execute(
            "SELECT cache_key, adapter_id, scale, suite_id, example_id FROM generations").fetchall()}
        suite_names = dict(con.execute("SELECT suite_id, name FROM suites").fetchall())
        scores = defaultdict(list)
        for key, metric, value in con.execute("SELECT cache_key, metric, value FROM scores").fetchall():
            scores[key].append((metric, value))
        runs = con.execute("SELECT run_id, cache_key FROM run_results").fetchall()
    finally:
        con.close()
    out = []
    for run_id, key in runs:
        adapter_id, scale, suite_id, example_id = gens[key]
        for metric, value in scores[key]:
            out.append(dict(run=run_id, adapter=adapter_id, scale=scale, suite=suite_names[suite_id],
                            example=example_id, metric=metric, value=value))
    return out


def independent_means(rows: list[dict], run_id: str) -> dict[tuple, tuple[float | None, int, int]]:
    groups = defaultdict(list)
    for r in rows:
        if r["run"] == run_id:
            groups[(r["adapter"], r["scale"], r["suite"], r["metric"])].append(r["value"])
    out = {}
    for k, vals in groups.items():
        scored = [v for v in vals if v is not None]
        out[k] = (sum(scored) / len(scored) if scored else None, len(vals), len(scored))
    return out


def independent_pairs(rows: list[dict], run_id: str) -> dict[tuple, tuple[int, float, float, float]]:
    base = {(r["suite"], r["example"], r["metric"]): r["value"] for r in rows if r["run"] == run_id and r["adapter"] is None}
    acc = defaultdict(list)
    for r in rows:
        if r["run"] != run_id or r["adapter"] is None:
            continue
        b = base.get((r["suite"], r["example"], r["metric"]))
        if b is not None and r["value"] is not None:
            acc[(r["adapter"], r["scale"], r["suite"], r["metric"])].append((r["value"], b))
    return {k: (len(v), sum(a for a, _ in v) / len(v), sum(b for _, b in v) / len(v), sum(a - b for a, b in v) / len(v))
            for k, v in acc.items()}


@pytest.fixture(scope="module")
def history(tiny_model_dir, tmp_path_factory):
    """A database with a suite edit, two adapters both called "adapter", and a fully cached re-run."""
    tmp = tmp_path_factory.mktemp("numbers")
    suite = tmp / "suite"
    suite.mkdir()
    (suite / "suite.yaml").write_text(SUITE)
    write_rows(suite, ROWS)
    a = make_adapter(tiny_model_dir, tmp / "a" / "adapter", seed=1)
    b = make_adapter(tiny_model_dir, tmp / "b" / "adapter", seed=2)
    db = tmp / "h.duckdb"
    common = ["eval", "--base", str(tiny_model_dir), "--db", str(db), "--suite", str(suite / "suite.yaml")]
    assert main([*common, "--adapter", str(a), "--scale", "0.5", "--scale", "1"]) == 0
    # the suite is edited: one target corrected; a new adapter is evaluated on it
    write_rows(suite, [ROWS[0], (ROWS[1][0], ROWS[1][1], "paris"), *ROWS[2:]])
    assert main([*common, "--adapter", str(b)]) == 0
    # both same-named adapters in one run, then the same command again (everything cached)
    assert main([*common, "--adapter", str(a), "--adapter", str(b)]) == 0
    assert main([*common, "--adapter", str(a), "--adapter", str(b)]) == 0
    con = duckdb.connect(str(db), read_only=True)
    runs = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE kind = 'eval' ORDER BY started_at").fetchall()]
    ids = {p: con.execute("SELECT adapter_id FROM adapters WHERE path = ?", [str(p.resolve())]).fetchone()[0] for p in (a, b)}
    con.close()
    return db, runs, ids


def test_results_run_view_equals_the_raw_rows(history, capsys):
    db, runs, _ = history
    rows = raw_rows(db)
    for run_id in runs:
        capsys.readouterr()
        assert main(["results", "--db", str(db), "--run", run_id, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)["results"]
        got = {(r["adapter_id"], r["scale"], r["suite_name"], r["metric"]): (r["mean"], r["n"], r["n_scored"]) for r in shown}
        want = independent_means(rows, run_id)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k][1:] == want[k][1:], k
            assert got[k][0] == pytest.approx(want[k][0]) if want[k][0] is not None else got[k][0] is None


def test_results_adapter_view_pairs_every_example_after_a_suite_edit(history, capsys):
    """Issue 11.1: after the edit the new adapter paired 1 of 4 examples; it must pair all of them."""
    db, runs, ids = history
    rows = raw_rows(db)
    for path_id in ids.values():
        capsys.readouterr()
        assert main(["results", "--db", str(db), "--adapter", path_id, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)["vs_base"]
        for run_id in runs:
            want = {k: v for k, v in independent_pairs(rows, run_id).items() if k[0] == path_id}
            got = {(path_id, r["scale"], r["suite_name"], r["metric"]): (r["n_pairs"], r["adapter_mean"], r["base_mean"], r["mean_delta"])
                   for r in shown if r["run_id"] == run_id}
            assert got.keys() == want.keys(), run_id
            for k in want:
                assert got[k][0] == want[k][0] == len(ROWS), k
                assert got[k][1:] == pytest.approx(want[k][1:]), k


def test_summary_table_and_report_figures_equal_the_raw_rows(history):
    """Issue 11.2: two adapters both called "adapter" stay two columns, each with its own figures."""
    from harness.analysis import build_comparison
    from harness.store import Store

    db, runs, ids = history
    rows = raw_rows(db)
    store = Store(db)
    for run_id in runs:
        c = build_comparison(store, run_id)
        want = independent_means(rows, run_id)
        assert len(c.cells) == len(want)
        labels = {cell.target for cell in c.cells}
        assert len(labels) == len({(k[0], k[1]) for k in want})  # one column per (adapter id, scale)
        for cell in c.cells:
            mean, n, n_scored = want[(cell.adapter_id, cell.scale, cell.suite, cell.metric)]
            assert (cell.n, cell.n_scored) == (n, n_scored)
            assert cell.mean == pytest.approx(mean) if mean is not None else cell.mean is None
    both = build_comparison(store, runs[-1])
    assert {"a/adapter@1", "b/adapter@1"} <= set(both.targets)
    # retention, from the raw rows: of the base's correct items, the share each adapter keeps
    for r in both.retention:
        aid = next(c.adapter_id for c in both.cells if c.target == r.target)
        base_ok = {x["example"] for x in rows if x["run"] == runs[-1] and x["adapter"] is None
                   and x["suite"] == r.suite and x["metric"] == r.metric and x["value"] == 1.0}
        kept = sum(1 for x in rows if x["run"] == runs[-1] and x["adapter"] == aid and x["scale"] == 1.0
                   and x["suite"] == r.suite and x["metric"] == r.metric and x["value"] == 1.0 and x["example"] in base_ok)
        assert (r.base_correct, r.kept) == (len(base_ok), kept)


def test_the_cached_rerun_shows_the_same_figures_and_loads_no_model(history, tiny_model_dir, capsys, monkeypatch):
    """Issue 11.6: a re-run with everything cached needs the tokenizer only."""
    import harness.models.base

    db, runs, ids = history
    calls = []
    real = harness.models.base._load_weights
    monkeypatch.setattr(harness.models.base, "_load_weights", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = raw_rows(db)
    assert independent_means(rows, runs[-1]) == independent_means(rows, runs[-2])
    con = duckdb.connect(str(db), read_only=True)
    suite_path = con.execute("SELECT path FROM suites LIMIT 1").fetchone()[0]
    paths = [p[0] for p in con.execute("SELECT path FROM adapters ORDER BY path").fetchall()]
    con.close()
    capsys.readouterr()
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(db), "--suite", suite_path,
                 *[x for p in paths for x in ("--adapter", p)]]) == 0
    assert "0 generated" in capsys.readouterr().err
    assert calls == []
    cfg = json.loads(duckdb.connect(str(db), read_only=True).execute(
        "SELECT config FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0])
    assert "batch_size" in cfg["cache_key_excludes"] and cfg["batch_size"] == 16
