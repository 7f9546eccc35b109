"""Gates: rules on stored results that decide pass or fail, each with a sentence that says why.

Kinds of gate (all read the store, none generates):

- ``threshold``: a suite metric's mean within ``min``/``max`` (a suite's ``gates:``, or the project
  file's ``[[gates.threshold]]`` by suite role);
- ``retention`` / ``leakage`` / ``task_gain``: relative to the base model of the same run, with suites
  told apart by role, never by name (``retention`` on a general suite, or pooled over every general
  suite as ``harness.sweep`` computes it; leakage pooled over general and leakage suites; the task
  headline's gain over base), and ``gain`` for a suite's ``min_gain``;
- ``regression``: against a baseline adapter, decided on the paired examples (``harness.stats``): a
  drop fails when it is both significant after Holm's correction over every regression test of the
  check (scales × suites) and larger than the allowed margin;
- ``completeness``: every expected result present (scored + errored == expected), errors <= allowed;
- ``training_health``: no error-severity anomaly in the adapter's training record or stored findings;
- ``provenance``: the adapter evaluated is the one being released (its hash).

A gate never passes on missing evidence. Every expected example must be present, no score may be
missing or non-finite, and only then is the mean compared with the threshold. DuckDB sorts NaN above
every number, so a NaN that reached a ``>=`` comparison would pass it; scores are finite or NULL by
construction (``Score``, ``ScoreRow`` and the table's CHECK), and this module treats NULL as a failure,
not as a value to skip. Zero examples never pass, and a check with zero gates does not either.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.store import GateRow

if TYPE_CHECKING:
    from harness.comparison import Comparison
    from harness.stats import Interval, PairedTest
    from harness.store import Store
    from harness.suites import Suite


#: A gate's outcome is exactly the store's row, so results go into ``gate_results`` unchanged
#: (``run.add_gate_results([...])``): {gate, metric, observed, threshold, baseline, passed, message}.
GateResult = GateRow

#: gates about the adapter's quality (a check needs at least one); the others are bookkeeping
QUALITY_KINDS = frozenset({"threshold", "retention", "leakage", "task_gain", "gain", "regression"})


@dataclass(frozen=True)
class RoleThreshold:
    """An absolute bound on every suite of one role (``metric`` None: each suite's headline)."""

    role: str
    metric: str | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class ProjectGates:
    """The gates of a project file (``harness.project``); every field off unless set."""

    min_retention: float | None = None
    max_leakage: float | None = None
    min_task_gain: float | None = None
    max_regression: float | None = None
    max_errors: int = 0
    alpha: float = 0.05
    training_health: bool = True
    adapter_id: str | None = None
    thresholds: tuple[RoleThreshold, ...] = ()
    source: str = "defaults"


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


@dataclass(frozen=True)
class Example:
    """One example behind a gate's verdict, worst first."""

    suite: str
    example_id: str
    input: str | None
    target: str | None
    output: str | None
    value: float | None
    baseline_value: float | None = None


@dataclass(frozen=True)
class GateOutcome:
    """A gate's result with what a person needs to read it: target, interval, p-value, worst examples."""

    result: GateResult
    kind: str
    target: str | None = None
    adapter_id: str | None = None
    scale: float | None = None
    suite: str | None = None
    interval: Interval | None = None
    p_value: float | None = None
    worst: tuple[Example, ...] = ()
    source: str = ""

    @property
    def passed(self) -> bool:
        return self.result.passed


@dataclass(frozen=True)
class GateReport:
    """Every gate of one check of one run; ``skipped`` are (gate, reason) with nothing to judge."""

    run_id: str
    outcomes: tuple[GateOutcome, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def results(self) -> list[GateResult]:
        return [o.result for o in self.outcomes]

    def rows(self) -> list[GateRow]:
        """The results as stored: each with its interval and p-value as numbers."""
        return [dataclasses.replace(o.result, interval_low=o.interval.low if o.interval else None,
                                    interval_high=o.interval.high if o.interval else None, p_value=o.p_value)
                for o in self.outcomes]

    @property
    def failures(self) -> list[GateOutcome]:
        return [o for o in self.outcomes if not o.passed]

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and not self.failures


# -- one threshold ------------------------------------------------------------------------------------

def threshold_gate(
    name: str,
    metric: str,
    values: Sequence[float | None],
    n_expected: int,
    n_errored: int = 0,
    min: float | None = None,  # shadows the builtin: the suite spec's own key
    max: float | None = None,
    baseline: float | None = None,
    interval: Interval | None = None,
    what: str = "",
) -> GateResult:
    """Pass when every expected example was scored with a finite value and the mean is within bounds.

    ``baseline`` (the base model's mean) and ``interval`` (on the mean) go into the sentence; ``what``
    (target and suite) prefixes it.
    """
    if min is None and max is None:
        raise ValueError(f"gate {name}: give min or max")
    threshold = min if min is not None else max
    bound = " and ".join(b for b in (f">= {min:g}" if min is not None else "", f"<= {max:g}" if max is not None else "") if b)
    head = f"{what}{metric}"
    finite = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    bad = len(values) - len(finite)

    def fail(msg: str) -> GateResult:
        return GateResult(name, metric, None, threshold, baseline, False, f"{head}: {msg}; needs {bound}: FAIL")

    if n_expected <= 0:
        return fail("no examples were expected; a gate over nothing cannot pass")
    if not values and not n_errored:
        return fail(f"no scores at all for {metric} (does a scorer of the suite emit it?)")
    if len(values) + n_errored != n_expected:
        return fail(f"incomplete run: {len(values)} scored + {n_errored} errored != {n_expected} expected; rerun to finish it")
    if n_errored:
        return fail(f"{n_errored} of {n_expected} examples errored")
    if bad:
        return fail(f"{bad} of {n_expected} scores are missing or not finite; a gate cannot pass on them")
    mean = sum(finite) / len(finite)
    ok = (min is None or mean >= min) and (max is None or mean <= max)
    return GateResult(name, metric, mean, threshold, baseline, ok,
                      f"{head} = {mean:.4g}{_ci(interval)} over {n_expected} examples; needs {bound}"
                      f"{_vs(baseline, 'base')}: {'pass' if ok else 'FAIL'}")


def _ci(interval: Interval | None) -> str:
    return "" if interval is None else f" (95% {interval.method} interval {interval.low:.4g}-{interval.high:.4g})"


def _vs(value: float | None, who: str) -> str:
    return "" if value is None else f"; {who} {value:.4g}"


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


# -- the plan: which gates a check evaluates ----------------------------------------------------------

def plan_gates(suites: Sequence[Suite], project: ProjectGates | None = None, *, with_baseline: bool = False,
               provenance: bool = False) -> list[PlannedGate]:
    """The gates of these suites and this project file, with unique names (the same names every time)."""
    project = project or ProjectGates()
    out: list[PlannedGate] = []
    names: dict[str, int] = defaultdict(int)

    def add(kind: str, base_name: str, metric: str, suite: str | None = None, lo: float | None = None,
            hi: float | None = None, source: str = "") -> None:
        names[base_name] += 1
        name = base_name if names[base_name] == 1 else f"{base_name}#{names[base_name]}"
        out.append(PlannedGate(name, kind, metric, suite, lo, hi, source))

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
        add("retention", "retention", "retention", None, project.min_retention, None, src)
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


# -- evaluating a plan against one stored run ---------------------------------------------------------

@dataclass
class _RunData:
    """One run's per-example values, read once."""

    values: dict[tuple, dict[str, float | None]] = field(default_factory=lambda: defaultdict(dict))
    outputs: dict[tuple, str | None] = field(default_factory=dict)
    texts: dict[tuple[str, str], tuple[str | None, str | None]] = field(default_factory=dict)
    n_examples: dict[str, int] = field(default_factory=dict)
    errors: dict[tuple, int] = field(default_factory=lambda: defaultdict(int))
    targets: set[tuple[str | None, float]] = field(default_factory=set)


def _read_run(store: Store, run_id: str) -> _RunData:
    d = _RunData()
    for r in store.query("SELECT adapter_id, scale, suite_name, example_id, metric, value, input, target, output "
                         "FROM v_scores WHERE run_id = ?", [run_id]):
        t = (r["adapter_id"], float(r["scale"]) if r["adapter_id"] else 0.0)
        # keys built first: mypy 2.4 misreads d[(*t, x)] as Python 3.11's d[*t, x]
        metric_key, output_key = (*t, r["suite_name"], r["metric"]), (*t, r["suite_name"], r["example_id"])
        d.values[metric_key][r["example_id"]] = r["value"]
        d.outputs[output_key] = r["output"]
        d.texts[(r["suite_name"], r["example_id"])] = (r["input"], r["target"])
    for r in store.query(
            "SELECT g.adapter_id, g.scale, s.name AS suite, g.example_id, g.error FROM run_results rr "
            "JOIN generations g USING (cache_key) JOIN suites s ON s.suite_id = g.suite_id WHERE rr.run_id = ?", [run_id]):
        t = (r["adapter_id"], float(r["scale"]) if r["adapter_id"] else 0.0)
        d.targets.add(t)
        if r["error"] is not None:
            error_key = (*t, r["suite"])
            d.errors[error_key] += 1
    for r in store.query(
            "SELECT s.name AS suite, count(DISTINCT g.example_id) AS n FROM run_results rr JOIN generations g USING (cache_key) "
            "JOIN suites s ON s.suite_id = g.suite_id WHERE rr.run_id = ? GROUP BY s.name", [run_id]):
        d.n_examples[r["suite"]] = int(r["n"])
    return d


def evaluate_gates(
    store: Store,
    run_id: str,
    suites: Sequence[Suite],
    *,
    adapter_id: str | None = None,
    scale: float | None = None,
    baseline_adapter_id: str | None = None,
    baseline_scale: float = 1.0,
    project_gates: ProjectGates | None = None,
    plan: Sequence[PlannedGate] | None = None,
    require_gates: bool = False,
) -> GateReport:
    """Evaluate every planned gate (default: ``plan_gates`` of the suites and project) on one stored run.

    Candidates are the run's adapters at their scales (only ``adapter_id`` / ``scale`` when given; the
    baseline adapter is never a candidate); a run of the base model alone is judged on its thresholds.
    ``require_gates``: a check with no quality gate fails (a vacuous pass is impossible).
    """
    from harness.comparison import build_comparison

    project = project_gates or ProjectGates()
    if plan is None:
        plan = plan_gates(suites, project, with_baseline=baseline_adapter_id is not None, provenance=adapter_id is not None)
    data = _read_run(store, run_id)
    comparison = build_comparison(store, run_id, samples_per_suite=0)
    labels = {(c.adapter_id, c.scale): c.target for c in comparison.cells if c.adapter_id}
    by_suite = {s.name: s for s in suites}
    cands = sorted(t for t in data.targets if t[0] is not None and t[0] != baseline_adapter_id
                   and (adapter_id is None or t[0] == adapter_id) and (scale is None or math.isclose(t[1], scale)))
    base_only = not any(t[0] for t in data.targets) and adapter_id is None
    if base_only:
        cands = [(None, 0.0)]
    ctx = _Ctx(store, run_id, data, comparison, labels, by_suite, project, baseline_adapter_id, baseline_scale)
    outcomes: list[GateOutcome] = []
    skipped: list[tuple[str, str]] = []
    regressions: list[tuple[PlannedGate, tuple]] = []
    for g in plan:
        if g.kind == "completeness":
            outcomes.append(_completeness(ctx, g))
            continue
        if g.kind == "provenance":
            outcomes.append(_provenance(ctx, g, adapter_id, scale, cands))
            continue
        if g.kind == "training_health":
            for aid in sorted({t[0] for t in cands if t[0]}):
                o = _health(ctx, g, aid)
                (outcomes.append(o) if isinstance(o, GateOutcome) else skipped.append((g.name, o)))
            continue
        if not cands:
            what = f"adapter {adapter_id[:12]}" if adapter_id else "any adapter"
            at = f" at scale {scale:g}" if scale is not None else ""
            outcomes.append(GateOutcome(GateResult(g.name, g.metric, None, g.min if g.min is not None else g.max, None, False,
                                                   f"{g.name}: run {run_id} holds no results of {what}{at}; evaluate it first: FAIL"),
                                        g.kind, suite=g.suite, source=g.source))
            continue
        for t in cands:
            if g.kind == "threshold":
                outcomes.append(_threshold(ctx, g, t))
            elif base_only:
                skipped.append((g.name, "the run holds the base model only: relative gates need an adapter"))
            elif g.kind == "retention":
                outcomes.append(_retention(ctx, g, t))
            elif g.kind == "leakage":
                outcomes.append(_leakage(ctx, g, t))
            elif g.kind in ("task_gain", "gain"):
                outcomes.append(_gain(ctx, g, t))
            elif g.kind == "regression":
                regressions.append((g, t))
    outcomes.extend(_regressions(ctx, regressions))
    if require_gates and not any(o.kind in QUALITY_KINDS for o in outcomes):
        outcomes.append(GateOutcome(GateResult("gates", "gates", 0.0, 1.0, None, False,
                                               "no quality gate applies: define gates in the suites (gates:) or in "
                                               "harness.toml [gates]; a check with no gates cannot pass"), "gates"))
    return GateReport(run_id, tuple(outcomes), tuple(skipped))


def check_run(
    store: Store,
    run_id: str,
    suites: Sequence[Suite],
    *,
    adapter_id: str | None = None,
    scale: float | None = None,
    baseline_adapter_id: str | None = None,
    baseline_scale: float = 1.0,
    project_gates: ProjectGates | None = None,
) -> list[GateResult]:
    """Every gate applicable to a stored run, as ``GateResult`` rows (``evaluate_gates`` for the details)."""
    return evaluate_gates(store, run_id, suites, adapter_id=adapter_id, scale=scale,
                          baseline_adapter_id=baseline_adapter_id, baseline_scale=baseline_scale,
                          project_gates=project_gates).results


@dataclass(frozen=True)
class _Ctx:
    store: Store
    run_id: str
    data: _RunData
    comparison: Comparison
    labels: dict
    suites: dict
    project: ProjectGates
    baseline_id: str | None
    baseline_scale: float

    def label(self, t: tuple) -> str:
        return "base" if t[0] is None else self.labels.get(t, f"{t[0][:8]}@{t[1]:g}")

    def higher_is_better(self, suite: str, metric: str) -> bool:
        from harness.suites import higher_is_better, suite_directions

        s = self.suites.get(suite)
        return higher_is_better(metric, suite_directions(s) if s else None)

    def example(self, t: tuple, suite: str, ex: str, value: float | None, other: float | None = None) -> Example:
        inp, tgt = self.data.texts.get((suite, ex), (None, None))
        return Example(suite, ex, inp, tgt, self.data.outputs.get((*t, suite, ex)), value, other)


def _worst(ctx: _Ctx, t: tuple, suite: str, metric: str, vals: dict[str, float | None], n: int = 3) -> tuple[Example, ...]:
    hib = ctx.higher_is_better(suite, metric)
    ordered = sorted(vals.items(), key=lambda kv: (kv[1] is not None, (kv[1] or 0.0) * (1 if hib else -1)))
    return tuple(ctx.example(t, suite, ex, v) for ex, v in ordered[:n])


def _threshold(ctx: _Ctx, g: PlannedGate, t: tuple) -> GateOutcome:
    from harness.stats import mean_interval

    assert g.suite is not None  # plan_gates gives every threshold gate its suite

    vals = ctx.data.values.get((*t, g.suite, g.metric), {})
    finite = [v for v in vals.values() if v is not None and math.isfinite(v)]
    base_vals = ctx.data.values.get((None, 0.0, g.suite, g.metric), {})
    base = _mean(list(base_vals.values())) if t[0] is not None else None
    interval = mean_interval(finite) if finite else None
    r = threshold_gate(g.name, g.metric, list(vals.values()), ctx.data.n_examples.get(g.suite, 0),
                       ctx.data.errors.get((*t, g.suite), 0), g.min, g.max, base, interval, f"{ctx.label(t)} {g.suite} ")
    return GateOutcome(r, g.kind, ctx.label(t), t[0], t[1], g.suite, interval, None,
                       _worst(ctx, t, g.suite, g.metric, vals), g.source)


def _retention(ctx: _Ctx, g: PlannedGate, t: tuple) -> GateOutcome:
    from harness.stats import wilson
    from harness.sweep import curve

    label = ctx.label(t)
    threshold = g.min if g.min is not None else g.max
    if g.suite is not None:  # one general suite's retention, from the comparison
        rets = [r for r in ctx.comparison.retention if r.target == label and r.suite == g.suite]
        kept, base_correct = sum(r.kept for r in rets), sum(r.base_correct for r in rets)
        where = f"{label} {g.suite} retention"
        metrics = [(g.suite, r.metric) for r in rets]
    else:
        point = next((p for p in curve(ctx.comparison, t[0]) if math.isclose(p.scale, t[1])), None)
        kept, base_correct = (point.kept, point.base_correct) if point else (0, 0)
        where = f"{label} retention (every general suite)"
        metrics = [(s.name, s.headline) for s in ctx.comparison.suites if s.role == "general" and s.headline]
    if not base_correct:
        why = "no general suite in the run" if not metrics else "the base model answered none of the general items correctly"
        return GateOutcome(GateResult(g.name, "retention", None, threshold, None, False,
                                      f"{where}: not measured ({why}); needs >= {threshold:g}: FAIL"),
                           g.kind, label, t[0], t[1], g.suite, source=g.source)
    ret = kept / base_correct
    ok = (g.min is None or ret >= g.min) and (g.max is None or ret <= g.max)
    interval = wilson(kept, base_correct)
    lost: list[Example] = []
    for suite, metric in metrics:
        base_vals = ctx.data.values.get((None, 0.0, suite, metric), {})
        mine = ctx.data.values.get((*t, suite, metric), {})
        lost.extend(ctx.example(t, suite, ex, mine.get(ex), 1.0) for ex, v in base_vals.items() if v == 1.0 and mine.get(ex) != 1.0)
    return GateOutcome(GateResult(g.name, "retention", ret, threshold, 1.0, ok,
                                  f"{where} = {ret:.4g} ({kept}/{base_correct} of the base's correct answers kept){_ci(interval)}; "
                                  f"needs >= {threshold:g}; base 1: {_verdict(ok)}"),
                       g.kind, label, t[0], t[1], g.suite, interval, None, tuple(lost[:3]), g.source)


def _leakage(ctx: _Ctx, g: PlannedGate, t: tuple) -> GateOutcome:
    from harness.stats import wilson
    from harness.sweep import curve

    assert g.max is not None  # plan_gates gives the leakage gate its max_leakage
    label = ctx.label(t)
    points = {p.scale: p for p in curve(ctx.comparison, t[0])}
    point = next((p for s, p in points.items() if math.isclose(s, t[1])), None)
    base = points.get(0.0)
    if point is None or point.leakage is None:
        return GateOutcome(GateResult(g.name, "format_leakage", None, g.max, None, False,
                                      f"{label} format_leakage: not measured (no general or leakage suite scored for the task's "
                                      f"format); needs <= {g.max:g}: FAIL"), g.kind, label, t[0], t[1], source=g.source)
    ok = point.leakage <= g.max
    interval = wilson(point.n_leaked, point.n_leakage)
    base_leak = base.leakage if base is not None else None
    leaked = [ctx.example(t, s, ex, v) for (aid, sc, s, m), vals in ctx.data.values.items()
              if (aid, sc) == t and m == "format_leakage" for ex, v in vals.items() if v == 1.0]
    return GateOutcome(GateResult(g.name, "format_leakage", point.leakage, g.max, base_leak, ok,
                                  f"{label} format_leakage = {point.leakage:.4g} ({point.n_leaked}/{point.n_leakage} general and "
                                  f"leakage answers in the task's format){_ci(interval)}; needs <= {g.max:g}"
                                  f"{_vs(base_leak, 'base')}: {_verdict(ok)}"),
                       g.kind, label, t[0], t[1], None, interval, None, tuple(leaked[:3]), g.source)


def _gain(ctx: _Ctx, g: PlannedGate, t: tuple) -> GateOutcome:
    """Adapter minus base on paired examples, in the metric's better direction; the task headlines
    of every task suite for ``task_gain``, one suite metric for ``gain``."""
    from harness.stats import paired_test

    assert g.min is not None  # plan_gates gives every gain gate its min_gain / min_task_gain
    label = ctx.label(t)
    if g.kind == "task_gain":
        pairs_of = [(s.name, s.headline) for s in ctx.comparison.suites if s.role == "task" and s.headline]
        where = f"{label} task gain over base ({', '.join(f'{s}:{m}' for s, m in pairs_of) or 'no task suite'})"
    else:
        assert g.suite is not None  # plan_gates gives every gain gate its suite
        pairs_of = [(g.suite, g.metric)]
        where = f"{label} {g.suite} {g.metric} gain over base"
    mine, base, worst = [], [], []
    for suite, metric in pairs_of:
        sign = 1.0 if ctx.higher_is_better(suite, metric) else -1.0
        a = ctx.data.values.get((*t, suite, metric), {})
        b = ctx.data.values.get((None, 0.0, suite, metric), {})
        for ex in sorted(set(a) & set(b)):
            va, vb = a[ex], b[ex]
            if va is not None and vb is not None:
                mine.append(sign * va)
                base.append(sign * vb)
                worst.append((sign * (va - vb), ctx.example(t, suite, ex, va, vb)))
    if not mine:
        return GateOutcome(GateResult(g.name, g.metric, None, g.min, None, False,
                                      f"{where}: no example scored for both the adapter and the base model (run the base too); "
                                      f"needs >= {g.min:g}: FAIL"), g.kind, label, t[0], t[1], g.suite, source=g.source)
    test = paired_test(base, mine)  # drop of base relative to the adapter = the adapter's gain
    gain, mean_a, mean_b = test.drop, sum(mine) / len(mine), sum(base) / len(base)
    ok = gain >= g.min
    interval = test.interval
    return GateOutcome(GateResult(g.name, g.metric, gain, g.min, abs(mean_b), ok,
                                  f"{where} = {gain:+.4g} (adapter {abs(mean_a):.4g}, base {abs(mean_b):.4g} over {len(mine)} paired "
                                  f"examples; 95% {interval.method} interval {interval.low:+.4g} to {interval.high:+.4g}); "
                                  f"needs >= {g.min:+g}: {_verdict(ok)}"),
                       g.kind, label, t[0], t[1], g.suite, interval, None,
                       tuple(e for _, e in sorted(worst, key=lambda x: x[0])[:3]), g.source)


def _regressions(ctx: _Ctx, todo: Sequence[tuple[PlannedGate, tuple]]) -> list[GateOutcome]:
    """Paired tests of every (gate, candidate) against the baseline adapter, Holm-corrected together."""
    from harness.stats import holm, paired_test

    if not todo:
        return []
    bt = (ctx.baseline_id, ctx.baseline_scale)
    blabel = ctx.labels.get(bt, f"{(ctx.baseline_id or '?')[:8]}@{ctx.baseline_scale:g}")
    tests: list[tuple[PlannedGate, tuple, list[str], dict[str, float], dict[str, float], bool, PairedTest | None]] = []
    out: list[GateOutcome] = []
    for g, t in todo:
        assert g.suite is not None  # plan_gates gives every regression gate its suite
        hib = ctx.higher_is_better(g.suite, g.metric)
        # the scored examples (None is no score) of the candidate and the baseline
        a = {ex: v for ex, v in ctx.data.values.get((*t, g.suite, g.metric), {}).items() if v is not None}
        b = {ex: v for ex, v in ctx.data.values.get((*bt, g.suite, g.metric), {}).items() if v is not None}
        keys = sorted(set(a) & set(b))
        tests.append((g, t, keys, a, b, hib, paired_test([a[k] for k in keys], [b[k] for k in keys], hib) if keys else None))
    family = [x[-1].p_value for x in tests if x[-1] is not None]
    adjusted = iter(holm(family, ctx.project.alpha))
    for g, t, keys, a, b, hib, test in tests:
        assert g.suite is not None and g.max is not None  # plan_gates: its suite and max_drop / max_regression
        label = ctx.label(t)
        where = f"{label} {g.suite} {g.metric} vs baseline {blabel}"
        if test is None:
            out.append(GateOutcome(GateResult(g.name, g.metric, None, g.max, None, False,
                                              f"{where}: no example scored for both (evaluate the baseline in the same run); "
                                              f"allowed drop {g.max:g}: FAIL"), g.kind, label, t[0], t[1], g.suite, source=g.source))
            continue
        reject, p_adj = next(adjusted)
        mean_a, mean_b = sum(a[k] for k in keys) / len(keys), sum(b[k] for k in keys) / len(keys)
        ok = not (reject and test.drop > g.max)
        threshold = mean_b - g.max if hib else mean_b + g.max
        counts = f", {test.n_worse} worse, {test.n_better} better" if test.test == "exact McNemar" else ""
        verdict = ("pass" if not reject else "pass (a significant drop, within the margin)") if ok else "FAIL"
        iv = test.interval
        msg = (f"{where}: {mean_a:.4g} vs {mean_b:.4g}, drop {test.drop:+.4g} (95% paired bootstrap interval "
               f"{iv.low:+.4g} to {iv.high:+.4g}) over {test.n_pairs} paired examples{counts}; {test.test} p = {test.p_value:.3g}, "
               f"Holm-adjusted {p_adj:.3g} over {len(family)} test(s), alpha {ctx.project.alpha:g}; allowed drop {g.max:g} "
               f"(needs {'>=' if hib else '<='} {threshold:.4g}): {verdict}")
        sign = 1.0 if hib else -1.0
        worst = sorted(keys, key=lambda k: sign * (a[k] - b[k]))[:3]
        out.append(GateOutcome(GateResult(g.name, g.metric, mean_a, threshold, mean_b, ok, msg), g.kind, label, t[0], t[1],
                               g.suite, iv, p_adj, tuple(ctx.example(t, g.suite, k, a[k], b[k]) for k in worst
                                                          if sign * (a[k] - b[k]) < 0), g.source))
    return out


def _completeness(ctx: _Ctx, g: PlannedGate) -> GateOutcome:
    rows = ctx.store.query("SELECT n_expected, n_results, n_errors FROM v_runs WHERE run_id = ?", [ctx.run_id])
    allowed = ctx.project.max_errors
    if not rows:
        return GateOutcome(GateResult(g.name, "results", None, None, None, False, f"completeness: no run {ctx.run_id} in the store: FAIL"), g.kind)
    n_exp, n_res, n_err = rows[0]["n_expected"], int(rows[0]["n_results"]), int(rows[0]["n_errors"])
    ok = bool(n_exp) and n_res == n_exp and n_err <= allowed
    why = ("no results were expected (a run over nothing cannot pass)" if not n_exp else
           f"{n_res - n_err} scored + {n_err} errored = {n_res} of {n_exp} expected")
    hint = "" if ok else ("; rerun to finish or retry them" if n_exp else "")
    return GateOutcome(GateResult(g.name, "results", float(n_res - n_err), float(n_exp) if n_exp else None, None, ok,
                                  f"completeness of run {ctx.run_id}: {why}; errors allowed {allowed}{hint}: {_verdict(ok)}"),
                       g.kind, source=g.source)


def _health(ctx: _Ctx, g: PlannedGate, adapter_id: str) -> GateOutcome | str:
    """No error-severity anomaly in harness.json's "anomalies" or the store's findings; a reason to skip
    (a str) when there is no training record at all."""
    from harness.records import Finding, parse_adapter_record

    rows = ctx.store.query("SELECT harness FROM adapters WHERE adapter_id = ?", [adapter_id])
    where = f"{ctx.store.path}: the stored harness.json of adapter {adapter_id[:12]}"
    record = parse_adapter_record(rows[0]["harness"], where) if rows and rows[0]["harness"] else None
    findings = [Finding.from_dict(r, f"{ctx.store.path}: a stored finding of adapter {adapter_id[:12]}") for r in
                ctx.store.query("SELECT kind, severity, step, message FROM findings WHERE adapter_id = ?", [adapter_id])]
    anomalies = [*(record.anomalies if record is not None else ()), *findings]
    if record is None and not findings:
        return f"adapter {adapter_id[:12]} has no training record (harness.json) and no stored findings: nothing to judge"
    errors = [a for a in anomalies if a.severity == "error"]
    ok = not errors
    first = f"; first: {errors[0].kind} at step {errors[0].step}: {errors[0].message}" if errors else ""
    return GateOutcome(GateResult(g.name, "anomalies", float(len(errors)), 0.0, None, ok,
                                  f"training health of adapter {adapter_id[:12]}: {len(errors)} error-severity anomalies of "
                                  f"{len(anomalies)} recorded{first}; allowed 0: {_verdict(ok)}"),
                       g.kind, None, adapter_id, source=g.source)


def _provenance(ctx: _Ctx, g: PlannedGate, adapter_id: str | None, scale: float | None, cands: Sequence[tuple]) -> GateOutcome:
    expected = ctx.project.adapter_id
    released = adapter_id or expected
    evaluated = sorted({t[0] for t in cands if t[0]})
    problems = []
    if expected and adapter_id and expected != adapter_id:
        problems.append(f"the adapter directory hashes to {adapter_id[:12]}, not the {expected[:12]} {ctx.project.source} releases")
    if released not in evaluated:
        at = f" at scale {scale:g}" if scale is not None else ""
        problems.append(f"run {ctx.run_id} holds no results of adapter {(released or '?')[:12]}{at} "
                        f"(it evaluated {', '.join(e[:12] for e in evaluated) or 'no adapter'})")
    ok = not problems
    msg = (f"the results of run {ctx.run_id} are of adapter {released}, the one being released: pass" if ok
           else f"{'; '.join(problems)}: FAIL")
    return GateOutcome(GateResult(g.name, "adapter_id", None, None, None, ok, msg), g.kind, None, released, scale, source=g.source)


def _mean(vals: Sequence[float | None]) -> float | None:
    scored = [v for v in vals if v is not None]
    return sum(scored) / len(scored) if scored else None
