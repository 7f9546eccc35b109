"""Issue 31: a scorer added without editing the package, through an entry point of an installed package."""

from __future__ import annotations

import json
import sys

import pytest


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A package installed on sys.path the way pip leaves it: its module and a dist-info with entry_points.txt."""
    (tmp_path / "my_scorers.py").write_text(
        "from harness.scorers import Score, register_scorer\n\n"
        "@register_scorer('shouting', version='1')\n"
        "def shouting(min_ratio: float = 0.5):\n"
        "    def score(output, example):\n"
        "        letters = [c for c in output if c.isalpha()]\n"
        "        upper = sum(c.isupper() for c in letters) / len(letters) if letters else 0.0\n"
        "        return [Score('shouting', float(upper >= min_ratio))]\n"
        "    return score\n")
    (tmp_path / "broken_scorers.py").write_text("raise RuntimeError('this plugin is broken')\n")
    dist = tmp_path / "my_scorers-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-scorers\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[adapter_harness.scorers]\nshouting = my_scorers\nbroken = broken_scorers\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import harness.scorers.registry as registry

    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield
    registry._REGISTRY.pop("shouting", None)
    sys.modules.pop("my_scorers", None)


def test_an_installed_packages_scorer_is_used_by_a_suite(installed_plugin, tmp_path, capsys):
    from harness.cli import main

    d = tmp_path / "s"
    d.mkdir()
    (d / "data.jsonl").write_text(json.dumps({"id": "1", "input": "hi", "target": "x"}) + "\n")
    (d / "suite.yaml").write_text("name: loud\nversion: 1\ndata: {path: data.jsonl}\nprompt: {template: '{{ input }}'}\n"
                                  "scorers: [{name: shouting, args: {min_ratio: 0.8}}]\n")
    assert main(["suites", "check", str(d / "suite.yaml")]) == 0
    err = capsys.readouterr().err
    assert "scorer plugin broken (broken_scorers) failed to load: RuntimeError: this plugin is broken" in err
    from harness.scorers import Example, get_scorer

    fn = get_scorer("shouting", {"min_ratio": 0.8}).fn
    assert fn("HELLO THERE", Example("1", "hi", "x"))[0].value == 1.0
    assert fn("hello", Example("1", "hi", "x"))[0].value == 0.0
