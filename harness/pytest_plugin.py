"""The pytest face of the gates: ``pytest --harness-adapter DIR`` turns suite and gate files into test items.

    pytest --harness-adapter out/adapter [--harness-baseline DIR] [--harness-scale S] [--harness-db F] [--harness-base B] gates/

Collected files (under the paths pytest is given): every ``suite.yaml`` (one item per gate of its
``gates:``) and every ``harness.toml`` / ``gates.toml`` / ``pyproject.toml`` with ``[tool.harness]``
(one item per project gate: retention, leakage, task gain, regressions, completeness, training health,
provenance; its ``suites = [...]`` are evaluated too). The first item that runs evaluates what the
store lacks, once, exactly as ``harness check`` does (it is ``harness.jobs.check.run_check``); each
item then reports its gate. A failure shows a table (metric, observed, threshold, baseline, interval)
and the worst examples. ``-k``, ``-x`` and ``--junitxml`` work as for any test.

Baselines: ``--harness-baseline DIR``, else the adapter named in ``harness-baseline.json`` at the root (a small
file meant to be committed, so a new baseline is a reviewable diff). ``--harness-update-baseline``
writes that file for the adapter under test (regressions are then not judged: it is the new baseline).

Python gates: the ``harness_results`` fixture gives the run's comparison and a ``gate`` helper.

Without ``--harness-adapter`` the plugin does nothing (no import of the harness, no model): it is installed in
every environment that has the package, including the harness's own tests.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr  # what Item.repr_failure returns; pytest does not export it

BASELINE_FILE = "harness-baseline.json"
_PROJECT_NAMES = ("harness.toml", "gates.toml", "pyproject.toml")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("adapter-harness", "adapter quality gates (adapter-harness)")
    g.addoption("--harness-adapter", dest="harness_adapter", default=None, metavar="DIR",
                help="adapter to judge: collect suite and gate files as tests")
    g.addoption("--harness-baseline", dest="harness_baseline", default=None, metavar="DIR", help=f"baseline adapter (default: the one in {BASELINE_FILE})")
    g.addoption("--harness-baseline-scale", dest="harness_baseline_scale", type=float, default=None, metavar="S", help="the baseline's scale (default: its file's, else 1)")
    g.addoption("--harness-scale", dest="harness_scale", type=float, default=None, metavar="S", help="LoRA scale of the adapter (default: 1)")
    g.addoption("--harness-db", default=None, metavar="F", help="results database (default: $HARNESS_DB or ./harness.duckdb)")
    g.addoption("--harness-base", default=None, metavar="B", help="base model (default: the project file's, else smollm2-135m)")
    g.addoption("--harness-limit", type=int, default=None, metavar="N", help="evaluate only N examples of each suite")
    g.addoption("--harness-update-baseline", action="store_true",
                help=f"store the adapter under test as the new baseline ({BASELINE_FILE}; commit it)")
    g.addoption("--harness-baseline-file", default=None, metavar="F", help=f"baseline file (default: <rootdir>/{BASELINE_FILE})")


class GateFailed(Exception):
    """Raised by a gate item; carries the outcomes for ``repr_failure``."""

    def __init__(self, outcomes: list[Any]) -> None:
        super().__init__("; ".join(o.result.message for o in outcomes))
        self.outcomes = outcomes


class HarnessSession:
    """The plugin's state for one pytest session (kept in ``config.stash``): the collected suites and
    planned gates, then the one evaluation every item reads."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        opt = config.getoption
        self.adapter: str = opt("harness_adapter")
        self.update = bool(opt("harness_update_baseline"))
        self.baseline_file = Path(opt("harness_baseline_file") or config.rootpath / BASELINE_FILE)
        self.baseline: str | None = opt("harness_baseline")
        self.baseline_scale: float = opt("harness_baseline_scale") or 1.0
        self.baseline_id: str | None = None
        if self.baseline is None and not self.update and self.baseline_file.is_file():
            self.baseline, self.baseline_id, scale = read_baseline(self.baseline_file)
            self.baseline_scale = opt("harness_baseline_scale") or scale
        self.suites: dict[str, Any] = {}  # name -> Suite
        self.plan: list[Any] = []  # PlannedGate, names unique over the session
        self.project: Any = None  # ProjectConfig of the (one) project file
        self.result: Any = None  # harness.jobs.check.CheckResult
        self.error: BaseException | None = None
        self._names: set[str] = set()

    @property
    def with_baseline(self) -> bool:
        return self.baseline is not None and not self.update

    def add_suite(self, suite: Any) -> None:
        other = self.suites.get(suite.name)
        if other is not None and other.path != suite.path:
            raise ValueError(f"two suites are named {suite.name!r}: {other.path} and {suite.path}; rename one")
        self.suites[suite.name] = suite

    def register(self, planned: Any) -> Any:
        """``planned`` with a name unique over the session, or None when the same gate is already an item
        (a suite's gate collected from its suite file and from the project file is one gate, reported once)."""
        from harness.gates.spec import numbered_name, same_gate

        if any(same_gate(planned, g) for g in self.plan):
            return None
        name, n = planned.name, 1
        while name in self._names:
            n += 1
            name = numbered_name(planned.name, n)
        self._names.add(name)
        planned = replace(planned, name=name)
        self.plan.append(planned)
        return planned

    def evaluate(self) -> Any:
        """Run the check once (the first item to need it); every later item reads the same result."""
        if self.result is None and self.error is None:
            from harness.gates import ProjectGates
            from harness.jobs.check import CheckRequest, run_check
            from harness.models.base import DEFAULT_BASE

            project = self.project
            opt = self.config.getoption
            req = CheckRequest(
                adapter=self.adapter, suites=tuple(str(s.path) for s in self.suites.values()),
                project=project.gates if project else ProjectGates(training_health=False),
                base=opt("harness_base") or (project.base if project and project.base else DEFAULT_BASE),
                db=Path(opt("harness_db")) if opt("harness_db") else None, scale=opt("harness_scale"),
                baseline=self.baseline if self.with_baseline else None, baseline_scale=self.baseline_scale,
                gates_file=str(project.path) if project else None, limit=opt("harness_limit"),
                command="pytest --harness-adapter " + self.adapter)
            try:
                if self.baseline is not None and self.baseline_id is not None:  # both read from the baseline file
                    check_baseline_id(self.baseline, self.baseline_id, self.baseline_file)
                self.result = run_check(req, plan=self.plan, require_gates=False)
            except Exception as exc:  # shown once per item, by name, without a traceback
                self.error = exc
        if self.error is not None:
            raise HarnessUnavailable(self.error)
        return self.result


class HarnessUnavailable(Exception):
    """The evaluation behind every gate failed (bad adapter, bad suite, locked database...)."""


_KEY = pytest.StashKey[HarnessSession]()


def _session(config: pytest.Config) -> HarnessSession | None:
    return config.stash.get(_KEY, None)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("harness_adapter", None):
        config.stash[_KEY] = HarnessSession(config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if _session(parent.config) is None:
        return None  # inert without --harness-adapter
    if file_path.name == "suite.yaml":
        return SuiteFile.from_parent(parent, path=file_path)
    if file_path.name in _PROJECT_NAMES:
        if file_path.name == "pyproject.toml" and not _has_tool_harness(file_path):
            return None
        return GatesFile.from_parent(parent, path=file_path)
    return None


def _has_tool_harness(path: Path) -> bool:
    from harness.gates.project import tomllib

    try:
        return "harness" in (tomllib.loads(path.read_text(encoding="utf-8")).get("tool") or {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
        return False


class SuiteFile(pytest.File):
    """A ``suite.yaml``: one item per gate of its ``gates:``."""

    def collect(self):
        from harness.errors import HarnessError
        from harness.gates import ProjectGates, plan_gates
        from harness.suites.spec import load_suite

        state = _session(self.config)
        try:
            suite = load_suite(self.path)
            state.add_suite(suite)
        except (HarnessError, ValueError) as exc:
            raise self.CollectError(str(exc)) from None
        for planned in plan_gates([suite], ProjectGates(training_health=False), with_baseline=state.with_baseline):
            if planned.suite == suite.name and (p := state.register(planned)) is not None:
                yield GateItem.from_parent(self, name=p.name, planned=p)


class GatesFile(pytest.File):
    """A project gates file: one item per project gate (its role gates expand over the suites it lists)."""

    def collect(self):
        from harness.errors import HarnessError
        from harness.gates import ProjectGates, plan_gates
        from harness.gates.project import load_project
        from harness.suites.spec import load_suite

        state = _session(self.config)
        try:
            if state.project is not None and state.project.path != self.path:
                raise ValueError(f"two project gate files: {state.project.path} and {self.path}; keep one")
            cfg = load_project(self.path)
            state.project = cfg
            listed = [load_suite(s) for s in cfg.suites]
            for s in listed:
                state.add_suite(s)
        except (HarnessError, ValueError) as exc:
            raise self.CollectError(str(exc)) from None
        # the project's per-suite gates (role thresholds, regressions) cover the suites it lists and the
        # suite files beside or below it; a listed suite's own gates are its suite file's items when
        # pytest collects that file, else they are listed here, once
        nearby = []
        for path in sorted(self.path.parent.rglob("suite.yaml")):
            if not any(part.startswith(".") for part in path.relative_to(self.path.parent).parts) and _under_args(self.config, path):
                with contextlib.suppress(HarnessError):  # its own SuiteFile reports it
                    nearby.append(load_suite(path))
        names = {s.name for s in listed}
        bare = [replace(s, gates=()) for s in listed + [s for s in nearby if s.name not in names]]
        # the release defaults of `harness check` (retention, leakage, task; opted out of only by `skip`): the
        # plugin is another face of the same check, so it judges the same gates
        from harness.jobs.check import release_defaults

        for planned in plan_gates(bare, release_defaults(cfg.gates), with_baseline=state.with_baseline, provenance=True):
            if (p := state.register(planned)) is not None:
                yield GateItem.from_parent(self, name=p.name, planned=p)
        for s in listed:
            if not _under_args(self.config, Path(s.path)):  # else its own SuiteFile lists them
                for planned in plan_gates([s], ProjectGates(training_health=False), with_baseline=state.with_baseline):
                    if planned.suite == s.name and (p := state.register(planned)) is not None:
                        yield GateItem.from_parent(self, name=p.name, planned=p)


def _under_args(config: pytest.Config, path: Path) -> bool:
    """Whether pytest collects ``path`` itself (a suite.yaml under one of its arguments)."""
    roots = [Path(a.split("::")[0]).resolve() for a in config.args] or [config.rootpath]
    p = path.resolve()
    return any(p == r or r in p.parents for r in roots)


class GateItem(pytest.Item):
    """One gate; passes when every outcome of it (one per target) passes."""

    def __init__(self, *, planned: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned

    def runtest(self) -> None:
        state = _session(self.config)
        assert state is not None  # gate items are collected only with --harness-adapter, which creates the session
        result = state.evaluate()
        skipped = dict(result.report.skipped)
        if self.planned.name in skipped:
            pytest.skip(skipped[self.planned.name])
        outcomes = [o for o in result.report.outcomes if o.result.gate == self.planned.name]
        if not outcomes:
            raise GateFailed([_nothing(self.planned, result.report.run_id)])
        failed = [o for o in outcomes if not o.passed]
        if failed:
            raise GateFailed(failed)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, GateFailed):
            return "\n\n".join(failure_table(o) for o in excinfo.value.outcomes)
        if isinstance(excinfo.value, HarnessUnavailable):
            cause = excinfo.value.args[0]
            return f"adapter-harness could not evaluate {self.config.getoption('harness_adapter')}: {cause}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"gate {self.planned.name}"


def _nothing(planned: Any, run_id: str) -> Any:
    from harness.gates import GateOutcome, GateResult

    return GateOutcome(GateResult(planned.name, planned.metric, None, None, None, False,
                                  f"{planned.name}: run {run_id} gave this gate no result: FAIL"), planned.kind)


def failure_table(o: Any) -> str:
    """A small table of one failed gate, then its worst examples."""
    r = o.result

    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    iv = f"{o.interval.low:.4g} – {o.interval.high:.4g} ({o.interval.confidence:.0%} {o.interval.method})" if o.interval else "—"
    rows = [("gate", r.gate), ("target", o.target or "—"), ("metric", r.metric), ("observed", num(r.observed)),
            ("threshold", num(r.threshold)), ("baseline", num(r.baseline)), ("interval", iv)]
    if o.p_value is not None:
        rows.append(("p (Holm)", f"{o.p_value:.3g}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows] + ["", r.message]
    if o.worst:
        lines += ["", "worst examples:"]
        for w in o.worst:
            out = " ".join((w.output or "").split())[:80]
            base = f"  baseline {num(w.baseline_value)}" if w.baseline_value is not None else ""
            lines.append(f"  {w.suite}/{w.example_id}: score {num(w.value)}{base}  output {out!r}  target {(w.target or '')[:60]!r}")
    return "\n".join(lines)


# -- baselines: a small reviewable file in the user's repository --------------------------------------

def read_baseline(path: Path) -> tuple[str, str, float]:
    """(adapter path, adapter id, scale) from a baseline file; the path is relative to the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        adapter = data["adapter_path"]
        p = Path(adapter) if Path(adapter).is_absolute() else path.parent / adapter
        return str(p), str(data["adapter_id"]), float(data.get("scale", 1.0))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise pytest.UsageError(f"{path}: not a baseline file ({exc}); delete it or rerun with --harness-update-baseline") from None


def check_baseline_id(adapter_path: str, adapter_id: str, file: Path) -> None:
    from harness.errors import InputError
    from harness.models.adapters import inspect_adapter

    now = inspect_adapter(adapter_path).adapter_id
    if now != adapter_id:
        raise InputError(f"{file} names adapter {adapter_id[:12]} at {adapter_path}, but that directory now hashes to "
                         f"{now[:12]}: the baseline changed; restore it, or rerun with --harness-update-baseline")


def write_baseline(path: Path, result: Any) -> None:
    """The adapter under test becomes the baseline: its hash, where it is, its scale and run (tmp, rename)."""
    ctx = result.context
    adapter = Path(ctx["adapter"]).resolve()
    # relative to the baseline file, ".." included, so the committed file works on a colleague's machine and in
    # CI (issue 35.3); an absolute path only where no relative one exists (another drive)
    try:
        shown = os.path.relpath(adapter, path.parent.resolve())
    except ValueError:
        shown = str(adapter)
    report = result.report
    data = {"format_version": 1, "adapter_id": ctx["adapter_id"], "adapter_path": shown, "scale": ctx["scale"],
            "base_model_id": ctx["base_model_id"], "run_id": report.run_id,
            "gates": {"passed": len(report.outcomes) - len(report.failures), "failed": len(report.failures)}}
    from harness.util.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _session(session.config)
    if state is None or not state.update:
        return
    if state.result is None and state.error is None and state.plan:
        with contextlib.suppress(HarnessUnavailable):
            state.evaluate()
    if state.result is not None:
        write_baseline(state.baseline_file, state.result)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = _session(config)
    if state is None or state.result is None:
        return
    ctx = state.result.context
    line = f"adapter-harness: run {state.result.report.run_id}, adapter {ctx['adapter_id'][:12]} at scale {ctx['scale']:g}"
    if ctx.get("baseline_id"):
        line += f", baseline {ctx['baseline_id'][:12]} at scale {ctx['baseline_scale']:g}"
    terminalreporter.write_line(line)
    if state.update:
        terminalreporter.write_line(f"adapter-harness: baseline written to {state.baseline_file} (commit it)")


# -- fixtures for gates written in Python ------------------------------------------------------------

class HarnessResults:
    """The evaluated run, for gates written as Python tests.

    ``comparison`` is the run's ``harness.analysis.Comparison``; ``gate(suite, metric, min=..., max=...)``
    judges one more threshold on the stored scores and returns a ``GateResult`` (assert ``r.passed, r.message``).
    """

    def __init__(self, result: Any) -> None:
        from harness.analysis import build_comparison
        from harness.store import Store

        self.report = result.report
        self.context = result.context
        self.run_id = result.report.run_id
        self.adapter_id = result.context["adapter_id"]
        self.scale = result.context["scale"]
        self.store = Store(result.context["db"], read_only=True)
        self.comparison = build_comparison(self.store, self.run_id, samples_per_suite=0)

    def values(self, suite: str, metric: str, adapter_id: str | None = "", scale: float | None = None) -> dict[str, float | None]:
        """example id -> value of the adapter under test (``adapter_id=None``: the base model)."""
        aid = self.adapter_id if adapter_id == "" else adapter_id
        sc = (self.scale if scale is None else scale) if aid is not None else 0.0
        rows = self.store.query(
            "SELECT example_id, value FROM v_scores WHERE run_id = ? AND suite_name = ? AND metric = ? AND adapter_id IS NOT DISTINCT FROM ? "
            "AND scale = ?", [self.run_id, suite, metric, aid, sc])
        return {r["example_id"]: r["value"] for r in rows}

    def gate(self, suite: str, metric: str, min: float | None = None, max: float | None = None) -> Any:
        from harness.gates import threshold_gate

        n = self.store.query("SELECT count(DISTINCT example_id) AS n FROM v_scores WHERE run_id = ? AND suite_name = ?",
                             [self.run_id, suite])[0]["n"]
        base = [v for v in self.values(suite, metric, None).values() if v is not None]
        return threshold_gate(f"python[{suite}:{metric}]", metric, list(self.values(suite, metric).values()), int(n),
                              0, min, max, sum(base) / len(base) if base else None, what=f"{suite} ")


@pytest.fixture(scope="session")
def harness_results(pytestconfig: pytest.Config) -> HarnessResults:
    """The evaluated run of ``--harness-adapter`` (skips when pytest runs without it)."""
    state = _session(pytestconfig)
    if state is None:
        pytest.skip("adapter-harness: no --harness-adapter given")
    if not state.suites:
        pytest.skip("adapter-harness: no suite collected (add suite.yaml files or a harness.toml listing suites)")
    return HarnessResults(state.evaluate())
