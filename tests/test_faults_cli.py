"""FAULTS.md rows proven until now only by library calls, proven again through the user's entry point: the
`harness` command (``harness.cli.main`` in this process, or ``python -m harness`` in a second process where
a real second process is the point).

Each test checks what the common contract of FAULTS.md asks of an error row: the exit code of DESIGN.md,
one line starting ``error: `` that names the file, field or run, no traceback, and nothing already stored
lost (row counts read back by plain DuckDB in a fresh process, compared with a snapshot taken before).
"""

from __future__ import annotations

import json
import math
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
from tests.store.test_store_support import counts, fill, harness, shard_tables
from tests.test_hostile import Sentinel, write_suite

REPO = Path(__file__).resolve().parents[1]
LORA_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


# -- helpers --------------------------------------------------------------------------------------------


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``harness ARGV`` in this process: its exit code and everything it wrote to stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


#: what `harness eval` may print before a refusal that comes after its suites were read (no model work yet)
EVAL_INFO = ("warning: ", "task format: ")


def error_line(err: str, *, only: bool = True, allow: tuple[str, ...] = EVAL_INFO) -> str:
    """The one ``error: `` line of ``err``. With ``only`` nothing else may be there but lines starting with one
    of ``allow`` (a refusal before any model work prints nothing else); without, progress lines may come
    first and the error must be the last line."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err
    if only:
        assert all(ln.startswith(("error: ", *allow)) for ln in lines), err
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


# -- row 27: a tokenizer larger than the base's embedding table --------------------------------------------


def test_row27_eval_refuses_a_base_whose_tokenizer_outgrew_its_embeddings_exit_3_before_any_forward(
        tmp_path, capsys, monkeypatch):
    from transformers import LlamaForCausalLM

    from harness.store import Store
    from tests.helpers import make_tiny_llama, make_tokenizer

    base = make_tiny_llama(tmp_path / "grown")
    tok = make_tokenizer(tmp_path / "tok")
    tok.add_tokens([f"<extra_{i}>" for i in range(50)])
    tok.save_pretrained(str(base))  # the tokenizer grew, the embeddings did not
    forwards: list[int] = []
    real_forward = LlamaForCausalLM.forward

    def counted(self, *a, **k):
        forwards.append(1)
        return real_forward(self, *a, **k)

    monkeypatch.setattr(LlamaForCausalLM, "forward", counted)
    db = tmp_path / "h.duckdb"
    suite = write_suite(tmp_path / "s")
    got, err = run_cli(capsys, eval_cmd(base, suite, db))
    assert got == 3, err
    line = error_line(err, only=False)
    assert str(base) in line and f"tokenizer has {len(tok)} tokens" in line
    assert f"embedding table has {len(tok) - 50} rows" in line and "resize" in line
    assert forwards == []
    assert Store(db, read_only=True).query("SELECT count(*) AS n FROM generations")[0]["n"] == 0


# -- row 29: torch's weights-only pickle guard off, or a torch without it ------------------------------------


@pytest.mark.parametrize("command", ["eval", "train"])
@pytest.mark.parametrize("how", ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=true",
                                 "torch 2.5.1"])
def test_row29_a_torch_without_its_pickle_guard_is_refused_exit_4_before_any_weights_load(
        how, command, tiny_model_dir, suite, stored, tmp_path, capsys, monkeypatch):
    import transformers

    if how.startswith("TORCH_FORCE"):
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", how.partition("=")[2])
        needle = how
    else:
        monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
        needle = "torch 2.5.1+cpu is older than 2.6"
    loads: list[str] = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*a, _real=real, _name=cls.__name__, **k):
            loads.append(_name)
            return _real(*a, **k)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    db, before = stored
    if command == "eval":
        argv = eval_cmd(tiny_model_dir, suite, db)
    else:
        argv = ["train", _train_spec(tiny_model_dir, tmp_path, ROWS), "--out", tmp_path / "out", "--db", db]
    got, err = run_cli(capsys, argv)
    assert got == 4, err
    line = error_line(err, only=command == "eval")
    assert needle in line
    assert loads == []  # neither the tokenizer nor any weights were loaded
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    after = counts(db)
    assert all(after[t] == before[t] for t in ("generations", "scores", "run_results", "adapters", "step_logs")
               if t in before), (before, after)


# -- row 38: hostile text in the HTML report ---------------------------------------------------------------


def _inert(html: str) -> None:
    from tests.reports.test_report import assert_inert

    assert_inert(html)
    # template syntax in data stays text; markup is escaped; direction overrides are shown, not applied
    assert "<script>document.title" not in html and 'href="javascript' not in html
    assert "\u202e" not in html


def test_row38_report_of_a_store_full_of_hostile_text_renders_it_inert(tmp_path, capsys):
    from tests.reports.test_report_data import HOSTILE, make_store

    db = tmp_path / "h.duckdb"
    make_store(db, n_adapters=2, scales=(0.5, 1.0), n_examples=len(HOSTILE), hostile=HOSTILE)
    out = tmp_path / "report.html"
    title = "<script>document.title='t'</script>"
    got, err = run_cli(capsys, ["report", "--db", db, "--out", out, "--title", title])
    assert got == 0, err
    assert "Traceback" not in err
    html = out.read_text()
    _inert(html)
    assert "&lt;script&gt;document.title=" in html and "{{ 7*7 }} {% if 1 %}jinja{% endif %}" in html
    assert "&lt;U+202E&gt;" in html and "&lt;U+200B&gt;" in html
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("report")] == ["report.html"]  # no temp file left


def test_row38_hostile_suite_data_and_adapter_name_from_a_real_eval_are_inert_in_the_report(
        lora_dir, tiny_model_dir, tmp_path, capsys):
    from tests.reports.test_report_data import HOSTILE

    rows = [json.dumps({"id": f"h{i}", "question": f"{p} Capital of France?", "answer": f"Paris {p}"})
            for i, p in enumerate(HOSTILE)]
    suite = write_suite(tmp_path / "s", rows=rows)
    db = tmp_path / "h.duckdb"
    name = "<img src=x onerror=\"document.title='name'\">"
    got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db, "--adapter", lora_dir, "--name", name, "--no-gates"))
    assert got == 0, err
    out = tmp_path / "report.html"
    got, err = run_cli(capsys, ["report", "--db", db, "--out", out])
    assert got == 0, err
    html = out.read_text()
    _inert(html)
    assert "&lt;script&gt;document.title=" in html  # the suite's text is in the page, escaped
    assert "&lt;img src=x onerror=" in html  # and so is the adapter's name


# -- row 6: one bad record in a shard the command ingests -----------------------------------------------------


def _bad_shard(db: Path) -> tuple[Path, dict[str, int]]:
    from harness.store import write_shard
    from tests.store.test_store_support import gen

    store = fill(db, n_shards=2)
    before = counts(db)
    t = shard_tables("bad", 0, 5)
    t["generations"][2] = gen("bad-k2", "bad", example="ex-42", scale="not a number")
    shard = write_shard(store.shard_dir, "bad-00001", "bad", t)
    return shard, before


def test_row6_eval_meeting_a_shard_with_one_bad_record_exits_5_naming_file_line_and_example(
        tiny_model_dir, suite, tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    shard, before = _bad_shard(db)
    got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db))
    assert got == 5, err
    line = error_line(err)
    assert f"{shard / 'generations.jsonl'} line 3 (example_id ex-42)" in line and "nothing from the shard was stored" in line
    assert counts(db) == before  # none of the shard's 5 good rows either
    assert shard.is_dir()  # the evidence is kept
    got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db))  # and every later writer says the same
    assert got == 5 and "line 3 (example_id ex-42)" in error_line(err)
    assert counts(db) == before


def test_row6_readers_show_what_is_stored_and_name_the_bad_record(tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    shard, before = _bad_shard(db)
    for command in (["runs"], ["results"], ["report", "--out", tmp_path / "r.html"]):
        # a real process: the warning goes through logging, to the process's own stderr
        proc = harness(*map(str, command), "--db", str(db), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        [warning] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert warning.startswith("warning: ") and "nothing from the shard was stored" in warning
        assert f"{shard / 'generations.jsonl'} line 3 (example_id ex-42)" in warning
    assert "r0" in proc.stdout or (tmp_path / "r.html").is_file()
    assert counts(db) == before


def test_row6_db_check_names_the_bad_record_of_a_shard_that_cannot_be_moved_in(tmp_path):
    db = tmp_path / "h.duckdb"
    shard, before = _bad_shard(db)
    proc = harness("db", "check", "--db", str(db), cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    line = error_line(proc.stderr, allow=(*EVAL_INFO, "problem: "))
    assert counts(db) == before
    assert f"{shard / 'generations.jsonl'} line 3" in line and "moves it in" not in line


# -- row 1: a second process holds the results database ----------------------------------------------------------

HOLD = r"""
import sys, time
from harness.store import Store
with Store(sys.argv[1]).connect():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""

PLAIN_HOLDER = r"""
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold(script: str, db: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", script, str(db), str(seconds)], stdout=subprocess.PIPE, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.stdout.readline().strip() == "held"
    return p


def _short_lock_timeout(monkeypatch, seconds: float) -> None:
    """The CLI has no flag for it: every Store it makes waits ``lock_timeout`` (default 120 s); shorten the default."""
    from harness.store import Store

    defaults = list(Store.__init__.__defaults__)
    defaults[0] = seconds
    monkeypatch.setattr(Store.__init__, "__defaults__", tuple(defaults))


@pytest.mark.parametrize("holder", ["harness", "plain duckdb"])
def test_row1_eval_while_another_process_holds_the_db_exits_5_naming_the_holder(holder, tiny_model_dir, suite,
                                                                               tmp_path, capsys, monkeypatch):
    db = tmp_path / "h.duckdb"
    fill(db, n_shards=1)
    before = counts(db)
    _short_lock_timeout(monkeypatch, 2.0)
    proc = _hold(HOLD if holder == "harness" else PLAIN_HOLDER, db, 60)
    try:
        t0 = time.monotonic()
        got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db))
        took = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    assert got == 5, err
    line = error_line(err, allow=(*EVAL_INFO, "waiting for the results DB"))
    assert str(db) in line and f"PID {proc.pid}" in line and "pass --db" in line
    if holder == "plain duckdb":
        assert "(not a harness process" in line
    assert 1.9 <= took < 15, took  # it waited its timeout, then gave up
    assert counts(db) == before


WAITER = r"""
import sys
from harness.store import Store
defaults = list(Store.__init__.__defaults__)
defaults[0] = float(sys.argv[1])
Store.__init__.__defaults__ = tuple(defaults)
from harness.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_row1_a_second_harness_process_waits_its_timeout_then_exits_5_naming_this_one(tmp_path):
    """The holder is this process (a run holding the store); `harness runs` in a real second process gives up."""
    from harness.store import Store

    db = tmp_path / "h.duckdb"
    fill(db, n_shards=1)
    before = counts(db)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with Store(db).connect():
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", WAITER, "2", "runs", "--db", str(db)], capture_output=True,
                              text=True, cwd=tmp_path, env=env, timeout=120)
        took = time.monotonic() - t0
    assert proc.returncode == 5, proc.stderr
    line = error_line(proc.stderr, allow=(*EVAL_INFO, "waiting for the results DB"))
    assert f"results DB {db} locked by PID {os.getpid()}" in line and "pass --db" in line
    assert took >= 1.9
    assert counts(db) == before
    # once the holder is done, the same command works
    proc = subprocess.run([sys.executable, "-m", "harness", "runs", "--db", str(db)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- row 34: every answer token cut off by truncation ----------------------------------------------------------


def _long_rows(n: int) -> list[dict]:
    return [{"prompt": f"word {i} " + "word " * 400, "completion": "x"} for i in range(n)]


@pytest.mark.parametrize("which", ["one example", "every example"])
def test_row34_train_refuses_examples_whose_answer_truncation_removes_with_one_line(which, tiny_model_dir, tmp_path,
                                                                                    capsys):
    from harness.store import Store

    rows = ROWS[:3] + _long_rows(1) if which == "one example" else _long_rows(4)
    n_bad = 1 if which == "one example" else 4
    spec = _train_spec(tiny_model_dir, tmp_path, rows, "max_seq_length: 64\n")
    out, db = tmp_path / "out", tmp_path / "h.duckdb"
    got, err = run_cli(capsys, ["train", spec, "--out", out, "--db", db])
    assert got == 2, err
    line = error_line(err, only=False)
    assert f"{n_bad} of 4 examples keep no answer token after truncation to max_seq_length=64" in line
    assert "loss would be 0.0" in line and "Raise max_seq_length" in line
    assert not (out / "adapter_model.safetensors").exists()
    # never a loss of 0.0 reported as a result: no step was taken, and the run is stored as failed
    assert "loss" not in capsys.readouterr().out
    store = Store(db, read_only=True)
    assert [r["status"] for r in store.query("SELECT status FROM runs WHERE kind = 'train'")] == ["failed"]
    assert store.query("SELECT count(*) AS n FROM step_logs")[0]["n"] == 0


def test_row34_the_refusal_names_the_data_file_and_its_row_as_other_data_errors_do(tiny_model_dir, tmp_path, capsys):
    spec = _train_spec(tiny_model_dir, tmp_path, ROWS[:3] + _long_rows(1), "max_seq_length: 64\n")
    got, err = run_cli(capsys, ["train", spec, "--out", tmp_path / "out", "--db", tmp_path / "h.duckdb"])
    assert got == 2, err
    line = error_line(err, only=False)
    assert f"{tmp_path / 'orders.jsonl'} row 4" in line, line


# -- row 31: a checkpoint save cut short by SIGKILL, then --resume ------------------------------------------------

KILL_MID_SAVE = r"""
import os, signal, sys
import torch

real_save = torch.save


def save(obj, f, *a, **k):
    # the Trainer has written checkpoint-4's adapter and training args; it dies writing the optimizer state
    if str(f).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)


torch.save = save
from harness.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def killed_mid_save(tiny_model_dir, tmp_path_factory):
    """`harness train` (4 steps, a checkpoint every 2) in a second process, SIGKILLed inside checkpoint-4's save:
    checkpoint-2 is complete and marked, checkpoint-4 is half written. Returns (spec, out dir, db)."""
    tmp = tmp_path_factory.mktemp("killed")
    spec = _train_spec(tiny_model_dir, tmp, ROWS * 2, "save_steps: 2\n")
    spec.write_text(spec.read_text().replace("max_steps: 2", "max_steps: 4"))
    out, db = tmp / "run", tmp / "h.duckdb"
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, "train", str(spec), "--out", str(out), "--db", str(db)],
                          capture_output=True, text=True, cwd=tmp, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert (ckpts / "checkpoint-2" / "harness-complete.json").is_file()
    partial = ckpts / "checkpoint-4"
    assert (partial / "adapter_model.safetensors").is_file()  # killed mid-save: weights there, the rest not
    assert not (partial / "trainer_state.json").exists() and not (partial / "harness-complete.json").exists()
    assert not (out / "adapter_model.safetensors").exists()
    return spec, out, db


def test_row31_resume_after_a_sigkill_mid_save_quarantines_the_partial_checkpoint_and_finishes(
        killed_mid_save, tiny_model_dir, tmp_path, capsys):
    spec, killed_out, db = killed_mid_save
    out = tmp_path / "run"
    shutil.copytree(killed_out, out)  # the kill's leftovers, as they are, for this test alone
    partial_files = sorted(p.name for p in (out / "checkpoints" / "checkpoint-4").iterdir())
    capsys.readouterr()
    code = main(["train", str(spec), "--out", str(out), "--db", str(db), "--resume"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err and not [ln for ln in captured.err.splitlines() if ln.startswith("error")]
    assert captured.out.strip().splitlines()[-1] == str(out)
    assert "moved partial checkpoint checkpoint-4" in captured.err
    [aside] = (out / "checkpoints" / "quarantine").iterdir()
    assert aside.name.startswith("checkpoint-4-") and sorted(p.name for p in aside.iterdir()) == partial_files
    record = json.loads((out / "harness.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-2")
    assert (out / "checkpoints" / "checkpoint-4" / "harness-complete.json").is_file()  # saved again, complete
    steps = [json.loads(line)["step"] for line in (out / "step_logs.jsonl").read_text().splitlines()]
    assert steps[-1] == 4 and (out / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_row31_the_run_resumed_after_the_kill_matches_one_never_interrupted(killed_mid_save, tmp_path, capsys):
    """The resumed run is the run that was killed, finished: the same losses and weights as one never interrupted
    (CPU, fixed seed: exactly equal)."""
    spec, killed_out, db = killed_mid_save
    out = tmp_path / "run"
    shutil.copytree(killed_out, out)
    assert main(["train", str(spec), "--out", str(out), "--db", str(db), "--resume"]) == 0
    whole = tmp_path / "whole"
    assert main(["train", str(spec), "--out", str(whole), "--db", str(tmp_path / "w.duckdb")]) == 0

    def losses(d: Path) -> list[tuple[int, float]]:
        logs = [json.loads(line) for line in (d / "step_logs.jsonl").read_text().splitlines()]
        return [(s["step"], s["loss"]) for s in logs if s.get("loss") is not None]

    assert [s for s, _ in losses(out)] == [1, 2, 3, 4] and losses(out) == losses(whole)
    from harness.models.adapters import inspect_adapter

    assert inspect_adapter(out).adapter_id == inspect_adapter(whole).adapter_id


def test_row31_row13_resume_refuses_a_checkpoint_whose_files_were_swapped_for_pickles_exit_4(
        killed_mid_save, tmp_path, capsys):
    """Row 13 through `train --resume`: the newest complete checkpoint's weights or optimizer state replaced by a
    code-carrying pickle is refused with its name, and the payload never runs."""
    spec, killed_out, db = killed_mid_save
    sentinel = tmp_path / "PWNED"
    for what in ("weights", "optimizer"):
        out = tmp_path / what
        shutil.copytree(killed_out, out)
        ckpt = out / "checkpoints" / "checkpoint-2"
        if what == "weights":
            (ckpt / "adapter_model.safetensors").unlink()
            bad = ckpt / "adapter_model.bin"
        else:
            bad = ckpt / "optimizer.pt"
        bad.write_bytes(pickle.dumps(Sentinel(sentinel)))
        got, err = run_cli(capsys, ["train", spec, "--out", out, "--db", db, "--resume"])
        assert got == 4, (what, err)
        line = error_line(err, only=False)
        assert bad.name in line and str(ckpt) in line, line
        assert not sentinel.exists()
        assert not (out / "adapter_model.safetensors").exists()


# -- row 5: SIGKILL during one large INSERT, in a `harness` process moving a shard in ----------------------------


def _big_scores_shard(shard_dir: Path, n: int) -> Path:
    """A verified shard of ``n`` score rows (one INSERT ... SELECT of tens of MB when moved in), with no writer
    recorded, so any process that opens the database moves it in."""
    import hashlib

    import duckdb

    shard = shard_dir / "big-00001.shard"
    shard.mkdir()
    con = duckdb.connect()
    con.execute(f"COPY (SELECT 'big-' || range AS cache_key, 'm' AS metric, (range % 10) / 10 AS value, "
                f"NULL AS reason, 's' AS scorer, '1' AS scorer_version FROM range({n})) "
                f"TO '{shard}/scores.jsonl' (FORMAT json)")
    con.close()
    digest = hashlib.sha256((shard / "scores.jsonl").read_bytes()).hexdigest()
    (shard / "MANIFEST.json").write_text(json.dumps({"format_version": 2, "run_id": "big", "tables": {"scores": n},
                                                     "sha256": {"scores": digest}}))
    return shard


def test_row5_sigkill_of_a_harness_process_mid_insert_stores_nothing_and_the_next_command_moves_it_all_in(tmp_path):
    """`harness runs` meets a large shard the database lacks and moves it in with one INSERT; it is SIGKILLed while
    DuckDB is writing that statement's rows into the database file (the file grows, no WAL yet: nothing committed).
    Plain DuckDB in a fresh process then sees none of the rows; the next `harness` command sees all of them, exit 0,
    and `harness db check` finds the database healthy."""
    from tests.store.test_store_support import env

    db = tmp_path / "h.duckdb"
    store = fill(db, n_shards=1)
    before = counts(db)
    n = 600_000
    shard = _big_scores_shard(store.shard_dir, n)
    wal = db.with_name(db.name + ".wal")
    size0 = db.stat().st_size
    assert not wal.exists()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "runs", "--db", str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env())
    deadline = time.monotonic() + 90
    try:
        # mid-statement: the INSERT's rows are being written to the database file, and no COMMIT has begun
        # (DuckDB writes the WAL at commit); polling every 2 ms, the kill lands well inside that window
        while not (db.stat().st_size >= size0 + (1 << 20) and not wal.exists()):
            assert proc.poll() is None, \
                f"the ingest finished before the kill; make the shard larger\n{proc.stderr.read()}"
            assert not wal.exists(), "the commit began before the file grew: make the shard larger"
            assert time.monotonic() < deadline, "the ingest never started"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    assert counts(db) == before  # none of the statement's rows, read by plain DuckDB with no harness repair
    # the next command moves the whole shard in, once, and says so
    after = harness("sql", "--db", str(db), "--json", "SELECT count(*) AS n FROM scores", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert "Traceback" not in after.stderr
    assert json.loads(after.stdout) == [{"n": before["scores"] + n}]
    [warning] = [ln for ln in after.stderr.splitlines() if ln.strip()]
    assert warning.startswith("warning: moved 1 shard(s)") and shard.name in warning
    check = harness("db", "check", "--db", str(db), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "healthy" in check.stdout + check.stderr and f"{before['scores'] + n} scores" in check.stdout + check.stderr
    got = counts(db)
    assert got["scores"] == before["scores"] + n and got["ingested_shards"] == before["ingested_shards"] + 1
    assert {t: v for t, v in got.items() if t not in ("scores", "ingested_shards")} == \
           {t: v for t, v in before.items() if t not in ("scores", "ingested_shards")}


# -- row 7: a non-finite metric value ---------------------------------------------------------------------------


def _shard_with_score(db: Path, value: str, literal: bool) -> tuple[Path, dict[str, int]]:
    """A database holding rows, and a shard beside it whose 4th score is ``value``: a JSON string, or (``literal``)
    the bare token as Python's json and DuckDB's COPY write a non-finite float (NaN, Infinity, -Infinity)."""
    import hashlib

    from harness.store import write_shard

    store = fill(db, n_shards=2)
    before = counts(db)
    t = shard_tables("bad", 0, 5)
    t["scores"][3]["value"] = value
    shard = write_shard(store.shard_dir, "bad-00001", "bad", t)
    if literal:
        f = shard / "scores.jsonl"
        f.write_text(f.read_text().replace(json.dumps(value), value))
        manifest = json.loads((shard / "MANIFEST.json").read_text())
        manifest["sha256"]["scores"] = hashlib.sha256(f.read_bytes()).hexdigest()  # a whole, verified shard
        (shard / "MANIFEST.json").write_text(json.dumps(manifest))
        assert f'"value": {value},' in f.read_text()
    return shard, before


@pytest.mark.parametrize("value, literal", [
    ("NaN", True), ("Infinity", True), ("-Infinity", True), ("NaN", False),
    ("nan", True), ("inf", True),  # not JSON, but DuckDB's read_json takes them (finding the line crashed, exit 70)
])
def test_row7_eval_meeting_a_shard_with_a_non_finite_score_exits_5_naming_file_line_and_key(
        value, literal, tiny_model_dir, suite, tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    shard, before = _shard_with_score(db, value, literal)
    got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db))
    assert got == 5, err
    line = error_line(err)
    assert f"{shard / 'scores.jsonl'} line 4 (cache_key bad-k3)" in line, line
    assert "isfinite" in line and "nothing from the shard was stored" in line
    assert counts(db) == before  # nothing from the shard, the good rows included
    assert shard.is_dir()


def _register_scorer(monkeypatch, name: str, metric: str, bad: dict[str, float | None]) -> None:
    """A scorer of the user's own (registered as the scorers package says), for this test only: ``bad[id]`` for
    those examples once the model has answered, 1.0 for the others. (With an empty answer it gives 0.0: `harness`
    probes every scorer with one before any model, and refuses a suite it cannot score whatever the answer.)"""
    from harness.scorers import Score, ScorerInfo, registry

    def factory():
        def score(output: str, example) -> list[Score]:
            if not output:
                return [Score(metric, 0.0)]
            if example.id in bad:
                return [Score(metric, bad[example.id], None if bad[example.id] is not None else "no answer found")]
            return [Score(metric, 1.0)]
        return score

    monkeypatch.setitem(registry._REGISTRY, name, ScorerInfo(name, "1", factory, "test scorer"))


def _gated_suite(d: Path, scorer: str, metric: str, n: int = 5) -> Path:
    rows = [json.dumps({"id": f"q{i}", "question": f"Capital of France, take {i}?", "answer": "Paris"})
            for i in range(1, n + 1)]
    # a bound any finite mean clears: only missing or non-finite evidence can fail it
    return write_suite(d, scorers=f"  - name: {scorer}\n", rows=rows,
                       extra=f"headline: {metric}\ngates:\n  - {{metric: {metric}, min: -1}}\n")


def _stored(db: Path, sql: str) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_row7_eval_whose_scorer_gives_nan_or_inf_stores_null_with_the_reason_and_the_gate_fails(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    _register_scorer(monkeypatch, "row7_ratio", "ratio", {"q2": math.nan, "q3": math.inf, "q4": -math.inf})
    suite = _gated_suite(tmp_path / "s", "row7_ratio", "ratio")
    db = tmp_path / "h.duckdb"
    got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db))
    assert got == 1, err
    assert "Traceback" not in err and not [ln for ln in err.splitlines() if ln.startswith("error")]
    assert all(o for (o,) in _stored(db, "SELECT output FROM generations"))  # the model answered every example
    failed = [ln for ln in err.splitlines() if ln.startswith("gate failed: ")]
    assert len(failed) == 1 and "threshold[hostile:ratio]" in failed[0], err
    assert "3 of 5 scores are missing or not finite" in failed[0] and "a gate cannot pass on them" in failed[0]
    # stored as NULL with the reason, never as a NaN or an infinity DuckDB would sort above every bound
    scores = _stored(db, "SELECT g.example_id, s.value, s.reason FROM scores s JOIN generations g USING (cache_key) "
                         "ORDER BY 1")
    assert scores == [("q1", 1.0, None), ("q2", None, "non-finite value nan"), ("q3", None, "non-finite value inf"),
                      ("q4", None, "non-finite value -inf"), ("q5", 1.0, None)]
    assert _stored(db, "SELECT passed, observed FROM gate_results WHERE gate = 'threshold[hostile:ratio]'") == \
           [(False, None)]


# -- row 8: missing scores for some examples ------------------------------------------------------------------


@pytest.mark.parametrize("missing", [(), ("q2", "q5")])
def test_row8_eval_with_scores_missing_for_some_examples_fails_the_gate_naming_them(missing, tiny_model_dir, tmp_path,
                                                                                   capsys, monkeypatch):
    """The same suite and gate pass when every example is scored (the control), and fail, exit 1, when some
    scores are NULL: the mean of the others (1.0) is never taken for the suite's."""
    _register_scorer(monkeypatch, "row8_parse", "parsed", {i: None for i in missing})
    suite = _gated_suite(tmp_path / "s", "row8_parse", "parsed")
    db = tmp_path / "h.duckdb"
    got, err = run_cli(capsys, eval_cmd(tiny_model_dir, suite, db))
    assert "Traceback" not in err and not [ln for ln in err.splitlines() if ln.startswith("error")]
    [(passed, observed)] = _stored(db, "SELECT passed, observed FROM gate_results "
                                       "WHERE gate = 'threshold[hostile:parsed]'")
    assert _stored(db, "SELECT count(*) FROM scores WHERE value IS NULL") == [(len(missing),)]
    if not missing:
        assert got == 0, err
        assert passed and observed == 1.0
        return
    assert got == 1, err
    failed = [ln for ln in err.splitlines() if ln.startswith("gate failed: ")]
    assert len(failed) == 1 and "threshold[hostile:parsed]" in failed[0], err
    assert "2 of 5 scores are missing or not finite" in failed[0] and "a gate cannot pass on them" in failed[0]
    assert not passed and observed is None  # not avg() over the 3 scored (1.0)
    shown = err[err.index(failed[0]):]
    assert "hostile/q2" in shown and "hostile/q5" in shown  # the examples without a score are named


@pytest.mark.parametrize("command", ["suites check", "eval"])
def test_row8_a_suite_some_of_whose_examples_can_never_be_scored_is_refused_exit_2_before_any_model(
        command, tiny_model_dir, stored, tmp_path, capsys):
    """Rows without a target would be missing scores for exact_match whatever the model answered: refused from
    the files, naming the suite file and the rows, with nothing stored."""
    rows = [json.dumps({"id": "q1", "question": "Capital of France?", "answer": "Paris"}),
            json.dumps({"id": "q2", "question": "Capital of Spain?"}),
            json.dumps({"id": "q3", "question": "Capital of Italy?", "answer": "Rome"}),
            json.dumps({"id": "q4", "question": "Capital of Peru?", "answer": None})]
    suite = write_suite(tmp_path / "s", rows=rows, extra="gates:\n  - {metric: exact_match, min: 0}\n")
    db, before = stored
    argv = ["suites", "check", suite] if command == "suites check" else eval_cmd(tiny_model_dir, suite, db)
    t0 = time.perf_counter()
    got, err = run_cli(capsys, argv)
    assert got == 2, err
    assert time.perf_counter() - t0 < 20  # from the files, before any model
    assert "Traceback" not in err
    # one `error: ` line, then the problems it sums up, indented under it
    lines = [ln for ln in err.splitlines() if ln.strip()]
    head = [i for i, ln in enumerate(lines) if ln.startswith("error: ")]
    assert len(head) == 1 and all(ln.startswith(EVAL_INFO) for ln in lines[:head[0]]), err
    assert lines[head[0]] == "error: 1 suite(s) with problems:"
    assert all(ln.startswith("  ") for ln in lines[head[0] + 1:]), err
    assert f"in suite {suite}:" in err
    assert "exact_match cannot score 2 of 4 examples whatever the model answers" in err and "id q2, id q4" in err, err
    assert counts(db) == before
