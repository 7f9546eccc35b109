"""Issue 29.2: a full disk anywhere in training is exit 5 with one line naming the path and the free space,
on a real small tmpfs (mounted here when the tests run as root; skipped otherwise), not by injecting an
exception type: the Rust writers (tokenizers, safetensors) raise plain ``Exception``s that an ``OSError``
handler never sees. The last complete checkpoint stays intact and ``--resume`` after freeing space finishes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cli import main

ROWS = [{"prompt": f"Order {i} red hoodies, size M.", "completion": f'{{"item": "hoodie", "quantity": {i}}}'} for i in range(1, 9)]


def _mount(where: Path, size_kib: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)], check=True, capture_output=True)


def _resize(where: Path, size_kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(where)], check=True, capture_output=True)


@pytest.fixture()
def tmpfs(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "disk"
    try:
        _mount(where, 64)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.decode(errors='replace').strip()}")
    yield where
    # lazy: a failed test can leave a file open on it, and a busy tmpfs must not stay mounted after the test
    subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def _spec(tmp_path: Path, tiny: Path, **extra) -> Path:
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"base: {tiny}\ndata: {data}\nr: 4\nlora_alpha: 8\nlearning_rate: 1e-2\nper_device_train_batch_size: 2\n"
                    + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    return spec


def _size_kib(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) // 1024 + 1


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_disk_full_at_a_checkpoint_exits_5_and_resume_after_freeing_space_completes(tmpfs, tiny_model_dir, tmp_path, capsys):
    # a checkpoint's size on a roomy disk first, so the tmpfs holds the first checkpoint and not the second
    spec = _spec(tmp_path, tiny_model_dir, max_steps=3, save_steps=1)
    probe = tmp_path / "probe"
    assert main(["train", str(spec), "--out", str(probe), "--db", str(tmp_path / "probe.duckdb")]) == 0
    ckpt = next((probe / "checkpoints").iterdir()) if (probe / "checkpoints").is_dir() else None
    assert ckpt is not None, sorted(p.name for p in probe.iterdir())
    one = _size_kib(ckpt)
    _resize(tmpfs, int(one * 1.6) + 64)
    out = tmpfs / "adapter"
    args = ["train", str(spec), "--out", str(out), "--db", str(tmp_path / "h.duckdb")]
    assert main(args) == 5
    line = _one_error(capsys)
    assert "disk full while writing" in line and str(out) in line and "MiB free" in line
    assert "is intact: rerun with --resume" in line
    # free space: the same command with --resume picks up the complete checkpoint and finishes
    _resize(tmpfs, one * 8 + 4096)
    assert main([*args, "--resume"]) == 0
    capsys.readouterr()
    assert (out / "adapter_model.safetensors").is_file() and (out / "harness.json").is_file()


def test_disk_full_at_the_final_save_exits_5(tmpfs, tiny_model_dir, tmp_path, capsys):
    spec = _spec(tmp_path, tiny_model_dir, max_steps=2)
    probe = tmp_path / "probe"
    assert main(["train", str(spec), "--out", str(probe), "--db", str(tmp_path / "probe.duckdb")]) == 0
    weights = (probe / "adapter_model.safetensors").stat().st_size // 1024
    _resize(tmpfs, max(8, weights // 2))
    out = tmpfs / "adapter"
    assert main(["train", str(spec), "--out", str(out), "--db", str(tmp_path / "h.duckdb")]) == 5
    line = _one_error(capsys)
    assert "disk full while writing" in line and "MiB free" in line and str(out) in line
    assert not (out / "adapter_model.safetensors").exists()
