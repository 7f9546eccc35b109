"""A user's mistake is one line and its exit code before anything heavy loads.

Each case runs the command in a fresh interpreter and checks, besides the exit code and the line, that
neither torch, transformers, datasets nor pandas was imported: those cost seconds before a line could
be printed (torch alone ~3 s here), so a mistake found without them shows in well under a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

HEAVY = ("torch", "transformers", "datasets", "pandas")

PROBE = (
    "import sys, json\n"
    "from harness.cli import main\n"
    "code = main(json.loads(sys.argv[1]))\n"
    f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
    "print('EXIT', code, 'HEAVY', ','.join(heavy) or '-')\n"
)


def _run(argv: list[str], cwd: Path) -> tuple[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=120)
    return out.stdout, out.stderr


def _adapter(d: Path, tensors: dict[str, np.ndarray] | None = None, raw: bytes | None = None, **config) -> Path:
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "base_model_name_or_path": "tiny",
         **config}))
    if raw is not None:
        (d / "adapter_model.safetensors").write_bytes(raw)
    else:
        save_file(tensors or {}, str(d / "adapter_model.safetensors"))
    return d


def _nan_lora() -> dict[str, np.ndarray]:
    """Layer 0's q_proj of the default base (SmolLM2-135M, width 576), one NaN in lora_A: it fits the base, so
    the NaN is what the pre-flight finds."""
    a = np.zeros((2, 576), dtype=np.float32)
    a[1, 3] = np.nan
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    return {f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": np.zeros((576, 2), dtype=np.float32)}


@pytest.fixture()
def project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    (tmp_path / "raw.jsonl").write_text("".join(
        json.dumps({"id": i, "ticket": f"printer {i} is on fire", "answer": '{"category": "hardware"}'}) + "\n"
        for i in range(4)))
    (tmp_path / "bad.toml").write_text('[gates]\nretention = "high"\n')
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "data.jsonl").write_text('{"id": "1", "input": "hi", "target": "x"}\n')
    (tmp_path / "typo" / "suite.yaml").write_text(
        "name: typo\nversion: 1\ndata: {path: data.jsonl}\nprompt: {template: 'Say: {{ inptu }}'}\nscorers: [{name: exact_match}]\n")
    base = f"base: {tiny_model_dir}\n"
    (tmp_path / "shape.yaml").write_text(base + "data: raw.jsonl\n")
    (tmp_path / "fields.yaml").write_text(base + "data: {path: raw.jsonl, fields: {prompt: tiket, completion: answer}}\n")
    (tmp_path / "modules.yaml").write_text(
        base + "data: {path: raw.jsonl, fields: {prompt: ticket, completion: answer}}\ntarget_modules: [q_projx]\n")
    _adapter(tmp_path / "nan-adapter", _nan_lora(), layers_to_transform=[0])
    _adapter(tmp_path / "truncated-adapter", raw=b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "adapter_config.json").write_text("{}")
    return tmp_path


CASES = [
    (["eval", "--suite", "general-knowledge", "--adapter", "no-such-adapter"], 2,
     "adapter directory no-such-adapter does not exist"),
    (["eval", "--suite", "general-knowledge", "--adapter", "nan-adapter"], 2, "holds NaN or Inf values"),
    (["sweep", "--suite", "general-knowledge", "--adapter", "truncated-adapter"], 2, "is not a readable safetensors file"),
    (["eval", "--suite", "general-knowledge", "--gates", "bad.toml"], 2, "bad.toml: gates.retention: unknown gate"),
    (["sweep", "--suite", "order-task", "--adapter", "nan-adapter", "--gates", "bad.toml"], 2, "gates.retention: unknown gate"),
    (["eval", "--suite", "typo"], 2, "{{ inptu }}"),
    (["suites", "check", "typo", "general-knowledge"], 2, "{{ inptu }}"),
    (["train", "shape.yaml", "--out", "a1"], 2, "unknown shape (columns: answer, id, ticket)"),
    (["train", "fields.yaml", "--out", "a2"], 2, "data.fields names column(s) tiket"),
    (["train", "modules.yaml", "--out", "a3"], 3, "target_modules q_projx not found in this base"),
    (["train", "fields.yaml", "--out", "existing"], 2, "existing already holds an adapter"),
]


@pytest.mark.parametrize(("argv", "code", "line"), CASES, ids=[" ".join(c[0][:2]) + f" [{c[2][:24]}]" for c in CASES])
def test_mistake_is_one_line_before_any_heavy_import(project, argv, code, line):
    stdout, stderr = _run(argv, project)
    assert f"EXIT {code} HEAVY -" in stdout, stdout + stderr
    assert line in stderr, stderr
    assert "Traceback" not in stderr
