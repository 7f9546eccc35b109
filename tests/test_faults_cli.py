"""FAULTS.md rows proven until now only by library calls, proven again through the user's entry point: the
`harness` command (``harness.cli.main`` in this process, or ``python -m harness`` in a second process where
a real second process is the point).

Each test checks what the common contract of FAULTS.md asks of an error row: the exit code of DESIGN.md,
one line starting ``error: `` that names the file, field or run, no traceback, and nothing already stored
lost (row counts read back by plain DuckDB in a fresh process, compared with a snapshot taken before).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.cli import main
from tests.store.test_store_support import counts, fill, shard_tables
from tests.test_hostile import Sentinel, write_suite

REPO = Path(__file__).resolve().parents[1]
LORA_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


# -- helpers --------------------------------------------------------------------------------------------


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``harness ARGV`` in this process: its exit code and everything it wrote to stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str, *, only: bool = True) -> str:
    """The one ``error: `` line of ``err``. With ``only`` nothing else may be there but ``warning: `` lines
    (a refusal before any model work prints nothing else); without, progress lines may come first and the
    error must be the last line."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err
    if only:
        assert all(ln.startswith(("error: ", "warning: ")) for ln in lines), err
    else:
        assert lines[-1] == errors[0], err
    return errors[0]


def eval_cmd(base: Path, suite: Path, db: Path, *extra: object) -> list[str]:
    return ["eval", "--base", str(base), "--suite", str(suite), "--db", str(db), *map(str, extra)]


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter for the tiny base (r=4, alpha=8 on q_proj and v_proj), with a non-zero update."""
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


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite") / "s")


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """A results database already holding rows (3 runs, 15 generations), with its counts from a fresh process."""
    db = tmp_path_factory.mktemp("stored") / "h.duckdb"
    fill(db)
    return db, counts(db)


def adapter_copy(src: Path, dst: Path, config: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the adapter ``src`` with its config updated by ``config`` and the keys ``drop`` removed."""
    shutil.copytree(src, dst)
    if config is not None or drop:
        cfg = json.loads((dst / "adapter_config.json").read_text())
        cfg.update(config or {})
        for k in drop:
            cfg.pop(k, None)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def refused_by_eval(capsys, tiny_model_dir, suite, stored, adapter: Path, code: int, *needles: str) -> str:
    """`harness eval --adapter ADAPTER` on a database that holds rows: exit ``code``, one line naming each of
    ``needles``, and the database as it was."""
    db, before = stored
    t0 = time.perf_counter()
    got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db, "--adapter", adapter))
    took = time.perf_counter() - t0
    assert got == code, err
    line = error_line(err)
    for needle in needles:
        assert needle in line, (needle, line)
    assert took < 20, took  # refused from the files, before any model work
    assert counts(db) == before
    return line


# -- rows 13, 14, 16, 18: the adapter's weights file ----------------------------------------------------


@pytest.mark.parametrize("command", ["eval", "sweep", "check"])
def test_row13_a_pickle_only_adapter_is_refused_exit_4_without_unpickling_it(command, lora_dir, tiny_model_dir, suite,
                                                                             stored, tmp_path, capsys):
    d = tmp_path / "bin-only"
    shutil.copytree(lora_dir, d)
    (d / "adapter_model.safetensors").unlink()
    sentinel = tmp_path / "PWNED"
    (d / "adapter_model.bin").write_bytes(pickle.dumps(Sentinel(sentinel)))
    db, before = stored
    argv = {"eval": ["eval"], "sweep": ["sweep", "--scales", "0,1"], "check": ["check"]}[command]
    got, err = run_cli(capsys, [*argv, "--base", tiny_model_dir, "--suite", suite, "--db", db, "--adapter", d])
    assert got == 4, err
    line = error_line(err)
    assert str(d) in line and "adapter_model.bin" in line and "safe_serialization=True" in line  # the conversion hint
    assert not sentinel.exists()
    assert counts(db) == before


def test_row13_train_from_a_pickle_only_adapter_is_refused_exit_4(lora_dir, tiny_model_dir, tmp_path, capsys):
    d = tmp_path / "bin-only"
    shutil.copytree(lora_dir, d)
    (d / "adapter_model.safetensors").unlink()
    sentinel = tmp_path / "PWNED"
    (d / "adapter_model.bin").write_bytes(pickle.dumps(Sentinel(sentinel)))
    spec = _train_spec(tiny_model_dir, tmp_path, ROWS)
    got, err = run_cli(capsys, ["train", spec, "--out", tmp_path / "out", "--db", tmp_path / "h.duckdb",
                                "--from-adapter", d])
    assert got == 4, err
    line = error_line(err, only=False)
    assert str(d) in line and "adapter_model.bin" in line
    assert not sentinel.exists() and not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_row14_eval_reads_only_the_safetensors_and_never_opens_the_bin_beside_it(lora_dir, tiny_model_dir, suite,
                                                                                 tmp_path, capsys, monkeypatch):
    import builtins

    from harness.models.adapters import inspect_adapter
    from harness.store import Store

    d = tmp_path / "both"
    shutil.copytree(lora_dir, d)
    sentinel = tmp_path / "PWNED"
    (d / "adapter_model.bin").write_bytes(pickle.dumps(Sentinel(sentinel)))
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
    db = tmp_path / "h.duckdb"
    got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db, "--adapter", d, "--no-gates"))
    monkeypatch.undo()
    assert got == 0, err
    assert "Traceback" not in err and not [ln for ln in err.splitlines() if ln.startswith("error")]
    assert not [p for p in opened if p.endswith(".bin")], opened
    assert not sentinel.exists()
    assert any(p.endswith("adapter_model.safetensors") for p in opened)  # the spy saw the adapter being read
    # the run evaluated the adapter from its safetensors: the stored id is that of the .bin-free directory
    rows = Store(db, read_only=True).query("SELECT DISTINCT adapter_id FROM generations WHERE adapter_id IS NOT NULL")
    assert [r["adapter_id"] for r in rows] == [inspect_adapter(lora_dir).adapter_id]


def _header_file(path: Path, header: bytes, body: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)


@pytest.mark.parametrize("case", ["huge_length", "bad_json", "overlap", "shape_mismatch", "pickle_renamed",
                                  "invalid_length", "trailing", "dtype", "empty"])
def test_row16_a_crafted_safetensors_header_is_one_line_exit_2(case, lora_dir, tiny_model_dir, suite, stored, tmp_path,
                                                               capsys):
    d = tmp_path / case
    shutil.copytree(lora_dir, d)
    f = d / "adapter_model.safetensors"
    sentinel = tmp_path / "PWNED"
    if case == "huge_length":
        f.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    elif case == "bad_json":
        _header_file(f, b"{not json", b"\0" * 16)
    elif case == "overlap":
        h = {LORA_A: {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
             LORA_A.replace("lora_A", "lora_B"): {"dtype": "F32", "shape": [4, 4], "data_offsets": [32, 96]}}
        _header_file(f, json.dumps(h).encode(), b"\0" * 96)
    elif case == "shape_mismatch":
        _header_file(f, json.dumps({LORA_A: {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 16]}}).encode(), b"\0" * 16)
    elif case == "pickle_renamed":
        f.write_bytes(pickle.dumps(Sentinel(sentinel)))
    elif case == "invalid_length":
        f.write_bytes(b"\x01\x02")
    elif case == "trailing":
        f.write_bytes(f.read_bytes() + b"garbage")
    elif case == "dtype":
        _header_file(f, json.dumps({LORA_A: {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}).encode(), b"\0" * 4)
    elif case == "empty":
        f.write_bytes(b"")
    refused_by_eval(capsys, tiny_model_dir, suite, stored, d, 2, str(f), "re-copy")
    assert not sentinel.exists()


def test_row18_zero_size_tensors_of_a_zero3_save_are_one_line_exit_2_naming_the_fix(lora_dir, tiny_model_dir, suite,
                                                                                    stored, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "zero3"
    shutil.copytree(lora_dir, d)
    tensors = load_file(str(d / "adapter_model.safetensors"))
    tensors[LORA_A] = torch.zeros(0)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    line = refused_by_eval(capsys, tiny_model_dir, suite, stored, d, 2, str(d / "adapter_model.safetensors"), LORA_A,
                           "shape [0]", "gathered")
    assert "ZeRO-3" in line


# -- rows 23, 24, 25: adapter_config.json -----------------------------------------------------------------


@pytest.mark.parametrize("case, content, needle", [
    ("bad JSON", b'{\n  "r": 4,\n  oops\n}', "adapter_config.json:3:"),
    ("not UTF-8", b'{"r": 4, "peft_type": "LORA\xff\xfe"}', "is not UTF-8"),
    ("empty", b"", "is empty"),
    ("whitespace", b"  \n\t\n", "is empty"),
    ("a list", b'["peft_type", "LORA"]', "must hold a JSON object, not list"),
    ("truncated", b'{"peft_type": "LORA", "r": 4, "lora_al', "adapter_config.json:1:"),
])
def test_row23_a_malformed_adapter_config_is_one_line_exit_2_naming_file_and_place(case, content, needle, lora_dir,
                                                                                  tiny_model_dir, suite, stored,
                                                                                  tmp_path, capsys):
    d = adapter_copy(lora_dir, tmp_path / "a")
    (d / "adapter_config.json").write_bytes(content)
    refused_by_eval(capsys, tiny_model_dir, suite, stored, d, 2, str(d / "adapter_config.json"), needle)


@pytest.mark.parametrize("case, config, drop, needle", [
    ("peft_type missing", None, ("peft_type",), "peft_type is None"),
    ("peft_type IA3", {"peft_type": "IA3"}, (), "peft_type is 'IA3'"),
    ("peft_type lowercase", {"peft_type": "lora"}, (), "peft_type is 'lora'"),
    ("peft_type not a string", {"peft_type": ["LORA"]}, (), "peft_type is ['LORA']"),
])
def test_row24_a_missing_or_unknown_peft_type_is_one_line_exit_2(case, config, drop, needle, lora_dir, tiny_model_dir,
                                                                 suite, stored, tmp_path, capsys):
    d = adapter_copy(lora_dir, tmp_path / "a", config, drop)
    line = refused_by_eval(capsys, tiny_model_dir, suite, stored, d, 2, str(d / "adapter_config.json"), needle)
    assert "only 'LORA'" in line


def test_row24_unknown_config_keys_are_a_warning_listing_them_shown_and_stored_with_the_run(
        lora_dir, tiny_model_dir, suite, tmp_path, capsys):
    """By decision (README, the FAULTS table): unknown keys are a warning, printed and stored, not a refusal."""
    from harness.store import Store

    d = adapter_copy(lora_dir, tmp_path / "a", {"lora_zeta": 3, "future_feature": True})
    db = tmp_path / "h.duckdb"
    got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db, "--adapter", d, "--no-gates"))
    assert got == 0, err
    assert "Traceback" not in err
    [warning] = [ln for ln in err.splitlines() if ln.startswith("warning: ") and "unknown key" in ln]
    assert str(d / "adapter_config.json") in warning and "future_feature, lora_zeta" in warning
    [run] = Store(db, read_only=True).query("SELECT config FROM runs WHERE kind = 'eval'")
    config = run["config"] if isinstance(run["config"], dict) else json.loads(run["config"])
    assert any("future_feature, lora_zeta" in w for w in config["warnings"])


@pytest.mark.parametrize("case, config, needle", [
    ("r zero", {"r": 0}, "r must be a positive integer, not 0"),
    ("r negative", {"r": -4}, "r must be a positive integer, not -4"),
    ("r float", {"r": 4.0}, "r must be a positive integer, not 4.0"),
    ("r string", {"r": "4"}, "r must be a positive integer, not '4'"),
    ("r bool", {"r": True}, "r must be a positive integer, not True"),
    ("r null", {"r": None}, "r must be a positive integer, not None"),
    ("r not the tensors' rank", {"r": 8}, "has rank 4 but adapter_config.json says r=8"),
    ("alpha negative", {"lora_alpha": -8}, "lora_alpha must be a positive finite number, not -8"),
    ("alpha zero", {"lora_alpha": 0}, "lora_alpha must be a positive finite number, not 0"),
    ("alpha NaN", {"lora_alpha": float("nan")}, "lora_alpha must be a positive finite number, not nan"),
    ("alpha Infinity", {"lora_alpha": float("inf")}, "lora_alpha must be a positive finite number, not inf"),
    ("alpha string", {"lora_alpha": "8"}, "lora_alpha must be a positive finite number, not '8'"),
    ("both bad", {"r": 0, "lora_alpha": -1}, "r must be a positive integer, not 0; lora_alpha must be"),
])
def test_row25_a_bad_r_or_lora_alpha_is_one_line_exit_2_before_any_load(case, config, needle, lora_dir, tiny_model_dir,
                                                                        suite, stored, tmp_path, capsys):
    d = adapter_copy(lora_dir, tmp_path / "a", config)  # json.dumps writes NaN and Infinity, as Python's json reads them
    # the rank is checked against the weights file's header: that message names the weights file
    named = d / ("adapter_model.safetensors" if "rank" in case else "adapter_config.json")
    refused_by_eval(capsys, tiny_model_dir, suite, stored, d, 2, str(named), needle)


# -- training spec helpers (rows 13, 31, 34) --------------------------------------------------------------

ROWS = [{"prompt": f"Order {i} red hoodies, size M.", "completion": f'{{"item": "hoodie", "quantity": {i}}}'}
        for i in range(1, 9)]


def _train_spec(tiny_model_dir: Path, tmp_path: Path, rows: list[dict], extra: str = "") -> Path:
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "orders.yaml"
    spec.write_text(f"base: {tiny_model_dir}\ndata: {data}\nr: 4\nlora_alpha: 8\nlearning_rate: 1e-2\n"
                    f"max_steps: 2\nper_device_train_batch_size: 4\n{extra}")
    return spec
