"""Scale sweeps (issue 13): shared batches equal a sequential rescale loop, exports equal run-time
scaling (LoRA, rsLoRA, DoRA), a broken scaling fails the self-check, and the Pareto / recommendation
functions behave on constructed curves."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import torch

from harness.analysis.sweep import ScalePoint, pareto_front, recommend, refine_scales
from harness.cli import main

SUITE = """\
name: mini
version: 1
role: task
data: {path: data.jsonl, fields: {input: question, target: answer}}
generation: {max_new_tokens: 5}
scorers:
  - name: exact_match
"""


def make_adapter(base_dir: Path, out: Path, seed: int = 1, **lora) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **lora)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(**kw))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
            if "lora_magnitude" in n:
                p.mul_(1.1)
    pm.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    from harness.models.base import load_base, resolve_base

    return load_base(resolve_base(str(tiny_model_dir)), device="cpu")


def _ids(base):
    from harness.generation.generate import render_prompt

    enc = base.tokenizer([render_prompt(base.tokenizer, "Capital of France?")], return_tensors="pt", add_special_tokens=False)
    return enc.input_ids


def test_mixed_batches_equal_a_sequential_rescale_loop(base, tiny_model_dir, tmp_path):
    """Rows of several scales of two adapters in one batch give the logits a one-at-a-time loop gives."""
    from harness.evaluation.engine import attached
    from harness.evaluation.targets import Target
    from harness.models.adapters import inspect_adapter, load_adapter, set_scale

    a = inspect_adapter(make_adapter(tiny_model_dir, tmp_path / "a", 1))
    b = inspect_adapter(make_adapter(tiny_model_dir, tmp_path / "b", 2, use_rslora=True))
    targets = [Target(None, 0.0), Target(a, 0.25), Target(a, 1.0), Target(b, 0.5)]
    ids = _ids(base).repeat(len(targets), 1)
    with torch.inference_mode():
        with attached(base, targets, checks=[]) as group:
            mixed = group.model(input_ids=ids, adapter_names=group.route(targets)).logits
        for i, t in enumerate(targets):
            if t.adapter is None:
                want = base.model(input_ids=ids[:1]).logits
            else:
                pm = load_adapter(base.model, t.adapter)
                set_scale(pm, t.scale)
                want = pm(input_ids=ids[:1]).logits
                base.model = pm.unload()
            assert torch.equal(mixed[i : i + 1], want), t.label


@pytest.mark.parametrize("kind", ["lora", "rslora", "dora"])
def test_exported_adapter_equals_run_time_scaling(base, tiny_model_dir, tmp_path, kind):
    from peft import PeftModel

    from harness.jobs.export import export_scaled
    from harness.models.adapters import inspect_adapter, load_adapter, set_scale

    lora = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}[kind]
    info = inspect_adapter(make_adapter(tiny_model_dir, tmp_path / "a", 3, **lora))
    out = export_scaled(info, 0.3, tmp_path / "exported")
    ids = _ids(base)
    with torch.inference_mode():
        pm = load_adapter(base.model, info)
        set_scale(pm, 0.3)
        runtime = pm(input_ids=ids).logits
        base.model = pm.unload()
        plain = PeftModel.from_pretrained(base.model, str(out))  # plain PEFT loads the export
        exported = plain(input_ids=ids).logits
        base.model = plain.unload()
    assert float((runtime - exported).abs().max()) <= 1e-5
    record = json.loads((out / "harness.json").read_text())
    assert record["parent_adapter"]["adapter_id"] == info.adapter_id and record["export"]["scale"] == 0.3


def test_merged_export_is_within_tolerance(base, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from harness.models.adapters import inspect_adapter, load_adapter, set_scale

    info = inspect_adapter(make_adapter(tiny_model_dir, tmp_path / "a", 4))
    assert main(["export", "--adapter", str(info.path), "--scale", "0.5", "--out", str(tmp_path / "merged"),
                 "--merge", "--base", str(tiny_model_dir)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = _ids(base)
    with torch.inference_mode():
        pm = load_adapter(base.model, info)
        set_scale(pm, 0.5)
        runtime = pm(input_ids=ids).logits
        base.model = pm.unload()
        got = merged(input_ids=ids).logits
    # merging re-associates (W + s*BA) x: fp32 rounding only
    assert float((runtime - got).abs().max()) <= 1e-4
    assert main(["export", "--adapter", str(info.path), "--scale", "0.5", "--out", str(tmp_path / "merged")]) == 2


@pytest.mark.parametrize("routing", ["rows", "peft"])
def test_a_broken_scaling_fails_the_self_check(base, tiny_model_dir, tmp_path, monkeypatch, routing):
    import harness.evaluation.engine as engine
    from harness.errors import GateFailure
    from harness.evaluation.targets import Target
    from harness.models.adapters import inspect_adapter
    from harness.models.rowscale import RowScales

    monkeypatch.setenv(engine.ROUTING_ENV, routing)
    if routing == "peft":
        real = engine.set_scale
        monkeypatch.setattr(engine, "set_scale", lambda m, s, name: real(m, s * 2 if s == 1.0 else s, name))
    else:
        real_of = RowScales.scale_of
        monkeypatch.setattr(RowScales, "scale_of", lambda self, n, a: 2 * real_of(self, n, a) if real_of(self, n, a) == 1.0 else real_of(self, n, a))
    info = inspect_adapter(make_adapter(tiny_model_dir, tmp_path / "a", 5))
    with pytest.raises(GateFailure, match="scale 1 == the adapter"):
        with engine.attached(base, [Target(info, 0.5)], checks=[]):
            pass


def test_an_unrouted_forward_gives_nan_not_another_rows_answer(base, tiny_model_dir, tmp_path):
    """Under the row-scale routing a forward with no adapter_names must not silently reuse old scales."""
    from harness.evaluation.engine import attached
    from harness.evaluation.targets import Target
    from harness.models.adapters import inspect_adapter

    info = inspect_adapter(make_adapter(tiny_model_dir, tmp_path / "a", 6))
    targets = [Target(None, 0.0), Target(info, 0.5)]
    ids = _ids(base).repeat(2, 1)
    with torch.inference_mode(), attached(base, targets, checks=[]) as group:
        assert "scale per row" in group.how
        routed = group.model(input_ids=ids, adapter_names=group.route(targets)).logits
        assert torch.isfinite(routed).all()
        assert torch.isnan(group.model(input_ids=ids).logits).all()


def test_sweep_command_stores_every_scale_and_a_rerun_does_no_model_work(tiny_model_dir, tmp_path, capsys, monkeypatch):
    d = tmp_path / "suite"
    d.mkdir()
    (d / "suite.yaml").write_text(SUITE)
    (d / "data.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in
                                          [("Two plus two?", "four"), ("Capital of France?", "Paris"), ("Sky colour?", "blue")]))
    a = make_adapter(tiny_model_dir, tmp_path / "a", 6)
    args = ["sweep", "--base", str(tiny_model_dir), "--db", str(tmp_path / "h.duckdb"), "--adapter", str(a),
            "--suite", str(d / "suite.yaml"), "--suite", "general-knowledge", "--limit", "3", "--scales", "0,0.5,1"]
    # a random tiny model scores 0 on the task at every scale, as the base does: no scale is worth
    # shipping, the sentence says why, and the sweep exits 1 (its gates have no scale to judge)
    assert main(args) == 1
    out = capsys.readouterr()
    # every scale fails a release gate (the suite's own task threshold among them): no scale is recommended
    assert "recommendation:" in out.out and "no scale passes the release gates" in out.out and "do not ship" in out.out
    assert "no scale to ship" in out.err
    args.append("--no-gates")
    con = duckdb.connect(str(tmp_path / "h.duckdb"), read_only=True)
    scales = sorted(r[0] for r in con.execute("SELECT DISTINCT scale FROM generations").fetchall())
    checks = con.execute("SELECT gate, passed FROM gate_results WHERE gate LIKE 'self-check%' ORDER BY gate").fetchall()
    con.close()
    assert scales == [0.0, 0.5, 1.0]
    assert checks == [("self-check scale 0", True), ("self-check scale 1", True)]
    import harness.models.base

    monkeypatch.setattr(harness.models.base, "_load_weights", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    assert main(args) == 0
    assert "0 generated" in capsys.readouterr().err


# -- pure functions on constructed curves ---------------------------------------------------------


def P(scale, task, retention, leakage, n=40):
    return ScalePoint(scale, task, retention, leakage, n_task=n, kept=round((retention or 0) * 60), base_correct=60,
                      n_leakage=24, n_leaked=round((leakage or 0) * 24))


def test_recommend_picks_the_best_task_score_that_passes():
    pts = [P(0, 0.0, 1.0, 0.0), P(0.25, 0.5, 0.98, 0.0), P(0.5, 0.8, 0.96, 0.01), P(1.0, 0.9, 0.2, 1.0)]
    rec = recommend(pts)
    assert rec.scale == 0.5
    assert "ship scale 0.5" in rec.sentence and "80.0%" in rec.sentence and "96.0%" in rec.sentence and "interval" in rec.sentence


def test_recommend_breaks_ties_towards_the_smaller_scale_and_handles_flat_curves():
    flat = [P(0, 0.0, 1.0, 0.0), P(0.25, 0.7, 1.0, 0.0), P(0.5, 0.7, 1.0, 0.0), P(1.0, 0.7, 1.0, 0.0)]
    assert recommend(flat).scale == 0.25
    # equal points do not dominate each other; the base (task 0) is dominated
    assert [p.scale for p in pareto_front(flat)] == [0.25, 0.5, 1.0]


def test_no_scale_passes_and_the_sentence_says_so():
    pts = [P(0, 0.0, 1.0, 0.0), P(0.5, 0.8, 0.5, 0.3), P(1.0, 0.9, 0.1, 1.0)]
    rec = recommend(pts)
    assert rec.scale is None and "no scale meets" in rec.sentence and "do not ship" in rec.sentence


def test_a_passing_scale_that_does_no_better_than_the_base_is_not_recommended():
    """Measured on the full demo's plain adapter: 0.1 kept retention with the base's task score (0%)."""
    pts = [P(0, 0.0, 1.0, 0.0), P(0.1, 0.0, 0.967, 0.0), P(0.25, 0.042, 0.8, 0.115), P(1.0, 0.75, 0.0, 1.0)]
    rec = recommend(pts)
    assert rec.scale is None
    assert "does better on the task than the base" in rec.sentence and "scale 0.1" in rec.sentence and "do not ship" in rec.sentence
    # a base that already scores: a passing scale must beat it, not merely match it
    assert recommend([P(0, 0.3, 1.0, 0.0), P(0.5, 0.3, 0.99, 0.0)]).scale is None
    assert recommend([P(0, 0.3, 1.0, 0.0), P(0.5, 0.35, 0.99, 0.0)]).scale == 0.5


def test_pareto_front_drops_dominated_points():
    pts = [P(0, 0.0, 1.0, 0.0), P(0.25, 0.5, 0.9, 0.1), P(0.5, 0.4, 0.8, 0.2), P(1.0, 0.9, 0.2, 1.0)]
    assert [p.scale for p in pareto_front(pts)] == [0, 0.25, 1.0]


def test_refine_bisects_the_boundary():
    pts = [P(0, 0.0, 1.0, 0.0), P(0.25, 0.5, 0.98, 0.0), P(0.5, 0.8, 0.90, 0.01), P(1.0, 0.9, 0.2, 1.0)]
    assert refine_scales(pts) == 0.375
    assert refine_scales([P(0, 0, 1, 0), P(0.5, 0.5, 1, 0)]) is None


def test_one_sweep_gives_one_recommendation_in_the_terminal_the_report_and_check(tiny_model_dir, tmp_path, capsys):
    """Issue 27: `harness sweep --min-retention 0 --max-leakage 0.8 --report R.html` printed "ship scale S"
    while R.html (recomputed under the defaults) said "do not ship", and `check --recommended` ignored the
    sweep's limits. The limits are stored with the run and every face reads them: one scale everywhere.

    Built so the limits decide: the task suite's answers are the adapter's own outputs at scale 1 (it wins
    the task there), the general suite's are the base's (the base answers all correctly and the adapter
    keeps few), so the loose limits recommend a scale and the default limits recommend none."""
    import html
    import re

    a = make_adapter(tiny_model_dir, tmp_path / "a", 6)
    db = str(tmp_path / "h.duckdb")
    # 12 task examples: fewer cannot show a task gain over the base on the exact paired bound, even all right
    questions = ["Two plus two?", "Capital of France?", "Sky colour?", "Largest ocean?", "Boiling point of water?",
                 "Capital of Spain?", "Three times three?", "Grass colour?", "Fastest land animal?", "Largest planet?",
                 "Author of Hamlet?", "Days in a week?"]

    def suite(name: str, role: str, answers: list[str]) -> Path:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        (d / "suite.yaml").write_text(SUITE.replace("name: mini", f"name: {name}").replace("role: task", f"role: {role}"))
        (d / "data.jsonl").write_text("".join(json.dumps({"question": q, "answer": t}) + "\n" for q, t in zip(questions, answers)))
        return d / "suite.yaml"

    probe = suite("probe", "task", ["?"] * len(questions))
    assert main(["eval", "--base", str(tiny_model_dir), "--db", db, "--adapter", str(a), "--suite", str(probe), "--no-gates"]) == 0
    con = duckdb.connect(db, read_only=True)
    outs = {(aid, ex): o for aid, ex, o in con.execute("SELECT adapter_id, example_id, output FROM generations").fetchall()}
    con.close()
    ids = sorted({ex for _, ex in outs})
    adapter_id = next(aid for aid, _ in outs if aid)
    base_out = [outs[(None, ex)] for ex in ids]
    adapter_out = [outs[(adapter_id, ex)] for ex in ids]
    assert base_out != adapter_out
    task = suite("task", "task", adapter_out)
    general = suite("general", "general", base_out)
    capsys.readouterr()
    report = tmp_path / "R.html"
    sweep = ["sweep", "--base", str(tiny_model_dir), "--db", db, "--adapter", str(a), "--suite", str(task), "--suite",
             str(general), "--scales", "0,0.5,1", "--no-gates"]
    gates = tmp_path / "harness.toml"  # leakage cannot be measured for a task with no JSON format: opted out by name
    gates.write_text('[gates]\nskip = ["leakage"]\n')
    assert main([*sweep[:-1], "--gates", str(gates), "--min-retention", "0", "--max-leakage", "0.8", "--report", str(report)]) == 0
    terminal = capsys.readouterr().out
    shipped = re.findall(r"recommendation: ship scale ([\d.]+)", terminal)
    assert len(shipped) == 1, terminal
    page = html.unescape(report.read_text())
    assert f"ship scale {shipped[0]}:" in page and "do not ship" not in page
    # issue 32.2: the recommended scale is one the release check passes, with the same gates
    assert main(["check", "--base", str(tiny_model_dir), "--db", db, "--adapter", str(a), "--recommended",
                 "--gates", str(gates), "--suite", str(task), "--suite", str(general)]) == 0
    err = capsys.readouterr().err
    assert re.findall(r"recommended scale \(sweep run [\w-]+\): ship scale ([\d.]+)", err) == shipped
    # the same rows under the default limits: no scale (retention of the base's answers is far below 95%)
    assert main([*sweep, "--db", str(tmp_path / "defaults.duckdb")]) == 0
    assert "recommendation: ship scale" not in capsys.readouterr().out


def test_without_a_task_suite_no_scale_is_recommended(tiny_model_dir, tmp_path, capsys):
    """Issue 28: a sweep over general-knowledge alone recommended "ship scale 0.1", a scale the base model
    itself dominates. With no task score nothing tells which scale does the task: no recommendation."""
    a = make_adapter(tiny_model_dir, tmp_path / "a", 6)
    assert main(["sweep", "--base", str(tiny_model_dir), "--db", str(tmp_path / "h.duckdb"), "--adapter", str(a),
                 "--suite", "general-knowledge", "--limit", "3", "--scales", "0,0.1,1", "--no-gates"]) == 0
    out = capsys.readouterr().out
    assert "ship scale" not in out and "no task suite was scored" in out
    points = [P(0.0, None, 1.0, 0.0), P(0.1, None, 1.0, 0.0), P(1.0, None, 0.5, 0.0)]
    assert recommend(points).scale is None


def test_a_recommendation_with_unmeasured_limits_says_it_did_not_apply_them():
    rec = recommend([ScalePoint(0.0, 0.1, None, None, 40), ScalePoint(1.0, 0.9, None, None, 40)])
    assert rec.scale == 1.0
    assert "retention and leakage not measured, so those limits were not applied" in rec.sentence
    assert "with retention >=" not in rec.sentence


def test_a_scale_that_fails_a_release_gate_is_never_recommended():
    """Issue 32.2: "ship scale 0.1: task score 26.7%" and, two lines later, the task suite's own gate FAILed at 0.1.
    The release gates judged at every scale (stored with the run) block a scale; the next best is recommended and
    the sentence names what was passed over; with every scale blocked nothing is."""
    pts = [P(0, 0.0, 1.0, 0.0), P(0.25, 0.5, 0.98, 0.0), P(0.5, 0.8, 0.96, 0.01), P(1.0, 0.9, 0.2, 1.0)]
    blocked = {0.5: "fails threshold[date-iso:exact_match]: lower bound 0.55 must be >= 0.6"}
    rec = recommend(pts, blocked=blocked)
    assert rec.scale == 0.25
    assert "passed over for a failed release gate: scale 0.5 (fails threshold[date-iso:exact_match]" in rec.sentence
    none = recommend(pts, blocked={**blocked, 0.25: "fails task_gain: insufficient evidence"})
    assert none.scale is None and "no scale passes the release gates" in none.sentence
    assert "0.25: fails task_gain" in none.sentence and "do not ship" in none.sentence
    # a blocked scale that the limits already excluded is not named twice
    assert "1: " not in none.sentence.split("(", 1)[1]


def test_stored_verdicts_are_read_per_adapter():
    from harness.analysis.sweep import run_blocked

    config = {"sweep": {"blocked": {"a" * 64: {"0.5": "fails retention: ..."}}}}
    assert run_blocked(config, "a" * 64) == {0.5: "fails retention: ..."}
    assert run_blocked(config, "b" * 64) == {} and run_blocked(None, "a") == {}


def test_the_sweep_table_marks_each_scales_release_gates():
    from harness.analysis.sweep import SweepView
    from harness.reports.terminal import sweep_tables

    pts = [P(0, 0.0, 1.0, 0.0), P(0.5, 0.8, 0.96, 0.01), P(1.0, 0.9, 0.2, 1.0)]
    blocked = {1.0: "fails threshold[dates:exact_match], retention -- dates@1 exact_match = ..."}
    view = SweepView("a" * 64, "dates", tuple(pts), frozenset({0.5, 1.0}), recommend(pts, blocked=blocked), blocked)
    assert [view.gate_mark(p.scale) for p in pts] == ["", "pass", "FAIL threshold, retention"]
    table = sweep_tables([view])
    assert "release gates" in table and "FAIL threshold, retention" in table and "<- ship" in table
    unjudged = SweepView("a" * 64, "dates", tuple(pts), frozenset(), recommend(pts))
    assert unjudged.gate_mark(0.5) == "" and "release gates" not in sweep_tables([unjudged])
