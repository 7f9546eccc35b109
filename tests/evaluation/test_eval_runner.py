"""`harness eval` on a tiny model: rows land in DuckDB, a re-run is served from the cache, two adapters
never share rows, and the base model's rows are shared by every adapter of that base."""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch

from harness.evaluation.runner import run_eval
from harness.evaluation.targets import expand_targets
from harness.models.adapters import inspect_adapter
from harness.models.base import load_base, resolve_base
from harness.store import RunInfo, Store
from harness.suites.spec import load_suite

ROOT = Path(__file__).resolve().parents[2]

SUITE = """\
name: tiny-qa
version: 1
data: {path: data.jsonl, fields: {input: question, target: answer}}
generation: {max_new_tokens: 6}
scorers:
  - name: alias_match
  - name: exact_match
"""


@pytest.fixture(scope="module")
def suite_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("suite")
    (d / "suite.yaml").write_text(SUITE)
    rows = [{"id": f"q{i}", "question": q, "answer": a} for i, (q, a) in enumerate(
        [("What is two plus two?", "four"), ("Capital of France?", "Paris"), ("Colour of the sky?", "blue")])]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "suite.yaml"


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1.0)
    pm.save_pretrained(out)
    return out


def evaluate(base, adapters, scales, suite, store):
    with store.run(RunInfo(kind="eval", command="test")) as run:
        stats = run_eval(base, expand_targets(adapters, scales), [suite], run, store, log=lambda m: None)
        return run.run_id, stats


def test_cache_reuse_and_isolation(tiny_model_dir, suite_path, tmp_path):
    base = load_base(resolve_base(str(tiny_model_dir)))
    suite = load_suite(suite_path)
    a1 = inspect_adapter(make_adapter(tiny_model_dir, tmp_path / "a1", 1))
    a2 = inspect_adapter(make_adapter(tiny_model_dir, tmp_path / "a2", 2))
    store = Store(tmp_path / "h.duckdb")

    run1, s1 = evaluate(base, [a1], [1.0], suite, store)
    assert (s1.generated, s1.cached) == (6, 0)  # base + a1, 3 examples each
    run2, s2 = evaluate(base, [a1], [1.0], suite, store)
    assert (s2.generated, s2.cached) == (0, 6)  # nothing regenerated
    # a second adapter shares only the base model's rows; a new scale of a1 is new work too
    run3, s3 = evaluate(base, [a2], [1.0], suite, store)
    assert (s3.generated, s3.cached) == (3, 3)
    run4, s4 = evaluate(base, [a1], [0.5], suite, store)
    assert (s4.generated, s4.cached) == (3, 3)

    rows = store.query("SELECT adapter_id, scale, count(DISTINCT example_id) AS n FROM v_scores WHERE run_id = ? GROUP BY ALL ORDER BY scale", [run2])
    assert [(r["adapter_id"], r["scale"], r["n"]) for r in rows] == [(None, 0.0, 3), (a1.adapter_id, 1.0, 3)]
    keys = store.query("SELECT adapter_id, scale, count(*) AS n FROM generations GROUP BY ALL")
    assert sorted((k["adapter_id"] or "", k["scale"], k["n"]) for k in keys) == sorted(
        [("", 0.0, 3), (a1.adapter_id, 1.0, 3), (a2.adapter_id, 1.0, 3), (a1.adapter_id, 0.5, 3)])
    # the two adapters' outputs are their own (different random updates give different text)
    outs = {r["adapter_id"]: r["o"] for r in store.query(
        "SELECT adapter_id, string_agg(output, '|' ORDER BY example_id) AS o FROM generations WHERE scale = 1 GROUP BY ALL")}
    assert outs[a1.adapter_id] != outs[a2.adapter_id]
    # the base model came back without LoRA layers after each adapter
    assert not any("lora" in n for n, _ in base.model.named_modules())


def test_eval_cli_end_to_end(tiny_model_dir, suite_path, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "ad", 3)
    db = tmp_path / "cli.duckdb"
    cmd = [sys.executable, "-m", "harness", "eval", "--base", str(tiny_model_dir), "--adapter", str(adapter),
           "--suite", str(suite_path), "--db", str(db), "--report", str(tmp_path / "r.html")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "tiny-qa" in proc.stdout and "base" in proc.stdout and "ad@1" in proc.stdout
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 12  # 2 models × 3 examples × 2 metrics
    con.close()
    assert (tmp_path / "r.html").is_file()


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["--suite", "nope-suite"], 2, "built-in suites"),
        (["--suite", "SUITE", "--adapter", "/no/such/adapter"], 2, "does not exist"),
        (["--suite", "SUITE", "--base", "/no/such/model"], 2, "does not exist"),
        ([], 2, "--suite"),
    ],
)
def test_eval_bad_input_one_line_error(tmp_path, suite_path, args, code, needle):
    args = [str(suite_path) if a == "SUITE" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "harness", "eval", *args, "--db", str(tmp_path / "x.duckdb")],
                          cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == code, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


def test_a_corrected_answer_key_or_another_suite_never_reuses_rows(tiny_model_dir, suite_path, tmp_path):
    base = load_base(resolve_base(str(tiny_model_dir)))
    store = Store(tmp_path / "h.duckdb")
    _, s1 = evaluate(base, [], [1.0], load_suite(suite_path), store)
    assert (s1.generated, s1.cached) == (3, 0)
    # the same prompts under another suite name: rows must name their own suite
    other = tmp_path / "other"
    other.mkdir()
    (other / "suite.yaml").write_text(suite_path.read_text().replace("name: tiny-qa", "name: tiny-qa-copy"))
    (other / "data.jsonl").write_text((suite_path.parent / "data.jsonl").read_text())
    run2, s2 = evaluate(base, [], [1.0], load_suite(other / "suite.yaml"), store)
    assert (s2.generated, s2.cached) == (3, 0)
    assert {r["suite_name"] for r in store.query("SELECT DISTINCT suite_name FROM v_scores WHERE run_id = ?", [run2])} == {"tiny-qa-copy"}
    # a corrected target re-scores that example only, from its stored output (the output does not depend
    # on the answer key): nothing is generated
    data = (other / "data.jsonl").read_text().replace('"answer": "Paris"', '"answer": "Paris, France"')
    (other / "data.jsonl").write_text(data)
    _, s3 = evaluate(base, [], [1.0], load_suite(other / "suite.yaml"), store)
    assert (s3.generated, s3.cached, s3.rescored) == (0, 2, 1)


def test_progress_bar_counts_every_example(tiny_model_dir, suite_path, tmp_path, capsys):
    base = load_base(resolve_base(str(tiny_model_dir)))
    store = Store(tmp_path / "h.duckdb")
    with store.run(RunInfo(kind="eval", command="test")) as run:
        run_eval(base, expand_targets([], [1.0]), [load_suite(suite_path)], run, store, batch_size=2,
                 log=lambda m: None, progress_bar=True)
    err = capsys.readouterr().err
    assert "tiny-qa × base" in err and "3/3" in err


def test_an_adapter_trained_on_another_base_of_the_same_shape_is_refused(tiny_model_dir, suite_path, tmp_path):
    """Same shapes, other weights: it would load silently, so harness.json's base hash decides (FAULTS 22)."""
    from harness.train.recipe import train_adapter
    from harness.train.spec import TrainSpec
    from tests.helpers import make_tiny_llama

    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    spec = TrainSpec(base=str(tiny_model_dir), r=2, lora_alpha=4, max_steps=1, per_device_train_batch_size=4)
    train_adapter(spec, tmp_path / "ad", examples=rows, log=lambda s: None)
    sibling = make_tiny_llama(tmp_path / "sibling", seed=7)
    cmd = [sys.executable, "-m", "harness", "eval", "--base", str(sibling), "--adapter", str(tmp_path / "ad"),
           "--suite", str(suite_path), "--db", str(tmp_path / "h.duckdb")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.count("\n") == 1 and "--allow-base-mismatch" in refused.stderr and str(tmp_path / "ad") in refused.stderr
    allowed = subprocess.run(cmd + ["--allow-base-mismatch"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "warning: " in allowed.stderr


def test_changing_a_scorer_argument_rescores_stored_outputs_without_generating(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Issue 16.4: scorer settings were part of the generation's key, so one argument regenerated every
    output. Outputs are keyed by what changes them; a scorer change re-scores the stored outputs."""
    import harness.models.base
    from harness.cli import main

    d = tmp_path / "s"
    d.mkdir()
    spec = SUITE.replace("  - name: alias_match\n", "  - name: alias_match\n    args: {mode: contains}\n")
    (d / "suite.yaml").write_text(spec)
    (d / "data.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": a}) + "\n" for i, (q, a) in
                                          enumerate([("What is two plus two?", "four"), ("Capital of France?", "Paris")])))
    db = tmp_path / "h.duckdb"
    args = ["eval", "--base", str(tiny_model_dir), "--db", str(db), "--suite", str(d / "suite.yaml"), "--no-gates"]
    assert main(args) == 0
    capsys.readouterr()
    (d / "suite.yaml").write_text(spec.replace("{mode: contains}", "{mode: exact}"))
    monkeypatch.setattr(harness.models.base, "_load_weights", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "0 generated" in err and "2 re-scored" in err
    con = duckdb.connect(str(db), read_only=True)
    runs = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall()]
    per_run = {run: con.execute(
        "SELECT g.output, s.scorer, s.metric FROM run_results rr JOIN generations g USING (cache_key) "
        "JOIN scores s USING (cache_key) WHERE rr.run_id = ? AND s.metric = 'alias_match' ORDER BY g.example_id",
        [run]).fetchall() for run in runs}
    n_alias = con.execute("SELECT count(*) FROM scores WHERE metric = 'alias_match'").fetchone()[0]
    con.close()
    # the same outputs, scored twice: the old scores stay, the new ones are stored beside them
    assert [o for o, _, _ in per_run[runs[0]]] == [o for o, _, _ in per_run[runs[1]]]
    assert n_alias == 4
