"""The hostile-input corpus (issue 9): each case reproduces a hole found on main, through the command
line where a user meets it, and checks the exit code of DESIGN.md, a one-line message, that no
sentinel file appears, that no stored row is lost, and that no base-model weight changes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.errors import AdapterFileError, IncompatibleError, SafetyError

REPO = Path(__file__).resolve().parents[1]


class Sentinel:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def write_suite(d: Path, template: str = "{{ input }}", scorers: str = "  - name: exact_match\n",
                rows: list[str] | None = None, extra: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "suite.yaml").write_text(
        "name: hostile\nversion: 1\ndata: {path: data.jsonl, fields: {input: question, target: answer}}\n"
        f"prompt: {{template: {json.dumps(template)}}}\ngeneration: {{max_new_tokens: 4}}\n{extra}scorers:\n{scorers}"
    )
    lines = rows if rows is not None else [json.dumps({"id": "q1", "question": "Capital of France?", "answer": "Paris"})]
    (d / "data.jsonl").write_text("".join(line + "\n" for line in lines))
    return d / "suite.yaml"


def eval_args(tiny: Path, tmp: Path, *extra: str) -> list[str]:
    return ["eval", "--base", str(tiny), "--db", str(tmp / "h.duckdb"), *extra]


def db_counts(db: Path) -> dict[str, int]:
    """Row counts read in a fresh process, as FAULTS.md asks."""
    code = (
        "import duckdb, json, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        "print(json.dumps({t: con.execute(f'SELECT count(*) FROM {t}').fetchone()[0] "
        "for t in ('runs', 'generations', 'scores', 'run_results')}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def stored_db(tiny_model_dir, tmp_path_factory):
    """A database holding one clean run, to check that a refused command loses nothing."""
    tmp = tmp_path_factory.mktemp("stored")
    suite = write_suite(tmp / "clean")
    assert main(eval_args(tiny_model_dir, tmp, "--suite", str(suite))) in (0, 1)
    return tmp / "h.duckdb"


# -- security -------------------------------------------------------------------------------------


def test_suite_template_cannot_run_code(tiny_model_dir, tmp_path, capsys, stored_db):
    sentinel = tmp_path / "PWNED"
    payload = "{{ cycler.__init__.__globals__.os.system('touch " + str(sentinel) + "') }}{{ input }}"
    suite = write_suite(tmp_path / "s", template=payload)
    before = db_counts(stored_db)
    t0 = time.perf_counter()
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(stored_db), "--suite", str(suite)]) == 4
    msg = one_line_error(capsys)
    assert str(suite) in msg and "unsafe" in msg and "cycler" in msg
    assert not sentinel.exists()
    assert time.perf_counter() - t0 < 20  # refused at suite load, before any model
    assert db_counts(stored_db) == before


@pytest.mark.parametrize("expr", ["{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ lipsum.__globals__ }}",
                                  "{{ self.__init__.__globals__ }}", "{{ [].append(1) }}"])
def test_sandbox_blocks_other_escapes(tmp_path, expr):
    from harness.suites.spec import load_examples, load_suite

    suite = load_suite(write_suite(tmp_path / "s", template=expr + "{{ input }}"))
    with pytest.raises(SafetyError):
        load_examples(suite)


def test_yaml_alias_bomb_is_refused_fast(tmp_path, capsys):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "suite.yaml"
    bomb.write_text("\n".join(levels) + "\nname: bomb\n")
    assert len(bomb.read_bytes()) < 600
    t0 = time.perf_counter()
    assert main(["eval", "--suite", str(bomb), "--db", str(tmp_path / "h.duckdb")]) == 2
    assert time.perf_counter() - t0 < 5
    assert "alias" in one_line_error(capsys)


def test_oversized_spec_files_are_refused(tmp_path, capsys):
    big = tmp_path / "suite.yaml"
    big.write_text("name: big\ndescription: " + "x" * (2 << 20) + "\n")
    assert main(["eval", "--suite", str(big), "--db", str(tmp_path / "h.duckdb")]) == 2
    assert "limit" in one_line_error(capsys)
    spec = tmp_path / "train.yaml"
    spec.write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 8) + "]\n" for p, c in zip("abcdefg", "bcdefgh")))
    assert main(["train", str(spec), "--db", str(tmp_path / "h.duckdb")]) == 2
    assert "alias" in one_line_error(capsys)


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1.0)
    out = tmp_path_factory.mktemp("lora")
    pm.save_pretrained(out)
    return out


def _rewrite_tensors(src: Path, dst: Path, extra: dict[str, torch.Tensor] | None = None,
                     config: dict | None = None) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(src / "adapter_model.safetensors"))
    tensors.update(extra or {})
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    if config is not None:
        cfg = json.loads((src / "adapter_config.json").read_text())
        cfg.update(config)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_adapter_carrying_a_base_weight_is_refused_and_the_base_is_untouched(tiny_model_dir, lora_dir, tmp_path, capsys, stored_db):
    hidden = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    bad = _rewrite_tensors(lora_dir, tmp_path / "bad", {"base_model.model.model.norm.weight": torch.zeros(hidden)})
    suite = write_suite(tmp_path / "clean")
    before = db_counts(stored_db)
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(stored_db), "--suite", str(suite),
                 "--adapter", str(bad)]) == 4
    msg = one_line_error(capsys)
    assert "base_model.model.model.norm.weight" in msg and "modules_to_save" in msg
    assert db_counts(stored_db) == before


def test_modules_to_save_stays_inside_the_adapter(tiny_model_dir, tmp_path):
    """An adapter with a trained lm_head copy: PEFT's unload() would leave that copy in the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.evaluation.engine import attached
    from harness.evaluation.targets import Target
    from harness.models.adapters import inspect_adapter
    from harness.models.base import load_base, resolve_base, weights_fingerprint

    torch.manual_seed(2)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    with torch.no_grad():
        pm.base_model.model.lm_head.modules_to_save["default"].weight.mul_(3.0)
    pm.save_pretrained(tmp_path / "mts")
    info = inspect_adapter(tmp_path / "mts")  # a declared module_to_save is accounted for
    base = load_base(resolve_base(str(tiny_model_dir)), device="cpu")
    clean = weights_fingerprint(base.model)
    ids = base.tokenizer("Capital of France?", return_tensors="pt").input_ids
    with torch.no_grad():
        ref_logits = base.model(ids).logits
        with attached(base, [Target(info, 1.0)]) as group:
            assert not torch.equal(group.model(ids).logits, ref_logits)  # the adapter's lm_head is in use
        assert torch.equal(base.model(ids).logits, ref_logits)
    assert weights_fingerprint(base.model) == clean


def test_a_detach_that_leaves_a_trace_stops_the_run_before_the_base_generates(tiny_model_dir, tmp_path, monkeypatch):
    """The second layer: even if a detach went wrong, no base row is written from the changed model.

    The trace is left through the adapter path itself, not by hand: the detach is swapped for PEFT's own
    ``merge_and_unload``, which writes the adapter's update into the base's q_proj weights. (The test used
    to rely on ``unload()`` keeping a ``modules_to_save`` copy in place of the base's lm_head; PEFT 0.22
    puts the original module back, so that no longer changes the base, and the guard had nothing to find.)
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import harness.evaluation.engine as engine
    import harness.evaluation.runner as runner
    from harness.evaluation.targets import expand_targets
    from harness.models.adapters import inspect_adapter
    from harness.models.base import load_base, resolve_base
    from harness.store import RunInfo, Store
    from harness.suites.spec import load_suite

    # init_lora_weights=False: B is random, so the adapter's update (and a merge of it) is not zero
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    pm.save_pretrained(tmp_path / "mts")
    monkeypatch.setattr(engine, "detach_adapter", lambda m: m.merge_and_unload())  # leaves the update in the base
    base = load_base(resolve_base(str(tiny_model_dir)), device="cpu")
    suites = [load_suite(write_suite(tmp_path / "s1")), load_suite(write_suite(tmp_path / "s2", extra="description: two\n"))]
    store = Store(tmp_path / "h.duckdb")
    targets = expand_targets([inspect_adapter(tmp_path / "mts")], [1.0])
    with pytest.raises(SafetyError, match="weights changed"):
        with store.run(RunInfo(kind="eval", command="test")) as run:
            runner.run_eval(base, targets, suites, run, store, log=lambda m: None)
    # the self-check's plain load and detach comes first, so the trace is found before anything is
    # generated: no row at all, and certainly no base row from the changed model
    assert store.query("SELECT count(*) AS n FROM generations")[0]["n"] == 0


def test_auto_map_in_tokenizer_config_is_refused(tiny_model_dir, tmp_path, capsys):
    d = tmp_path / "base"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert main(eval_args(d, tmp_path, "--suite", str(write_suite(tmp_path / "s")))) == 4
    assert "tokenizer_config.json" in one_line_error(capsys)


def test_explicit_hub_online_switch_is_overridden():
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    env.pop("HARNESS_ALLOW_HUB", None)
    code = "import harness, os; print(os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'], os.environ['HF_DATASETS_OFFLINE'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["1", "1", "1"]
    env["HARNESS_ALLOW_HUB"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["0", "0", "0"]


def test_checkpoint_with_pickled_weights_is_refused_before_the_trainer(lora_dir, tmp_path):
    from harness.train.checkpoints import check_checkpoint_files

    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(lora_dir, ckpt)
    (ckpt / "adapter_model.safetensors").unlink()
    sentinel = tmp_path / "PWNED"
    (ckpt / "adapter_model.bin").write_bytes(pickle.dumps(Sentinel(sentinel)))
    with pytest.raises(SafetyError, match="adapter_model.bin"):
        check_checkpoint_files(ckpt)
    # weights fine, optimizer state replaced by a code-carrying pickle
    shutil.rmtree(ckpt)
    shutil.copytree(lora_dir, ckpt)
    torch.save({"step": 1}, ckpt / "scheduler.pt")
    (ckpt / "optimizer.pt").write_bytes(pickle.dumps(Sentinel(sentinel)))
    with pytest.raises(SafetyError, match="optimizer.pt"):
        check_checkpoint_files(ckpt)
    assert not sentinel.exists()
    (ckpt / "optimizer.pt").unlink()
    check_checkpoint_files(ckpt)  # plain tensor files pass


def test_allow_pickle_loads_a_bin_only_base_with_the_weights_only_guard(tiny_model_dir, tmp_path, capsys):
    from harness.models.base import load_base, resolve_base

    d = tmp_path / "binbase"
    shutil.copytree(tiny_model_dir, d)
    from safetensors.torch import load_file

    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    suite = write_suite(tmp_path / "s")
    assert main(eval_args(d, tmp_path, "--suite", str(suite))) == 4  # refused without the opt-in
    assert "--allow-pickle" in one_line_error(capsys)
    ref = resolve_base(str(d), allow_pickle=True)
    base = load_base(ref, device="cpu")
    ids = base.tokenizer("hello", return_tensors="pt").input_ids
    clean = load_base(resolve_base(str(tiny_model_dir)), device="cpu")
    with torch.no_grad():
        assert torch.equal(base.model(ids).logits, clean.model(ids).logits)
    # a .bin that carries code is still refused by the weights_only loader
    sentinel = tmp_path / "PWNED"
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Sentinel(sentinel)))
    with pytest.raises(Exception):
        load_base(resolve_base(str(d), allow_pickle=True), device="cpu")
    assert not sentinel.exists()


# -- exit codes -----------------------------------------------------------------------------------


def test_train_target_modules_the_base_lacks_exit_3_before_loading(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import harness.models.base

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"base: {tiny_model_dir}\ndata: {data}\ntarget_modules: [c_attn, q_proj]\nmax_steps: 1\n")

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the pre-flight")

    monkeypatch.setattr(harness.models.base, "load_base", no_load)
    assert main(["train", str(spec), "--db", str(tmp_path / "h.duckdb")]) == 3
    msg = one_line_error(capsys)
    assert "c_attn" in msg and "q_proj" in msg and "linear modules" in msg


def test_adapter_target_modules_the_base_lacks_exit_3_naming_modules(tiny_model_dir, lora_dir, tmp_path):
    """FAULTS.md 20: another architecture's module names, wrapped with the modules the base has."""
    from harness.models.adapters import inspect_adapter, load_adapter
    from harness.models.base import load_base, resolve_base

    d = tmp_path / "gpt2ish"
    shutil.copytree(lora_dir, d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["target_modules"] = ["c_attn"]
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    base = load_base(resolve_base(str(tiny_model_dir)), device="cpu")
    with pytest.raises(IncompatibleError, match="c_attn.*linear modules in this base: .*q_proj") as exc:
        load_adapter(base.model, inspect_adapter(d))
    assert exc.value.exit_code == 3


@pytest.mark.parametrize("scorers, match", [
    ("  - name: alias_match\n    args: {mode: bogus}\n", "bogus"),
    ("  - name: regex\n    args: {pattern: \"(\"}\n", "invalid pattern"),
    ("  - name: alias_match\n    args: [1, 2]\n", "must be a mapping"),
])
def test_bad_scorer_arguments_are_suite_errors_before_the_model(tmp_path, capsys, scorers, match):
    suite = write_suite(tmp_path / "s", scorers=scorers)
    assert main(["eval", "--suite", str(suite), "--base", "/nonexistent", "--db", str(tmp_path / "h.duckdb")]) == 2
    out = capsys.readouterr().err
    assert match in out and str(suite) in out


@pytest.mark.parametrize("extra, match", [
    (["--scale", "nan"], "finite"), (["--scale", "inf"], "finite"), (["--scale", "-1"], ">= 0"),
    (["--device", "cuda:7"], "cuda"), (["--device", "tpu"], "tpu"),
    (["--report", "."], "is a directory"),
])
def test_bad_flags_exit_2_before_any_work(tiny_model_dir, tmp_path, capsys, extra, match, stored_db):
    suite = write_suite(tmp_path / "s")
    before = db_counts(stored_db)
    assert main(["eval", "--base", str(tiny_model_dir), "--db", str(stored_db), "--suite", str(suite), *extra]) == 2
    assert match in one_line_error(capsys)
    assert db_counts(stored_db) == before


def test_report_out_a_directory_or_unwritable(stored_db, tmp_path, capsys):
    assert main(["report", "--db", str(stored_db), "--out", str(tmp_path)]) == 2
    assert "is a directory" in one_line_error(capsys)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        assert main(["report", "--db", str(stored_db), "--out", str(ro / "r.html")]) == 2
        assert "permission" in one_line_error(capsys)
    finally:
        ro.chmod(0o700)


def test_report_disk_full_keeps_the_previous_file(stored_db, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "r.html"
    assert main(["report", "--db", str(stored_db), "--out", str(out)]) == 0
    capsys.readouterr()
    good = out.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["report", "--db", str(stored_db), "--out", str(out)]) == 5
    assert "No space left" in one_line_error(capsys)
    assert out.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left


@pytest.mark.parametrize("line, match", [
    ('{"id": "q1", "question": "Capital of \\ud800 France?", "answer": "Paris"}', "lone surrogate"),
    ('{"id": "q1", "question": "Capital of France?", "answer": NaN}', "NaN is not a JSON value"),
    ('{"id": "q1", "question": "Capital of France?", "answer": Infinity}', "Infinity is not a JSON value"),
])
def test_bad_values_in_suite_data_name_file_and_line(tmp_path, capsys, line, match):
    ok = json.dumps({"id": "q0", "question": "Two plus two?", "answer": "4"})
    suite = write_suite(tmp_path / "s", rows=[ok, line])
    assert main(["eval", "--suite", str(suite), "--db", str(tmp_path / "h.duckdb")]) == 2
    out = capsys.readouterr().err
    assert "data.jsonl:2" in out and match in out


def test_bad_values_in_training_data_name_file_and_line(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a\\udc00", "completion": "b"}\n')
    spec = tmp_path / "s.yaml"
    spec.write_text(f"base: {tiny_model_dir}\ndata: {data}\nmax_steps: 1\n")
    assert main(["train", str(spec), "--db", str(tmp_path / "h.duckdb")]) == 2
    msg = one_line_error(capsys)
    assert "d.jsonl:2" in msg and "surrogate" in msg


def test_bad_generation_settings_are_suite_errors(tmp_path, capsys):
    suite = write_suite(tmp_path / "s")
    text = suite.read_text().replace("generation: {max_new_tokens: 4}", "generation: {max_new_tokens: 4, do_sample: true, temperature: -1}")
    suite.write_text(text)
    assert main(["eval", "--suite", str(suite), "--db", str(tmp_path / "h.duckdb")]) == 2
    assert "temperature" in capsys.readouterr().err


def test_a_run_with_errors_exits_1_and_a_rerun_retries_them(tiny_model_dir, tmp_path, capsys):
    """A prompt too long for the model is an error row; error rows are never served from the cache."""
    long_q = " ".join(["hoodie"] * 700)  # past the tiny model's 512 positions
    rows = [json.dumps({"id": "ok", "question": "Capital of France?", "answer": "Paris"}),
            json.dumps({"id": "long", "question": long_q, "answer": "x"})]
    suite = write_suite(tmp_path / "s", rows=rows)
    args = eval_args(tiny_model_dir, tmp_path, "--suite", str(suite))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 of 2 results" in err and "hostile/long" in err
    assert main(args) == 1  # the error row is retried, not served: 1 cached (the good one), 1 generated
    assert "1 generated, 1 cached, 1 errors" in capsys.readouterr().err


def test_adapter_naming_another_base_and_unknown_config_keys_warn_and_are_stored(tiny_model_dir, lora_dir, tmp_path, capsys):
    d = tmp_path / "ad"
    shutil.copytree(lora_dir, d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(base_model_name_or_path="meta-llama/Llama-2-7b-hf", frobnicate=True)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    suite = write_suite(tmp_path / "s")
    assert main(eval_args(tiny_model_dir, tmp_path, "--suite", str(suite), "--adapter", str(d))) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert any("Llama-2-7b-hf" in w for w in warnings) and any("frobnicate" in w for w in warnings)
    import duckdb

    con = duckdb.connect(str(tmp_path / "h.duckdb"), read_only=True)
    stored = json.loads(con.execute("SELECT config FROM runs WHERE kind = 'eval'").fetchone()[0])["warnings"]
    con.close()
    assert sorted(stored) == sorted(w.removeprefix("warning: ") for w in warnings)


def test_huge_text_fields_are_capped_and_flagged(tmp_path, monkeypatch):
    from harness.suites.spec import load_examples, load_suite

    big = "x" * (10 << 20)
    suite = load_suite(write_suite(tmp_path / "s", rows=[json.dumps({"id": "big", "question": big, "answer": "y" * 20000})]))
    [ex] = load_examples(suite)
    assert len(ex.input) == suite.max_chars == 16_384 and len(ex.target) == 16_384
    assert set(ex.truncated) == {"question", "answer"}
    monkeypatch.setenv("HARNESS_MAX_TEXT_CHARS", "100")
    [ex] = load_examples(load_suite(tmp_path / "s" / "suite.yaml"))
    assert len(ex.input) == 100


# -- FAULTS.md rows without a test until now -------------------------------------------------------


def test_faults_14_bin_beside_safetensors_is_never_opened(tiny_model_dir, lora_dir, tmp_path, monkeypatch):
    import builtins

    from harness.models.adapters import inspect_adapter, load_adapter
    from harness.models.base import load_base, resolve_base

    d = tmp_path / "both"
    shutil.copytree(lora_dir, d)
    sentinel = tmp_path / "PWNED"
    (d / "adapter_model.bin").write_bytes(pickle.dumps(Sentinel(sentinel)))
    base = load_base(resolve_base(str(tiny_model_dir)), device="cpu")
    opened: list[str] = []
    real_open, real_load = builtins.open, torch.load

    def spy_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def spy_load(f, *a, **k):
        opened.append(f"torch.load:{f}")
        return real_load(f, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(torch, "load", spy_load)
    load_adapter(base.model, inspect_adapter(d)).unload()
    assert not [p for p in opened if p.endswith(".bin")]
    assert not sentinel.exists()


def _header_file(path: Path, header: bytes, body: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)


@pytest.mark.parametrize("case", ["huge_length", "bad_json", "overlap", "shape_mismatch", "pickle_renamed",
                                  "invalid_length", "trailing", "dtype"])
def test_faults_16_crafted_headers_are_adapter_file_errors(lora_dir, tmp_path, case):
    from harness.models.adapters import inspect_adapter

    d = tmp_path / case
    shutil.copytree(lora_dir, d)
    f = d / "adapter_model.safetensors"
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    if case == "huge_length":
        f.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    elif case == "bad_json":
        _header_file(f, b"{not json", b"\0" * 16)
    elif case == "overlap":
        h = {key: {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
             key.replace("lora_A", "lora_B"): {"dtype": "F32", "shape": [4, 4], "data_offsets": [32, 96]}}
        _header_file(f, json.dumps(h).encode(), b"\0" * 96)
    elif case == "shape_mismatch":
        _header_file(f, json.dumps({key: {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 16]}}).encode(), b"\0" * 16)
    elif case == "pickle_renamed":
        f.write_bytes(pickle.dumps({"w": torch.zeros(2)}))
    elif case == "invalid_length":
        f.write_bytes(b"\x01\x02")
    elif case == "trailing":
        f.write_bytes(f.read_bytes() + b"garbage")
    elif case == "dtype":
        _header_file(f, json.dumps({key: {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}).encode(), b"\0" * 4)
    with pytest.raises(AdapterFileError, match="adapter_model.safetensors"):
        inspect_adapter(d)


def test_faults_18_zero_size_tensors_name_the_fix(lora_dir, tmp_path):
    from harness.models.adapters import inspect_adapter

    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    d = _rewrite_tensors(lora_dir, tmp_path / "zero", {key: torch.zeros(0)})
    with pytest.raises(AdapterFileError, match=r"shape \[0\].*gathered"):
        inspect_adapter(d)


def test_same_adapter_saved_twice_has_one_id(lora_dir, tmp_path):
    """Issue 10.7: PEFT writes target_modules in varying order; the header order varies too."""
    from safetensors.torch import load_file, save_file

    from harness.models.adapters import inspect_adapter

    d = tmp_path / "again"
    shutil.copytree(lora_dir, d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["target_modules"] = list(reversed(cfg["target_modules"]))
    cfg["base_model_name_or_path"] = "/somewhere/else"
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=4))
    tensors = load_file(str(lora_dir / "adapter_model.safetensors"))
    save_file(dict(reversed(list(tensors.items()))), str(d / "adapter_model.safetensors"), metadata={"x": "y"})
    assert inspect_adapter(d).adapter_id == inspect_adapter(lora_dir).adapter_id
    cfg["lora_alpha"] = cfg["lora_alpha"] * 2  # a change that changes outputs changes the id
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    assert inspect_adapter(d).adapter_id != inspect_adapter(lora_dir).adapter_id


def test_error_rows_are_retried_and_the_failed_run_keeps_its_history(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import duckdb

    import harness.evaluation.runner as runner
    from harness.generation.generate import Generation

    suite = write_suite(tmp_path / "s")
    args = eval_args(tiny_model_dir, tmp_path, "--suite", str(suite))
    real = runner.generate
    monkeypatch.setattr(runner, "generate", lambda model, tok, prompts, *a, **k: [
        Generation(None, 1, 0, 0.0, "RuntimeError: CUDA out of memory (injected)") for _ in prompts])
    assert main(args) == 1
    monkeypatch.setattr(runner, "generate", real)
    assert main(args) == 0
    assert "1 generated, 0 cached, 0 errors" in capsys.readouterr().err
    con = duckdb.connect(str(tmp_path / "h.duckdb"), read_only=True)
    runs = con.execute("SELECT run_id, n_errors, n_results FROM v_runs WHERE kind = 'eval' ORDER BY started_at").fetchall()
    con.close()
    assert [(e, n) for _, e, n in runs] == [(1, 1), (0, 1)]


def test_truncation_is_stored_and_counted(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import duckdb

    monkeypatch.setenv("HARNESS_MAX_TEXT_CHARS", "12")
    suite = write_suite(tmp_path / "s")  # "Capital of France?" is 18 characters; max_new_tokens 4
    assert main(eval_args(tiny_model_dir, tmp_path, "--suite", str(suite))) == 0
    out = capsys.readouterr().out
    con = duckdb.connect(str(tmp_path / "h.duckdb"), read_only=True)
    assert con.execute("SELECT truncated, length(input) FROM examples").fetchall() == [("question", 12)]
    n_new, cut = con.execute("SELECT n_new_tokens, truncated FROM generations").fetchone()
    n_cut = con.execute("SELECT max(n_truncated) FROM v_suite_summary").fetchone()[0]
    con.close()
    assert cut == (n_new == 4) and n_cut == int(cut)
    assert (", 1 cut)" in out) == cut


def test_a_disk_that_fills_during_eval_exits_5_and_keeps_what_was_stored(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Issue 9: a full disk mid-eval was a bare OSError with the run left 'running' and .shard.tmp behind."""
    import errno

    suite = write_suite(tmp_path / "s", rows=[json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answer": "x"})
                                               for i in range(6)])
    db = tmp_path / "h.duckdb"
    args = ["eval", "--base", str(tiny_model_dir), "--db", str(db), "--suite", str(suite), "--flush-every", "2", "--no-gates"]
    assert main(args) == 0
    before = db_counts(db)
    capsys.readouterr()
    suite2 = write_suite(tmp_path / "s2", rows=[json.dumps({"id": f"p{i}", "question": f"Prompt {i}?", "answer": "y"})
                                                 for i in range(6)], extra="description: second\n")
    real_fsync, calls = os.fsync, []

    def filling(fd):
        calls.append(fd)
        if len(calls) > 12:  # the disk fills part-way through the second run
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", filling)
    code = main(["eval", "--base", str(tiny_model_dir), "--db", str(db), "--suite", str(suite2), "--flush-every", "2", "--no-gates"])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert code == 5
    err = capsys.readouterr().err
    assert "No space left" in err or "disk full" in err
    after = db_counts(db)
    assert all(after[t] >= before[t] for t in before)  # nothing already stored was lost
    assert not list((tmp_path / "h.duckdb.shards").glob("*.tmp"))  # no temporary shard left behind
    # the failed run's last status could not be written (the disk was full), so it reads as running while
    # this test process lives and as interrupted once it is gone (test_results_cli checks that display)
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT status, pid, incomplete FROM v_runs WHERE status <> 'complete'").fetchall()
    con.close()
    assert all(pid == os.getpid() and incomplete for _, pid, incomplete in rows)
    assert main(args[:-1] + ["--no-gates"]) == 0  # and the next run works


# -- issue 29.1: every adapter check runs before PEFT touches the base, through every command ----------------

def _lora_for(base_dir: Path, out: Path, **config) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                                                 **config))
    pm.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def foreign_adapters(tiny_model_dir, tmp_path_factory):
    """Adapters that do not fit the tiny base: made for a wider base (every shape differs), for a deeper one
    (layers the base lacks: a partial load), and naming target modules the base lacks."""
    from tests.helpers import make_tiny_llama

    root = tmp_path_factory.mktemp("foreign")
    wide = make_tiny_llama(root / "wide-base", hidden=96)
    deep = make_tiny_llama(root / "deep-base", layers=4)
    ok = _lora_for(tiny_model_dir, root / "ok", target_modules=["q_proj", "v_proj"])
    return {
        "wider base": (_lora_for(wide, root / "wide", target_modules=["q_proj", "v_proj"]), 3),
        "deeper base": (_lora_for(deep, root / "deep", target_modules=["q_proj", "v_proj"]), 3),
        "missing targets": (_lora_for(tiny_model_dir, root / "targets", target_modules=["q_proj"]), 3),
        "regex matching nothing": (_edited(ok, root / "regex-none", target_modules=r".*\.nothing_proj"), 3),
        "regex that does not compile": (_edited(ok, root / "regex-bad", target_modules="("), 3),
        "modules_to_save without weights": (_edited(ok, root / "mts-norm", modules_to_save=["norm"]), 3),
        "partial layer 0": (_edited(ok, root / "partial", keep=lambda k: ".layers.0." in k), 3),
        "embed_tokens over q/v tensors": (_edited(ok, root / "embed", target_modules=["embed_tokens"]), 3),
        "2 GiB lora_A": (_huge_lora_a(ok, root / "huge"), 3),
    }


def _edited(src: Path, dst: Path, keep=None, **config) -> Path:
    """A copy of ``src`` with its config edited and only the tensors ``keep`` accepts."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    if keep is not None:
        state = load_file(dst / "adapter_model.safetensors")
        save_file({k: v for k, v in state.items() if keep(k)}, dst / "adapter_model.safetensors")
    return dst


def _huge_lora_a(src: Path, dst: Path) -> Path:
    """A valid safetensors header over one 2 GiB lora_A (a sparse file: no disk is used for the zeros)."""
    import struct

    shutil.copytree(src, dst)
    n = 4 * 2**27 * 4  # [4, 2**27] float32
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    header = json.dumps({key: {"dtype": "F32", "shape": [4, 2**27], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(dst / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + n)
    return dst


def _break_targets(adapter: Path) -> None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["target_modules"] = ["no_such_proj"]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("command", ["eval", "sweep", "check", "export"])
def test_a_foreign_adapter_is_refused_with_one_line_by_every_command(command, foreign_adapters, tiny_model_dir, tmp_path, capsys):
    """Every case is refused from the files alone (no model loads: a fraction of a second, bounded memory, the
    2 GiB tensor never read), with its exit code and one line naming the adapter, and nothing is stored."""
    import resource
    import time

    suite = write_suite(tmp_path / "s")
    db = tmp_path / f"{command}.duckdb"
    for what, (adapter, code) in foreign_adapters.items():
        if what == "missing targets":
            _break_targets(adapter)
        args = {"eval": ["eval", "--adapter", str(adapter)],
                "sweep": ["sweep", "--adapter", str(adapter), "--scales", "0,0.5,1"],
                "check": ["check", "--adapter", str(adapter)],
                "export": ["export", "--adapter", str(adapter), "--scale", "0.5", "--out", str(tmp_path / "out")]}[command]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        got = main([*args, "--base", str(tiny_model_dir)] + ([] if command == "export" else ["--suite", str(suite), "--db", str(db)]))
        took = time.perf_counter() - t0
        err = capsys.readouterr().err
        assert got == code, f"{what}: exit {got}\n{err}"
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert "Traceback" not in err and len(errors) == 1 and str(adapter) in errors[0], (what, err)
        assert took < 5 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000, (what, took)  # KiB
        assert not (tmp_path / "out").exists() and (not db.exists() or db_counts(db)["generations"] == 0), what


def test_after_a_refused_adapter_the_base_in_the_same_process_is_the_clean_base(foreign_adapters, tiny_model_dir):
    """A Python caller keeps its base model: after each refusal its weights hash and a greedy answer equal the
    clean base's (before, a failed from_pretrained left 540 LoRA modules injected)."""
    from harness.errors import HarnessError
    from harness.evaluation.engine import attached
    from harness.evaluation.targets import Target
    from harness.generation.generate import GenerationSettings, generate
    from harness.models.adapters import inspect_adapter
    from harness.models.base import load_base, resolve_base, weights_fingerprint

    base = load_base(resolve_base(str(tiny_model_dir)), device="cpu")
    clean_hash = weights_fingerprint(base.model)
    prompts = ["What is the capital of France?"]
    clean = [g.text for g in generate(base.model, base.tokenizer, prompts, GenerationSettings(max_new_tokens=8))]
    for what, (adapter, _) in foreign_adapters.items():
        with pytest.raises(HarnessError):
            # a Python caller that skips the pre-flight against the base (the 2 GiB file is refused by it:
            # reading 2 GiB only to be refused by PEFT is not a caller's path worth the test's time)
            info = inspect_adapter(adapter, base=base.ref) if what == "2 GiB lora_A" else inspect_adapter(adapter)
            with attached(base, [Target(None, 0.0), Target(info, 1.0)], checks=[]):
                pass
        assert not any("lora" in type(m).__module__ for m in base.model.modules()), what
        assert weights_fingerprint(base.model) == clean_hash, what
        assert [g.text for g in generate(base.model, base.tokenizer, prompts, GenerationSettings(max_new_tokens=8))] == clean, what


# -- issue 29.3: a suite reads only its own folder, and renders a bounded prompt -----------------------------

@pytest.mark.parametrize("where", ["parent", "absolute", "link"])
def test_a_suite_reaching_outside_its_folder_exits_4_and_stores_nothing(where, tiny_model_dir, tmp_path, capsys, monkeypatch):
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"id": "k", "question": "API_KEY=sk-planted", "answer": "x"}) + "\n")
    d = tmp_path / "suites" / "s"
    write_suite(d)
    path = {"parent": "../../secret.jsonl", "absolute": str(secret), "link": "data-link.jsonl"}[where]
    if where == "link":
        (d / "data-link.jsonl").symlink_to(secret)
    spec = (d / "suite.yaml").read_text()
    (d / "suite.yaml").write_text(spec.replace("path: data.jsonl", f"path: {path}"))
    db = tmp_path / "h.duckdb"
    monkeypatch.delenv("HARNESS_SUITE_ROOTS", raising=False)
    assert main(eval_args(tiny_model_dir, tmp_path, "--suite", str(d / "suite.yaml"))) == 4
    line = one_line_error(capsys)
    assert "outside the suite's folder" in line and str(secret) in line and "HARNESS_SUITE_ROOTS" in line
    assert not db.exists() or db_counts(db)["generations"] == 0
    # a root the user names lets it in
    monkeypatch.setenv("HARNESS_SUITE_ROOTS", str(tmp_path))
    assert main(["suites", "check", str(d / "suite.yaml")]) == 0


def test_a_repetition_template_exits_4_within_a_second(tiny_model_dir, tmp_path, capsys):
    import resource
    import time

    d = tmp_path / "s"
    write_suite(d, template="{{ 'x' * 200000000 }}{{ input }}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    assert main(["suites", "check", str(d / "suite.yaml")]) == 4
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: far from 200 MB
    line = one_line_error(capsys)
    assert "repetition" in line and "cap" in line and str(d / "suite.yaml") in line
    write_suite(d, template="{% for i in range(90000) %}{{ input }}{% endfor %}")
    assert main(["suites", "check", str(d / "suite.yaml")]) == 4
    assert "passes the cap" in one_line_error(capsys)


def test_a_file_given_for_an_adapter_directory_is_named_as_a_file(lora_dir, tiny_model_dir, tmp_path, capsys):
    """Issue 29.4: a file where a directory is expected said "does not exist"."""
    weights = lora_dir / "adapter_model.safetensors"
    assert main(eval_args(tiny_model_dir, tmp_path, "--adapter", str(weights), "--suite", str(write_suite(tmp_path / "s")))) == 2
    line = one_line_error(capsys)
    assert "is a file, not an adapter directory" in line and str(lora_dir) in line and "does not exist" not in line


def test_a_modules_to_save_norm_adapter_with_its_weights_runs_and_leaves_the_base(tiny_model_dir, tmp_path, capsys):
    """The legitimate form of the case above: ``modules_to_save: [norm]`` with the trained norm in the file is an
    adapter PEFT supports; it evaluates (exit 0), and the base is the clean base afterwards."""
    from harness.evaluation.engine import attached
    from harness.evaluation.targets import Target
    from harness.models.adapters import inspect_adapter
    from harness.models.base import load_base, resolve_base, weights_fingerprint

    adapter = _lora_for(tiny_model_dir, tmp_path / "mts-norm", target_modules=["q_proj"], modules_to_save=["norm"])
    assert "base_model.model.model.norm.weight" in __import__("safetensors.torch").torch.load_file(adapter / "adapter_model.safetensors")
    assert main(eval_args(tiny_model_dir, tmp_path, "--adapter", str(adapter), "--suite", str(write_suite(tmp_path / "s")))) == 0
    base = load_base(resolve_base(str(tiny_model_dir)), device="cpu")
    clean = weights_fingerprint(base.model)
    with attached(base, [Target(None, 0.0), Target(inspect_adapter(adapter, base=base.ref), 1.0)], checks=[]):
        pass
    assert weights_fingerprint(base.model) == clean


def test_the_pre_flight_reads_a_large_adapter_a_chunk_at_a_time(tmp_path):
    """Issue 29.4: a 2 GiB tensor was read whole, twice (31 s, ~4 GB RSS). Without a base to refuse it from the
    header, the data pass now streams: 256 MiB of tensor data raise the peak RSS by far less than 256 MiB, and the
    id equals a hash computed independently from the file's bytes."""
    import hashlib
    import resource

    from harness.models.adapters import canonical_config, inspect_adapter

    d = tmp_path / "big"
    d.mkdir()
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    n = 4 * 2**24 * 4
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    header = json.dumps({key: {"dtype": "F32", "shape": [4, 2**24], "data_offsets": [0, n]}}).encode()
    with open(d / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info = inspect_adapter(d)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    h = hashlib.sha256(canonical_config(cfg).encode())
    h.update(f"{key}|float32|[4, {2**24}]|".encode())
    h.update(bytes(n))
    assert info.adapter_id == h.hexdigest()


def test_on_a_first_run_the_adapters_own_files_are_checked_before_the_base_converts(foreign_adapters, tiny_model_dir,
                                                                                    tmp_path, capsys, monkeypatch):
    """The first run on a machine converts the embedded base (seconds, transformers' import): each adapter's own
    files are read first there, and the fit to the base is still checked before any weights load (exit 3)."""
    import harness.models.base

    monkeypatch.setattr(harness.models.base, "needs_conversion", lambda name: True)
    suite = write_suite(tmp_path / "s")
    for what, (adapter, code) in foreign_adapters.items():
        if what in ("missing targets", "2 GiB lora_A"):
            continue  # the first is edited by the matrix above; the second would be read whole here (2 GiB)
        got = main(["eval", "--adapter", str(adapter), "--base", str(tiny_model_dir), "--suite", str(suite),
                    "--db", str(tmp_path / "h.duckdb")])
        err = capsys.readouterr().err
        assert got == code and "Traceback" not in err, (what, err)
        assert [line for line in err.splitlines() if line.startswith("error: ")][0].count(str(adapter)) >= 1, what
