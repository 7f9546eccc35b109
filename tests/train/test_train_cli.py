"""`harness train` end to end on a tiny model: bad input exits 2 with one line, a grid makes one
adapter per point (and stores each), SIGTERM stops cleanly with a resumable checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.store import Store

ROWS = [{"prompt": f"Order {i} red hoodies, size M.", "completion": f'{{"item": "hoodie", "quantity": {i}}}'} for i in range(1, 9)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec_file(tiny_model_dir, tmp_path):
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    spec = tmp_path / "orders.yaml"
    spec.write_text(f"base: {tiny_model_dir}\ndata: {data}\nr: 4\nlora_alpha: 8\nlearning_rate: 1e-2\n"
                    "max_steps: 2\nper_device_train_batch_size: 4\n")
    return spec


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    "spec_text, extra, match",
    [
        ("r: -1\nlora_alpha: -2\n", [], "r=-1.*lora_alpha=-2"),
        ("r: 8\nrank: 8\n", [], "unknown field.*rank"),
        ("- just\n- a list\n", [], "YAML mapping"),
        ("r: 8\n", ["--set", "learning_rate=fast"], "learning_rate='fast' is not a valid float"),
        ("r: 8\n", ["--set", "r"], "use FIELD=VALUE"),
        ("r: 8\n", ["--grid", "r"], "use FIELD=V1,V2"),
        ("r: 8\n", ["--from-adapter", "/nonexistent/adapter"], "adapter directory /nonexistent/adapter does not exist"),
        ("r: 8\n", ["--from-adapter", "/x", "--grid", "r=4,8"], "keeps its parent's LoRA shape"),
        ("r: 8\n", ["--grid", "base=a,b"], "not supported"),
    ],
)
def test_bad_spec_or_flag_exits_2_with_one_line(tmp_path, capsys, spec_text, extra, match):
    import re

    spec = tmp_path / "bad.yaml"
    spec.write_text(spec_text)
    assert main(["train", str(spec), "--db", str(tmp_path / "h.duckdb"), *extra]) == 2
    assert re.search(match, _one_line_error(capsys))


def test_missing_spec_file_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read training spec" in _one_line_error(capsys)


def test_help_documents_every_option_and_spec_field(capsys):
    import dataclasses

    from harness.train.spec import TrainSpec

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--out", "--db", "--set", "--from-adapter", "--resume", "--grid", "--name", "--device"):
        assert flag in out
    for f in dataclasses.fields(TrainSpec):
        assert f"  {f.name} " in out, f.name


def test_grid_trains_one_adapter_per_point_and_prints_a_table(spec_file, tmp_path, capsys):
    from harness.store import Store

    db = tmp_path / "h.duckdb"
    code = main(["train", str(spec_file), "--out", str(tmp_path / "grid"), "--db", str(db),
                 "--set", "max_steps=1", "--grid", "r=2,4", "lora_alpha=4,8"])
    out = capsys.readouterr().out
    assert code == 0
    names = ["orders-r2-alpha4", "orders-r2-alpha8", "orders-r4-alpha4", "orders-r4-alpha8"]
    for name in names:
        d = tmp_path / "grid" / name
        assert (d / "adapter_model.safetensors").is_file() and (d / "harness.json").is_file()
        assert name in out
    cfg = json.loads((tmp_path / "grid" / "orders-r4-alpha8" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (4, 8)
    assert out.splitlines()[0].split()[:3] == ["adapter", "r", "lora_alpha"]
    rows = Store(db).query("SELECT name FROM adapters ORDER BY name")
    assert [r["name"] for r in rows] == names
    assert Store(db).query("SELECT count(*) AS n FROM step_logs")[0]["n"] == 4


def test_train_then_continue_records_parent_in_store(spec_file, tmp_path, capsys):
    from harness.store import Store

    db = tmp_path / "h.duckdb"
    assert main(["train", str(spec_file), "--out", str(tmp_path / "a"), "--db", str(db)]) == 0
    assert main(["train", str(spec_file), "--out", str(tmp_path / "b"), "--db", str(db), "--name", "b",
                 "--from-adapter", str(tmp_path / "a"), "--set", "learning_rate=5e-3"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "b")
    rows = {r["name"]: r for r in Store(db).query("SELECT adapter_id, name, parent_adapter_id FROM adapters")}
    assert rows["b"]["parent_adapter_id"] == rows["orders"]["adapter_id"]
    assert rows["orders"]["parent_adapter_id"] is None


def _train_until_step_2(spec_file, tmp_path):
    """`harness train` in a subprocess, returned once it has logged step 2 (with its stderr so far)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "train", str(spec_file), "--out", str(tmp_path / "run"),
         "--db", str(tmp_path / "h.duckdb"), "--set", "max_steps=100000", "learning_rate=1e-4"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        # A shell's background job (`pytest ... &`) starts with SIGINT ignored, and so would this child,
        # which would then train on through the Ctrl-C test: give it the default, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    deadline = time.time() + 120
    for line in proc.stderr:  # wait until training has really started
        lines.append(line)
        if "step 2/" in line or time.time() > deadline:
            break
    return proc, lines


def _train_runs(db, capsys):
    capsys.readouterr()
    assert main(["runs", "--db", str(db), "--json"]) == 0
    return [r for r in json.loads(capsys.readouterr().out) if r["kind"] == "train"]


def test_sigterm_saves_a_marked_checkpoint_and_exits_143_with_resume_hint(spec_file, tmp_path, capsys):
    out, db = tmp_path / "run", tmp_path / "h.duckdb"
    proc, lines = _train_until_step_2(spec_file, tmp_path)
    # the run is in the store from its start, not only once it ends
    assert [r["status"] for r in _train_runs(db, capsys)] == ["running"]
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)[1], None
    err = "".join(lines) + rest
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM after step" in err and "--resume" in err.splitlines()[-1]
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "harness-complete.json").is_file()
    assert not (out / "adapter_model.safetensors").exists()
    [run] = _train_runs(db, capsys)
    assert run["status"] == "interrupted" and run["finished_at"] is not None and run["run_id"] in err
    steps = Store(db).query("SELECT count(*) AS n, count(adapter_id) AS with_adapter FROM step_logs WHERE run_id = ?",
                            [run["run_id"]])[0]
    assert steps["n"] >= 2 and steps["with_adapter"] == 0  # the steps it took; no adapter was written


def test_ctrl_c_marks_the_training_run_interrupted_in_harness_runs(spec_file, tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    proc, lines = _train_until_step_2(spec_file, tmp_path)
    proc.send_signal(signal.SIGINT)
    err = "".join(lines) + proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    [run] = _train_runs(db, capsys)
    assert run["status"] == "interrupted" and run["finished_at"] is not None
    assert main(["runs", "--db", str(db)]) == 0
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(run["run_id"])]
    assert line.split()[1:3] == ["train", "interrupted"]
    n = Store(db).query("SELECT count(*) AS n FROM step_logs WHERE run_id = ?", [run["run_id"]])[0]["n"]
    assert n >= 2  # the steps logged before Ctrl-C


def test_a_run_that_fails_after_it_started_is_listed_as_failed(spec_file, tmp_path, capsys):
    """The data cannot be split for eval: the error comes after the run was registered."""
    db = tmp_path / "h.duckdb"
    assert main(["train", str(spec_file), "--out", str(tmp_path / "f"), "--db", str(db), "--set", "eval_split=0.99"]) == 2
    assert "leaves no training rows" in capsys.readouterr().err
    assert [r["status"] for r in _train_runs(db, capsys)] == ["failed"]


def test_cli_resume_finishes_a_stopped_run_like_an_uninterrupted_one(spec_file, tiny_model_dir, tmp_path, capsys):
    from harness.models.base import load_base, resolve_base
    from harness.train.checkpoints import SaveAndStop
    from harness.train.recipe import train_adapter
    from harness.train.spec import load_spec
    from tests.train.test_train import _stop_at

    db = str(tmp_path / "h.duckdb")
    assert main(["train", str(spec_file), "--out", str(tmp_path / "whole"), "--db", db, "--set", "max_steps=4"]) == 0
    stopper = SaveAndStop()  # what SIGTERM does, at a known step
    part = train_adapter(load_spec(spec_file, {"max_steps": 4}), tmp_path / "run", base=load_base(resolve_base(str(tiny_model_dir))),
                         log=lambda s: None, stopper=stopper, callbacks=[_stop_at(stopper, 2)])
    assert part.interrupted
    assert main(["train", str(spec_file), "--out", str(tmp_path / "run"), "--db", db, "--set", "max_steps=4", "--resume"]) == 0

    def losses(d):
        return [json.loads(line)["loss"] for line in (d / "step_logs.jsonl").read_text().splitlines()]

    assert len(losses(tmp_path / "run")) == 4 and losses(tmp_path / "run") == losses(tmp_path / "whole")
    capsys.readouterr()
    assert main(["train", str(spec_file), "--out", str(tmp_path / "run"), "--db", db, "--set", "max_steps=5", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines first: the refusal comes after loading
    assert err[-1].startswith("error: --resume refused") and "max_steps: 4 -> 5" in err[-1]
    assert sum(line.startswith("error") for line in err) == 1


def test_a_run_that_blows_up_is_stopped_exits_1_writes_no_adapter_and_stores_its_findings(spec_file, tmp_path, capsys):
    """No clipping and an absurd learning rate: gradients explode and the loss goes non-finite (FAULTS 35)."""
    db, out = tmp_path / "h.duckdb", tmp_path / "run"
    code = main(["train", str(spec_file), "--out", str(out), "--db", str(db),
                 "--set", "learning_rate=1e6", "max_grad_norm=0", "max_steps=30"])
    err = capsys.readouterr().err
    assert code == 1, err
    line = [ln for ln in err.splitlines() if ln.startswith("error: ")][0]
    assert "training stopped at step" in line and "No adapter was written" in line
    assert any(k in line for k in ("nan_inf", "grad_explosion", "divergence"))
    assert not (out / "adapter_model.safetensors").exists()
    store = Store(db)
    run = store.query("SELECT run_id, status FROM runs WHERE kind = 'train'")
    assert [r["status"] for r in run] == ["stopped"]
    assert [r["status"] for r in _train_runs(db, capsys)] == ["stopped"]
    kinds = {r["kind"] for r in store.query("SELECT kind FROM findings WHERE run_id = ? AND severity = 'error'", [run[0]["run_id"]])}
    assert kinds & {"nan_inf", "grad_explosion", "divergence"}
    steps = store.query("SELECT max(step) AS last FROM step_logs WHERE run_id = ?", [run[0]["run_id"]])[0]["last"]
    assert steps < 30  # stopped early, not run to the end


def test_raw_data_with_a_field_mapping_trains_and_evaluates_about_ten_times(tiny_model_dir, tmp_path, capsys):
    """Issue 16.1/16.2: data as it is ({id, ticket, answer}); eval loss about 10 times a run, said up front."""
    raw = tmp_path / "tickets.jsonl"
    raw.write_text("".join(json.dumps({"id": i, "ticket": f"Refund order {i}", "answer": '{"category": "billing"}'}) + "\n"
                           for i in range(40)))
    spec = tmp_path / "t.yaml"
    spec.write_text(f"base: {tiny_model_dir}\ndata: {{path: {raw}, fields: {{prompt: ticket, completion: answer}}}}\n"
                    "r: 4\nlora_alpha: 8\nmax_steps: 20\nper_device_train_batch_size: 2\neval_split: 0.1\n")
    assert main(["train", str(spec), "--db", str(tmp_path / "h.duckdb"), "--out", str(tmp_path / "ad")]) == 0
    err = capsys.readouterr().err
    assert "every 2 steps (about 10 evaluations" in err
    record = json.loads((tmp_path / "ad" / "harness.json").read_text())
    assert record["task_format"] == {"kind": "json_keys", "keys": ["category"]}
    assert record["metrics"]["best_eval_loss"] is not None
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("completion: answer", "completion: reply"))
    assert main(["train", str(bad), "--db", str(tmp_path / "h.duckdb"), "--out", str(tmp_path / "ad2")]) == 2
    msg = _one_line_error(capsys)
    assert "reply" in msg and "answer, id, ticket" in msg


def test_the_trained_adapters_model_card_names_no_local_path(spec_file, tmp_path):
    """Issue 31.5: PEFT's card named the base by its local directory (for the embedded base, a path in our cache)."""
    from huggingface_hub import ModelCard

    out = tmp_path / "out"
    assert main(["train", str(spec_file), "--out", str(out), "--db", str(tmp_path / "h.duckdb")]) == 0
    text = (out / "README.md").read_text()
    assert str(tmp_path) not in text and "pytest-of" not in text
    assert ModelCard.load(out / "README.md").data.base_model is None  # a local base: no hub id to name
