"""The pytest plugin (pytest11 entry point), run by pytester on a tiny model: suite and gate files
become one item per gate; a passing and a failing adapter; failure tables; -k, -x, --junitxml; the
baseline file and its update flag; the harness_results fixture; and inert without --adapter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.gates.test_gates_support import shared_gate_setup

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent

PY_GATE = '''
def test_every_answer_kept(harness_results):
    r = harness_results.gate("gk", "exact_match", min=0.9)
    assert r.passed, r.message
    assert harness_results.comparison.run_id == harness_results.run_id
'''


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory):
    return shared_gate_setup(tiny_model_dir, tmp_path_factory)


@pytest.fixture()
def project(pytester, built):
    pytester.makeini("[pytest]\n")  # the rootdir, where the baseline file lives
    shutil.copytree(built["suite_dir"], pytester.path / "gates" / "gk")
    (pytester.path / "gates" / "harness.toml").write_text('[gates]\nmin_retention = 0.95\nmax_regression = 0.1\nskip = ["leakage", "task"]\n')
    pytester.makepyfile(test_py_gate=PY_GATE)
    return pytester


def run(pytester, built, adapter, *extra):
    # --opt=value: pytest's rootdir guess reads a separate path value as a test path
    return pytester.runpytest(f"--harness-adapter={built[adapter]}", f"--harness-base={built['tiny']}",
                              f"--harness-db={built['db']}", "-p", "no:cacheprovider", *extra)


def test_a_passing_and_a_failing_adapter(project, built):
    junit = project.path / "junit.xml"
    ok = run(project, built, "good", "-v", f"--junitxml={junit}")
    # suite.yaml: its threshold; harness.toml: retention, completeness, provenance, training health (no
    # training record: skipped, not passed); the Python gate
    ok.assert_outcomes(passed=5, skipped=1)
    ok.stdout.fnmatch_lines(["*gk/suite.yaml::threshold?gk:exact_match? PASSED*", "*harness.toml::retention PASSED*",
                             "*harness.toml::training_health SKIPPED*", "*adapter-harness: run *"])
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert {"retention", "threshold[gk:exact_match]", "completeness", "provenance", "test_every_answer_kept"} <= set(cases)

    bad = run(project, built, "bad", f"--junitxml={junit}")
    bad.assert_outcomes(passed=2, failed=3, skipped=1)
    out = bad.stdout.str()
    # the failure table: metric, observed, threshold, baseline, interval; the sentence; worst examples
    for needle in ("gate       retention", "observed", "threshold  0.95", "baseline   1", "interval   ", "Wilson",
                   "of the base's correct answers kept", "worst examples:", "gk/q"):
        assert needle in out, needle
    assert "must be >= 0.9" in out  # the suite's own threshold, on its one-sided bound
    root = ET.parse(junit).getroot()
    failed = {c.get("name"): c.find("failure") for c in root.iter("testcase") if c.find("failure") is not None}
    assert set(failed) == {"retention", "threshold[gk:exact_match]", "test_every_answer_kept"}
    assert ">= 0.95" in failed["retention"].get("message") + (failed["retention"].text or "")


def test_k_and_x(project, built):
    res = run(project, built, "bad", "-x", "-k", "retention or threshold")
    res.assert_outcomes(failed=1)  # two selected, both failing: -x stops after the first
    assert "4 deselected" in res.stdout.str()


def test_update_the_baseline_then_judge_against_it(project, built):
    run(project, built, "good", "--harness-update-baseline").assert_outcomes(passed=5, skipped=1)
    data = json.loads((project.path / "harness-baseline.json").read_text())
    from harness.models.adapters import inspect_adapter

    assert data["adapter_id"] == inspect_adapter(built["good"]).adapter_id and data["scale"] == 1.0 and data["run_id"]
    # the committed file names the adapter relative to itself (issue 35.3: an absolute path broke on another machine)
    assert not Path(data["adapter_path"]).is_absolute()
    assert (project.path / data["adapter_path"]).resolve() == Path(built["good"]).resolve()
    # the next adapter is judged against it: a regression item appears and fails, paired (McNemar)
    res = run(project, built, "bad", "-k", "regression")
    res.assert_outcomes(failed=1)
    assert "exact McNemar" in res.stdout.str() and "vs baseline" in res.stdout.str()
    # a baseline that no longer hashes to what the file says is refused by name
    from harness.errors import InputError
    from harness.pytest_plugin import check_baseline_id

    with pytest.raises(InputError, match="now hashes to"):
        check_baseline_id(str(built["bad"]), data["adapter_id"], project.path / "harness-baseline.json")


def test_a_broken_suite_is_a_collection_error_naming_the_file(pytester, built):
    d = pytester.path / "broken"
    d.mkdir()
    (d / "suite.yaml").write_text("name: Bad Name\nversion: 1\n")
    res = run(pytester, built, "good")
    assert res.ret == pytest.ExitCode.INTERRUPTED and "suite.yaml" in res.stdout.str() and "name must be" in res.stdout.str()


def test_inert_without_adapter(pytester, built):
    shutil.copytree(built["suite_dir"], pytester.path / "gk")
    (pytester.path / "harness.toml").write_text("[gates]\nmin_retention = 0.95\n")
    res = pytester.runpytest("-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    # loading the plugin imports neither the harness nor torch
    code = "import sys, harness.pytest_plugin; print(sorted(m for m in sys.modules if m.startswith(('torch', 'harness.'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "['harness._offline', 'harness.pytest_plugin']"  # _offline: the package's env switches


def test_one_gate_is_one_item_and_every_junit_name_is_well_formed(project, built):
    """Issues 31/35.6: the same gate from the suite file and the project file was reported twice, and the second
    of two gates of one name became the JUnit name ``threshold[gk:exact_match]#2]``. A project threshold equal to
    the suite's own gate is that gate (one item); a different one is numbered inside the brackets."""
    (project.path / "gates" / "harness.toml").write_text(
        '[gates]\nmin_retention = 0.95\nskip = ["leakage", "task"]\n'
        '[[gates.threshold]]\nrole = "general"\nmetric = "exact_match"\nmin = 0.9\n'   # the suite's own gate again
        '[[gates.threshold]]\nrole = "general"\nmetric = "exact_match"\nmin = 0.5\n')  # another gate, same name
    junit = project.path / "junit.xml"
    run(project, built, "good", f"--junitxml={junit}")
    names = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")]
    assert len(names) == len(set(names)), names
    gk = sorted(n for n in names if n.startswith("threshold[gk:exact_match"))
    assert gk == ["threshold[gk:exact_match#2]", "threshold[gk:exact_match]"], names
    for n in names:  # a bracket opens once and closes the name
        assert n.count("[") == n.count("]") <= 1 and (("[" not in n) or n.endswith("]")), n


def test_a_projects_own_adapter_option_does_not_collide(pytester):
    """Issue 31: the plugin registered bare --adapter, --baseline and --scale for every pytest run where the harness
    is installed; a project's conftest.py defining the same option crashed at collection."""
    pytester.makeconftest('''
def pytest_addoption(parser):
    parser.addoption("--adapter", default=None)
    parser.addoption("--scale", default=None)
    parser.addoption("--baseline", default=None)
''')
    pytester.makepyfile(test_own="def test_own(request):\n    assert request.config.getoption('adapter') == 'mine'\n")
    res = pytester.runpytest("--adapter=mine", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    help_text = pytester.runpytest("--help").stdout.str()
    assert "--harness-adapter=DIR" in help_text and "--harness-scale=S" in help_text
