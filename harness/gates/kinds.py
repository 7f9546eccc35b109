"""One evaluator per gate kind, each over a run read once (``harness.gates.evaluate.GateContext``).

``threshold``, ``retention``, ``leakage``, ``task_gain`` / ``gain`` and ``regression`` (every candidate's
paired test against the baseline, Holm-corrected as one family) judge the adapter's quality;
``completeness``, ``training_health`` and ``provenance`` are the bookkeeping. Each returns a
``GateOutcome`` whose message names the field, the value and the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from harness.gates.decide import decide_paired, decide_proportion
from harness.gates.report import Example, GateOutcome, GateResult
from harness.gates.threshold import _ci, _verdict, _vs, threshold_gate

if TYPE_CHECKING:
    from harness.gates.context import GateContext
    from harness.gates.spec import PlannedGate


def _worst(ctx: GateContext, t: tuple, suite: str, metric: str, vals: dict[str, float | None], n: int = 3) -> tuple[Example, ...]:
    hib = ctx.higher_is_better(suite, metric)
    ordered = sorted(vals.items(), key=lambda kv: (kv[1] is not None, (kv[1] or 0.0) * (1 if hib else -1)))
    return tuple(ctx.example(t, suite, ex, v) for ex, v in ordered[:n])


def _threshold(ctx: GateContext, g: PlannedGate, t: tuple) -> GateOutcome:
    from harness.analysis.stats import mean_interval

    assert g.suite is not None  # plan_gates gives every threshold gate its suite

    vals = ctx.data.values.get((*t, g.suite, g.metric), {})
    finite = [v for v in vals.values() if v is not None and math.isfinite(v)]
    base_vals = ctx.data.values.get((None, 0.0, g.suite, g.metric), {})
    base = _mean(list(base_vals.values())) if t[0] is not None else None
    interval = mean_interval(finite) if finite else None
    r = threshold_gate(g.name, g.metric, list(vals.values()), ctx.data.n_examples.get(g.suite, 0),
                       ctx.data.errors.get((*t, g.suite), 0), g.min, g.max, base, interval, f"{ctx.label(t)} {g.suite} ",
                       rule=ctx.project.decision, alpha=ctx.project.alpha, who=_who(ctx, t))
    return GateOutcome(r, g.kind, ctx.label(t), t[0], t[1], g.suite, interval, None,
                       _worst(ctx, t, g.suite, g.metric, vals), g.source)


def _who(ctx: GateContext, t: tuple) -> str:
    return "the base model" if t[0] is None else f"the adapter ({ctx.label(t)})"


def _retention(ctx: GateContext, g: PlannedGate, t: tuple) -> GateOutcome:
    from harness.analysis.stats import wilson
    from harness.analysis.sweep import curve

    label = ctx.label(t)
    threshold = g.min if g.min is not None else g.max
    assert threshold is not None  # plan_gates gives every retention gate its bound
    if g.suite is not None:  # one general suite's retention, from the comparison
        rets = [r for r in ctx.comparison.retention if r.target == label and r.suite == g.suite]
        kept, base_correct = sum(r.kept for r in rets), sum(r.base_correct for r in rets)
        where = f"{label} {g.suite} retention"
        metrics = [(g.suite, r.metric) for r in rets]
    else:
        # behaviour: the general suites that answer; knowledge (metric "knowledge"): those scored by likelihood
        knowledge = g.metric == "knowledge"
        point = next((p for p in curve(ctx.comparison, t[0]) if math.isclose(p.scale, t[1])), None)
        if knowledge:
            kept, base_correct = (point.knowledge_kept, point.knowledge_base_correct) if point else (0, 0)
        else:
            kept, base_correct = (point.kept, point.base_correct) if point else (0, 0)
        where = f"{label} {'knowledge retention (every general multiple-choice suite)' if knowledge else 'retention (every general suite that answers)'}"
        metrics = [(s.name, s.headline) for s in ctx.comparison.suites if s.role == "general" and s.headline
                   and s.likelihood == knowledge]
    if not base_correct:
        if metrics:
            why = "the base model answered none of the general items correctly: add general items it knows"
        elif not g.suite and any(s.role == "general" for s in ctx.comparison.suites):
            why = ("no general suite that answers in the run: add a suite with role general that generates (e.g. --suite "
                   "general-knowledge); a multiple-choice suite measures knowledge, not the behaviour that breaks")
        else:
            why = "no general suite in the run: add a suite with role general (e.g. --suite general-knowledge)"
        return GateOutcome(GateResult(g.name, "retention", None, threshold, None, False,
                                      f"{where}: not measured ({why}); needs >= {threshold:g}: FAIL", rule="not measured", n=0),
                           g.kind, label, t[0], t[1], g.suite, source=g.source)
    ret = kept / base_correct
    errored = sum(ctx.data.errors.get((*t, s), 0) for s, _ in metrics)
    decision = decide_proportion(kept, base_correct, threshold, g.max is None, ctx.project.decision, ctx.project.alpha,
                                 unit="base-correct answers", best="all of them kept" if g.max is None else None)
    interval = wilson(kept, base_correct)
    lost: list[Example] = []
    for suite, metric in metrics:
        base_vals = ctx.data.values.get((None, 0.0, suite, metric), {})
        mine = ctx.data.values.get((*t, suite, metric), {})
        lost.extend(ctx.example(t, suite, ex, mine.get(ex), 1.0) for ex, v in base_vals.items() if v == 1.0 and mine.get(ex) != 1.0)
    erred = f"; {errored} of the adapter's answers errored and count as lost" if errored else ""
    return GateOutcome(GateResult(g.name, "retention", ret, threshold, 1.0, decision.passed,
                                  f"{where} = {ret:.4g} ({kept}/{base_correct} of the base's correct answers kept){_ci(interval)}"
                                  f"{erred}; {decision.sentence}", rule=decision.rule, n=base_correct),
                       g.kind, label, t[0], t[1], g.suite, interval, None, tuple(lost[:3]), g.source)


def _leakage(ctx: GateContext, g: PlannedGate, t: tuple) -> GateOutcome:
    from harness.analysis.stats import wilson
    from harness.analysis.sweep import curve

    assert g.max is not None  # plan_gates gives the leakage gate its max_leakage
    label = ctx.label(t)
    points = {p.scale: p for p in curve(ctx.comparison, t[0])}
    point = next((p for s, p in points.items() if math.isclose(s, t[1])), None)
    base = points.get(0.0)
    if point is None or point.leakage is None:
        has_suite = any(s.role in ("general", "leakage") for s in ctx.comparison.suites)
        why = ("the task's output format is not known: declare it in the task suite (format: {json: [keys]}, {regex: "
               "PATTERN} or {choices: [labels]}), add a leakage suite of your own, or pass --task-format"
               if has_suite else "no general or leakage suite in the run: add one (e.g. --suite format-leakage)")
        return GateOutcome(GateResult(g.name, "format_leakage", None, g.max, None, False,
                                      f"{label} format_leakage: not measured ({why}); needs <= {g.max:g}: FAIL",
                                      rule="not measured", n=0), g.kind, label, t[0], t[1], source=g.source)
    decision = decide_proportion(point.n_leaked, point.n_leakage, g.max, False, ctx.project.decision, ctx.project.alpha,
                                 unit="general and leakage answers", best="none of them leaked")
    interval = wilson(point.n_leaked, point.n_leakage)
    base_leak = base.leakage if base is not None else None
    leak_metric = {s.name: s.leakage_metric for s in ctx.comparison.suites}
    leaked = [ctx.example(t, s, ex, v) for (aid, sc, s, m), vals in ctx.data.values.items()
              if (aid, sc) == t and m == leak_metric.get(s) for ex, v in vals.items() if v == 1.0]
    return GateOutcome(GateResult(g.name, "format_leakage", point.leakage, g.max, base_leak, decision.passed,
                                  f"{label} format_leakage = {point.leakage:.4g} ({point.n_leaked}/{point.n_leakage} general and "
                                  f"leakage answers in the task's format){_ci(interval)}{_vs(base_leak, 'base')}; "
                                  f"{decision.sentence}", rule=decision.rule, n=point.n_leakage),
                       g.kind, label, t[0], t[1], None, interval, None, tuple(leaked[:3]), g.source)


def _paired_values(ctx: GateContext, cand: tuple, ref: tuple, suite: str, metric: str
                   ) -> tuple[list[str], dict[str, float], dict[str, float], int, Callable[[float], float]]:
    """The examples the reference scored, with the candidate's score on each, oriented higher-is-better.

    An example the candidate errored on (or has no score for) counts as a failure: the worst score of the
    metric (0 or 1 for 0/1 scores; the worst value seen in the run otherwise), never a dropped pair.
    Returns (keys, candidate, reference, how many of the candidate's were failures put in, and the function
    that turns an oriented value, or a mean of them, back into the metric's own scale)."""
    hib = ctx.higher_is_better(suite, metric)
    raw = [v for (_, _, s, m), vals in ctx.data.values.items() if s == suite and m == metric
           for v in vals.values() if v is not None and math.isfinite(v)]
    binary = all(v in (0.0, 1.0) for v in raw)

    def orient(v: float) -> float:
        # higher is better after this; a 0/1 score stays 0/1 (1 - v when lower is better), so the exact
        # paired bounds apply to it whichever way the metric points. Its own inverse: it also turns an
        # oriented value, or a mean of them, back into the metric's scale
        return v if hib else (1.0 - v if binary else -v)

    a = {ex: orient(v) for ex, v in ctx.data.values.get((*cand, suite, metric), {}).items() if v is not None and math.isfinite(v)}
    b = {ex: orient(v) for ex, v in ctx.data.values.get((*ref, suite, metric), {}).items() if v is not None and math.isfinite(v)}
    worst = 0.0 if binary else min((orient(v) for v in raw), default=0.0)
    keys = sorted(b)
    filled = 0
    for k in keys:
        if k not in a:
            a[k] = worst
            filled += 1
    return keys, a, b, filled, orient


def _gain(ctx: GateContext, g: PlannedGate, t: tuple) -> GateOutcome:
    """Adapter minus base on paired examples, in the metric's better direction; the task headlines
    of every task suite for ``task_gain``, one suite metric for ``gain``."""
    from harness.analysis.stats import paired_test

    assert g.min is not None  # plan_gates gives every gain gate its min_gain / min_task_gain
    label = ctx.label(t)
    if g.kind == "task_gain":
        pairs_of = [(s.name, s.headline) for s in ctx.comparison.suites if s.role == "task" and s.headline]
        where = f"{label} task gain over base ({', '.join(f'{s}:{m}' for s, m in pairs_of) or 'no task suite'})"
    else:
        assert g.suite is not None  # plan_gates gives every gain gate its suite
        pairs_of = [(g.suite, g.metric)]
        where = f"{label} {g.suite} {g.metric} gain over base"
    mine, base, worst, raw_a, raw_b = [], [], [], [], []
    failed_in = 0
    for suite, metric in pairs_of:
        keys, a, b, filled, unorient = _paired_values(ctx, t, (None, 0.0), suite, metric)
        failed_in += filled
        for ex in keys:
            mine.append(a[ex])
            base.append(b[ex])
            raw_a.append(unorient(a[ex]))
            raw_b.append(unorient(b[ex]))
            worst.append((a[ex] - b[ex], ctx.example(t, suite, ex, unorient(a[ex]), unorient(b[ex]))))
    if not mine:
        why = ("no task suite in the run: add a suite with role task" if not pairs_of else
               "no example scored for the base model (run the base too)")
        return GateOutcome(GateResult(g.name, g.metric, None, g.min, None, False,
                                      f"{where}: not measured ({why}); needs >= {g.min:g}: FAIL", rule="not measured", n=0),
                           g.kind, label, t[0], t[1], g.suite, source=g.source)
    test = paired_test(base, mine)  # drop of base relative to the adapter = the adapter's gain
    gain, mean_a, mean_b = test.drop, sum(raw_a) / len(raw_a), sum(raw_b) / len(raw_b)
    decision = decide_paired(mine, base, min_gain=g.min, rule=ctx.project.decision, alpha=ctx.project.alpha)
    erred = f"; {failed_in} of the adapter's answers errored or went unscored and count as failures" if failed_in else ""
    return GateOutcome(GateResult(g.name, g.metric, gain, g.min, mean_b, decision.passed,
                                  f"{where} = {gain:+.4g} (adapter {mean_a:.4g}, base {mean_b:.4g} over {len(mine)} paired "
                                  f"examples{erred}); {decision.sentence}", rule=decision.rule, n=len(mine)),
                       g.kind, label, t[0], t[1], g.suite, test.interval, test.p_value,
                       tuple(e for _, e in sorted(worst, key=lambda x: x[0])[:3]), g.source)


def _regressions(ctx: GateContext, todo: Sequence[tuple[PlannedGate, tuple]]) -> list[GateOutcome]:
    """Each (gate, candidate) against the baseline adapter on the paired examples: the upper bound of the
    paired drop must be within the margin (absence of evidence is not a pass). Every regression gate must
    hold, so no multiplicity correction is needed (an intersection-union rule); the one-sided McNemar or
    bootstrap p-value of "any drop" is shown beside it, deciding nothing."""
    from harness.analysis.stats import paired_test

    out: list[GateOutcome] = []
    bt = (ctx.baseline_id, ctx.baseline_scale)
    blabel = ctx.labels.get(bt, f"{(ctx.baseline_id or '?')[:8]}@{ctx.baseline_scale:g}")
    for g, t in todo:
        assert g.suite is not None and g.max is not None  # plan_gates: its suite and max_drop / max_regression
        label = ctx.label(t)
        where = f"{label} {g.suite} {g.metric} vs baseline {blabel}"
        keys, a, b, filled, unorient = _paired_values(ctx, t, bt, g.suite, g.metric)
        if not keys:
            out.append(GateOutcome(GateResult(g.name, g.metric, None, g.max, None, False,
                                              f"{where}: not measured (no example of the baseline scored: evaluate the baseline "
                                              f"in the same run); allowed drop {g.max:g}: FAIL", rule="not measured", n=0),
                                   g.kind, label, t[0], t[1], g.suite, source=g.source))
            continue
        hib = ctx.higher_is_better(g.suite, g.metric)
        cand, base = [a[k] for k in keys], [b[k] for k in keys]
        test = paired_test(cand, base)  # oriented already: higher is better
        decision = decide_paired(cand, base, max_drop=g.max, rule=ctx.project.decision, alpha=ctx.project.alpha)
        mean_a, mean_b = unorient(sum(cand) / len(keys)), unorient(sum(base) / len(keys))
        threshold = mean_b - g.max if hib else mean_b + g.max
        counts = f", {test.n_worse} worse, {test.n_better} better" if test.test == "exact McNemar" else ""
        erred = f", {filled} of the candidate's errored or unscored and counted as failures" if filled else ""
        msg = (f"{where}: {mean_a:.4g} vs {mean_b:.4g}, drop {test.drop:+.4g} over {test.n_pairs} paired examples{counts}{erred} "
               f"({test.test} p = {test.p_value:.3g} for any drop); allowed drop {g.max:g}; {decision.sentence}")
        worst = sorted(keys, key=lambda k: a[k] - b[k])[:3]
        out.append(GateOutcome(GateResult(g.name, g.metric, mean_a, threshold, mean_b, decision.passed, msg,
                                          rule=decision.rule, n=len(keys)), g.kind, label, t[0], t[1],
                               g.suite, test.interval, test.p_value,
                               tuple(ctx.example(t, g.suite, k, unorient(a[k]), unorient(b[k])) for k in worst if a[k] < b[k]), g.source))
    return out


def _completeness(ctx: GateContext, g: PlannedGate) -> GateOutcome:
    rows = ctx.store.query("SELECT n_expected, n_results, n_errors FROM v_runs WHERE run_id = ?", [ctx.run_id])
    allowed = ctx.project.max_errors
    if not rows:
        return GateOutcome(GateResult(g.name, "results", None, None, None, False, f"completeness: no run {ctx.run_id} in the store: FAIL"), g.kind)
    n_exp, n_res, n_err = rows[0]["n_expected"], int(rows[0]["n_results"]), int(rows[0]["n_errors"])
    ok = bool(n_exp) and n_res == n_exp and n_err <= allowed
    why = ("no results were expected (a run over nothing cannot pass)" if not n_exp else
           f"{n_res - n_err} answered + {n_err} errored = {n_res} of {n_exp} expected (a missing score is judged by "
           "the gate on that metric)")
    hint = "" if ok else ("; rerun to finish or retry them" if n_exp else "")
    return GateOutcome(GateResult(g.name, "results", float(n_res - n_err), float(n_exp) if n_exp else None, None, ok,
                                  f"completeness of run {ctx.run_id}: {why}; errors allowed {allowed}{hint}: {_verdict(ok)}"),
                       g.kind, source=g.source)


def _health(ctx: GateContext, g: PlannedGate, adapter_id: str) -> GateOutcome | str:
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


def _provenance(ctx: GateContext, g: PlannedGate, adapter_id: str | None, scale: float | None, cands: Sequence[tuple]) -> GateOutcome:
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
