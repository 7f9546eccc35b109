"""Gate specs: what a check evaluates, known before anything runs.

``ProjectGates`` and ``RoleThreshold`` are the gates of a project file (``harness.gates.project`` reads them;
a suite's own ``gates:`` entries are ``harness.suites.types.GateSpec``). ``plan_gates`` turns the suites
and the project file into the list of ``PlannedGate``, with unique names, that ``evaluate_gates`` judges
and the pytest plugin collects as items. ``QUALITY_KINDS`` are the kinds about the adapter's quality.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.suites.types import Suite

#: gates about the adapter's quality (a check needs at least one); the others are bookkeeping
QUALITY_KINDS = frozenset({"threshold", "retention", "leakage", "task_gain", "gain", "regression"})

#: the gates a release check applies even where the project file sets none (``harness check``): a team opts
#: out of one only by name, in the gates file's ``skip``, and the skip is printed and stored
RELEASE_DEFAULTS = ("retention", "leakage", "task")


@dataclass(frozen=True)
class RoleThreshold:
    """An absolute bound on every suite of one role (``metric`` None: each suite's headline)."""

    role: str
    metric: str | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class ProjectGates:
    """The gates of a project file (``harness.gates.project``); every field off unless set."""

    min_retention: float | None = None
    max_leakage: float | None = None
    #: the mean drift (KL(base || adapter) per token, nats) allowed on each general and leakage suite that generates
    max_drift: float | None = None
    min_task_gain: float | None = None
    max_regression: float | None = None
    max_errors: int = 0
    alpha: float = 0.05
    training_health: bool = True
    adapter_id: str | None = None
    thresholds: tuple[RoleThreshold, ...] = ()
    source: str = "defaults"
    #: "bound" (the one-sided (1 - alpha) bound clears each threshold) or "point" (the estimate alone)
    decision: str = "bound"
    #: release defaults opted out of (``RELEASE_DEFAULTS``), by name
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedGate:
    """One gate a check will evaluate, known before anything runs (the pytest plugin's items)."""

    name: str
    kind: str
    metric: str
    suite: str | None = None
    min: float | None = None
    max: float | None = None
    source: str = ""


def numbered_name(base_name: str, n: int) -> str:
    """The n-th gate of one name: ``threshold[order:exact_match#2]`` (the number inside the brackets, where a
    JUnit report or a pytest node id reads the bracket as the end of the name: ``...]#2`` left a stray ``]``)."""
    if n <= 1:
        return base_name
    return f"{base_name[:-1]}#{n}]" if base_name.endswith("]") else f"{base_name}#{n}"


def same_gate(a: PlannedGate, b: PlannedGate) -> bool:
    """Whether two planned gates judge the same thing the same way (then one is enough)."""
    return (a.kind, a.metric, a.suite, a.min, a.max) == (b.kind, b.metric, b.suite, b.min, b.max)


def plan_gates(suites: Sequence[Suite], project: ProjectGates | None = None, *, with_baseline: bool = False,
               provenance: bool = False) -> list[PlannedGate]:
    """The gates of these suites and this project file, with unique names (the same names every time)."""
    project = project or ProjectGates()
    out: list[PlannedGate] = []
    names: dict[str, int] = defaultdict(int)

    def add(kind: str, base_name: str, metric: str, suite: str | None = None, lo: float | None = None,
            hi: float | None = None, source: str = "") -> None:
        planned = PlannedGate(base_name, kind, metric, suite, lo, hi, source)
        if any(same_gate(planned, g) for g in out):
            return  # the same gate from two places (a suite's own and the project's): judged and reported once
        names[base_name] += 1
        out.append(replace(planned, name=numbered_name(base_name, names[base_name])))

    for s in suites:
        src = str(s.path)
        for g in s.gates:
            if g.min is not None or g.max is not None:
                if g.metric == "retention":
                    add("retention", f"retention[{s.name}]", "retention", s.name, g.min, g.max, src)
                else:
                    add("threshold", f"threshold[{s.name}:{g.metric}]", g.metric, s.name, g.min, g.max, src)
            if g.min_gain is not None:
                add("gain", f"gain[{s.name}:{g.metric}]", g.metric, s.name, g.min_gain, None, src)
            if g.max_drop is not None and with_baseline:
                add("regression", f"regression[{s.name}:{g.metric}]", g.metric, s.name, None, g.max_drop, src)
    src = project.source
    for t in project.thresholds:
        for s in suites:
            metric = t.metric or s.headline
            if s.role == t.role and metric:
                add("threshold", f"threshold[{s.name}:{metric}]", metric, s.name, t.min, t.max, src)
    if project.min_retention is not None:
        # behaviour (the general suites that answer) and knowledge (those scored by likelihood), each judged
        add("retention", "retention", "retention", None, project.min_retention, None, src)
        if any(s.role == "general" and s.likelihood for s in suites):
            add("retention", "knowledge_retention", "knowledge", None, project.min_retention, None, src)
    if project.max_drift is not None:
        for s in suites:
            if s.role in ("general", "leakage") and not s.likelihood:
                add("threshold", f"drift[{s.name}]", "drift_kl", s.name, None, project.max_drift, src)
    if project.max_leakage is not None:
        add("leakage", "leakage", "format_leakage", None, None, project.max_leakage, src)
    if project.min_task_gain is not None:
        add("task_gain", "task_gain", "task", None, project.min_task_gain, None, src)
    if project.max_regression is not None and with_baseline:
        for s in suites:
            if s.headline:
                add("regression", f"regression[{s.name}:{s.headline}]", s.headline, s.name, None, project.max_regression, src)
    add("completeness", "completeness", "results", None, None, float(project.max_errors), src)
    if project.training_health:
        add("training_health", "training_health", "anomalies", None, None, 0.0, src)
    if provenance or project.adapter_id:
        add("provenance", "provenance", "adapter_id", None, None, None, src)
    return out
