"""Scale sweeps as pure functions over stored aggregates: curves, the Pareto front, the recommended scale.

A sweep evaluates one adapter at several LoRA scales (0 is the base model). For each scale this module
reads three figures from a ``Comparison``: the task suites' headline (higher is better, as the suite
declares it), the retention of every ``general`` suite (of the base's correct answers, the share kept)
and the format leakage on ``general`` / ``leakage`` suites. Which suite is which comes from the suites'
roles, never from their names. Nothing here generates or queries: the sweep job (``harness/jobs/sweep.py``) does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from harness.analysis.stats import wilson
from harness.analysis.types import Comparison

#: the release limits: the recommendation's default gates, and the release check's defaults (defined once)
MIN_RETENTION = 0.95
MAX_LEAKAGE = 0.02


class Limits(NamedTuple):
    """The retention and leakage limits a recommendation is made under (stored with the sweep run)."""

    min_retention: float = MIN_RETENTION
    max_leakage: float = MAX_LEAKAGE


def run_blocked(config: Mapping[str, Any] | None, adapter_id: str) -> dict[float, str]:
    """The scales of ``adapter_id`` that failed a release gate in the stored sweep (``config["sweep"]["blocked"]``:
    scale -> the first failed gate's message), which no recommendation may pick; {} for a run that judged none."""
    blocked = (((config or {}).get("sweep") or {}).get("blocked") or {}).get(adapter_id) or {}
    return {float(k): str(v) for k, v in blocked.items()}


def run_limits(config: Mapping[str, Any] | None) -> Limits:
    """The limits a stored run recommended with: its ``config["sweep"]`` (``harness sweep`` stores the
    ``--min-retention`` / ``--max-leakage`` it ran with), else the defaults. Every face that shows a run's
    recommendation (the sweep's table, the report, ``check --recommended``) reads them here, so one run
    has one recommendation."""
    sweep = (config or {}).get("sweep") or {}
    return Limits(float(sweep.get("min_retention", MIN_RETENTION)), float(sweep.get("max_leakage", MAX_LEAKAGE)))


@dataclass(frozen=True)
class ScalePoint:
    """One adapter at one scale.

    Attributes:
        scale: the LoRA scale (0 = the base model).
        task: mean headline of the task suites (None when no task suite was scored).
        retention: retention over the general suites' base-correct items (None: no general suite, or the
            base got none right), with ``kept`` / ``base_correct`` the counts behind it.
        leakage: share of general and leakage answers in the task's format (None: not measured), over
            ``n_leakage`` answers.
        n_task: task examples behind ``task``.
    """

    scale: float
    task: float | None
    retention: float | None
    leakage: float | None
    n_task: int = 0
    kept: int = 0
    base_correct: int = 0
    n_leakage: int = 0
    n_leaked: int = 0
    #: retention of knowledge: over the base-correct items of the general suites scored by likelihood (multiple
    #: choice), with its counts; ``retention`` above is then the behaviour (the general suites that generate)
    knowledge: float | None = None
    knowledge_kept: int = 0
    knowledge_base_correct: int = 0
    #: mean per-token KL(base || adapter@scale) over the base's own general and leakage answers (nats), over
    #: ``n_drift`` answers; 0 for the base model; None: not measured
    drift: float | None = None
    n_drift: int = 0


@dataclass(frozen=True)
class Recommendation:
    """The scale to ship, or None when no scale meets the gates, with a sentence that says why."""

    scale: float | None
    point: ScalePoint | None
    sentence: str
    min_retention: float
    max_leakage: float


def _label_scale(target: str) -> float | None:
    if target == "base":
        return 0.0
    try:
        return float(target.rsplit("@", 1)[1])
    except (IndexError, ValueError):
        return None


def curve(c: Comparison, adapter_id: str) -> list[ScalePoint]:
    """The adapter's points at every scale in the comparison, with the base model as scale 0."""
    roles = {s.name: s for s in c.suites}
    labels: dict[float, str] = {0.0: "base"}
    for cell in c.cells:
        if cell.adapter_id == adapter_id:
            labels[cell.scale] = cell.target
    points = []
    for scale, label in sorted(labels.items()):
        task_cells = [(x.mean, x.n_scored) for x in c.cells if x.target == label and x.suite in roles
                      and roles[x.suite].role == "task" and x.metric == roles[x.suite].headline and x.mean is not None]
        n_task = sum(n for _, n in task_cells)
        task = sum(mean * n for mean, n in task_cells) / n_task if n_task else None
        kept_of: dict[bool, tuple[int, int]] = {}
        for knowledge in (False, True):  # behaviour: general suites that generate; knowledge: scored by likelihood
            if label == "base":
                general = [x for x in c.cells if x.target == "base" and x.suite in roles and roles[x.suite].role == "general"
                           and roles[x.suite].likelihood == knowledge and x.metric == roles[x.suite].headline]
                n_ok = sum(round((x.mean or 0.0) * x.n_scored) for x in general)
                kept_of[knowledge] = (n_ok, n_ok)
            else:
                rets = [r for r in c.retention if r.target == label and r.suite in roles
                        and roles[r.suite].likelihood == knowledge]
                kept_of[knowledge] = (sum(r.kept for r in rets), sum(r.base_correct for r in rets))
        kept, base_correct = kept_of[False]
        k_kept, k_base = kept_of[True]
        retention = kept / base_correct if base_correct else None
        knowledge_ret = k_kept / k_base if k_base else None
        drift_cells = [(x.mean, x.n_scored) for x in c.cells if x.target == label and x.metric == "drift_kl"
                       and x.mean is not None and x.n_scored]
        n_drift = sum(n for _, n in drift_cells)
        drift = sum(m * n for m, n in drift_cells) / n_drift if n_drift else None
        if label == "base" and any(roles[s].role in ("general", "leakage") and not roles[s].likelihood for s in roles):
            drift = 0.0  # the base model does not move from itself
        leak_cells = [(x.mean, x.n_scored) for x in c.cells if x.target == label and x.suite in roles
                      and x.metric == roles[x.suite].leakage_metric and x.mean is not None]
        n_leak = sum(n for _, n in leak_cells)
        n_leaked = sum(round(mean * n) for mean, n in leak_cells)
        leakage = n_leaked / n_leak if n_leak else None
        points.append(ScalePoint(scale, task, retention, leakage, n_task, kept, base_correct, n_leak, n_leaked,
                                 knowledge_ret, k_kept, k_base, drift, n_drift))
    return points


def _dominates(a: ScalePoint, b: ScalePoint) -> bool:
    """a is at least as good as b on task, retention and leakage, and better on one."""
    def vals(p: ScalePoint) -> tuple[float, float, float, float]:
        return (p.task if p.task is not None else -math.inf,
                p.retention if p.retention is not None else -math.inf,
                -(p.leakage if p.leakage is not None else math.inf),
                p.knowledge if p.knowledge is not None else -math.inf)

    va, vb = vals(a), vals(b)
    return all(x >= y for x, y in zip(va, vb)) and any(x > y for x, y in zip(va, vb))


def pareto_front(points: Sequence[ScalePoint]) -> list[ScalePoint]:
    """The points no other point beats on all of task score, retention and (lower) leakage, by scale."""
    return [p for p in points if not any(_dominates(q, p) for q in points if q is not p)]


def passes(p: ScalePoint, min_retention: float = MIN_RETENTION, max_leakage: float = MAX_LEAKAGE) -> bool:
    """Retention (of behaviour and of knowledge, each where measured) and leakage within the gates (a figure that was
    not measured does not block here; the release check fails on it)."""
    ok_ret = all(r is None or r >= min_retention for r in (p.retention, p.knowledge))
    ok_leak = p.leakage is None or p.leakage <= max_leakage
    return ok_ret and ok_leak


def recommend(points: Sequence[ScalePoint], min_retention: float = MIN_RETENTION,
              max_leakage: float = MAX_LEAKAGE, blocked: Mapping[float, str] | None = None) -> Recommendation:
    """The non-zero scale with the highest task score whose retention and leakage meet the gates, among the
    scales no release gate failed at (``blocked``: scale -> why, as the sweep judged and stored them; a scale
    recommended there passes ``harness check`` at that scale).

    Ties on the task score go to the smaller scale (less change to the base for the same skill). The
    sentence states the numbers, the counts and a 95% interval on the task score.
    """
    blocked = blocked or {}
    gates = f"retention >= {min_retention:.0%} and leakage <= {max_leakage:.0%}"
    scaled = [p for p in points if p.scale > 0]
    if not scaled:
        return Recommendation(None, None, "no adapter scale was evaluated; nothing to recommend", min_retention, max_leakage)
    if all(p.task is None for p in points):
        # without a task score every scale ties, and the smallest would win by default: a scale the base model
        # itself dominates (it changes nothing it is meant to)
        return Recommendation(None, None, "no task suite was scored, so nothing tells which scale does the task: add a "
                              "suite with role task; no scale is recommended", min_retention, max_leakage)
    within = [p for p in scaled if passes(p, min_retention, max_leakage)]
    if not within:
        worst = ", ".join(f"{p.scale:g}: {_figures(p)}" for p in scaled)
        return Recommendation(None, None, f"no scale meets {gates} ({worst}); do not ship this adapter as it is",
                              min_retention, max_leakage)
    candidates = [p for p in within if not _blocked(blocked, p.scale)]
    if not candidates:
        why = "; ".join(f"{p.scale:g}: {_blocked(blocked, p.scale)}" for p in within)
        return Recommendation(None, None, f"no scale passes the release gates ({why}); do not ship this adapter as it is",
                              min_retention, max_leakage)
    best = max(candidates, key=lambda p: (p.task if p.task is not None else -math.inf, -p.scale))
    base = next((p for p in points if p.scale == 0 and p.task is not None), None)
    if base is None or base.task is None or best.task is None or best.task <= base.task:
        # a scale that keeps retention only by doing no more than the base does is not worth shipping; and with no
        # base task score on the same examples there is nothing to show it does more
        against = f"against the base's {base.task:.1%}" if base is not None and base.task is not None else \
            "and no base-model task score on the same examples to compare with"
        got = f"task score {best.task:.1%}" if best.task is not None else "no task score"
        return Recommendation(None, None,
                              f"no scale that meets {gates} does better on the task than the base model (best: scale "
                              f"{best.scale:g}, {got} {against}; {_figures(best)}); do not ship this adapter as it is",
                              min_retention, max_leakage)
    interval = wilson(round(best.task * best.n_task), best.n_task)
    ci = f" (95% interval {interval.low:.0%}-{interval.high:.0%})" if interval else ""
    passed_over = [p for p in within if _blocked(blocked, p.scale) and (p.task or -math.inf) > (best.task or -math.inf)]
    over = ("; passed over for a failed release gate: " + "; ".join(f"scale {p.scale:g} ({_blocked(blocked, p.scale)})"
                                                                    for p in passed_over)) if passed_over else ""
    unmeasured = [what for what, v in (("retention", best.retention if best.retention is not None else best.knowledge),
                                       ("leakage", best.leakage)) if v is None]
    applied = (f"the highest task score with {gates}" if not unmeasured else
               f"the highest task score; {' and '.join(unmeasured)} not measured, so "
               f"{'that limit was' if len(unmeasured) == 1 else 'those limits were'} not applied (add a general suite"
               f"{' and a task format' if 'leakage' in unmeasured else ''}; a release check fails on it)")
    return Recommendation(best.scale, best,
                          f"ship scale {best.scale:g}: task score {best.task:.1%} over {best.n_task} examples{ci}, "
                          f"{_figures(best)}; {applied}{over}", min_retention, max_leakage)


def _blocked(blocked: Mapping[float, str], scale: float) -> str | None:
    return next((why for s, why in blocked.items() if math.isclose(s, scale)), None)


def _figures(p: ScalePoint) -> str:
    if p.knowledge is None:
        ret = "retention not measured" if p.retention is None else f"retention {p.retention:.1%} ({p.kept}/{p.base_correct})"
    else:
        behaviour = "not measured" if p.retention is None else f"{p.retention:.1%} ({p.kept}/{p.base_correct})"
        ret = (f"retention of knowledge {p.knowledge:.1%} ({p.knowledge_kept}/{p.knowledge_base_correct}) and of "
               f"behaviour {behaviour}")
    leak = "leakage not measured" if p.leakage is None else f"leakage {p.leakage:.1%} ({p.n_leaked}/{p.n_leakage})"
    drift = "" if p.drift is None or p.scale == 0 else f", drift {p.drift:.3f} nats/token"
    return f"{ret}, {leak}{drift}"


def _kept(kept: int, n: int, limit: float) -> str:
    """"kept" (the share reaches the limit), "short" (below it, but the sample cannot rule the limit out: the 95%
    Wilson interval reaches it) or "lost"."""
    if n and kept / n >= limit:
        return "kept"
    interval = wilson(kept, n)
    return "short" if interval is not None and interval.high >= limit else "lost"


def knowledge_or_behaviour(p: ScalePoint, min_retention: float = MIN_RETENTION) -> str | None:
    """At one scale, which of knowledge (likelihood) and behaviour (generation) the adapter kept, in one sentence;
    None when either was not measured. Each is kept (its retention reaches ``min_retention``), short of the limit
    (below it, but within the 95% interval of its sample) or lost; the sentence names the case where the knowledge
    stays while the behaviour breaks. It explains the figures; the gates decide."""
    if p.scale == 0 or p.knowledge is None or p.retention is None:
        return None
    k_state = _kept(p.knowledge_kept, p.knowledge_base_correct, min_retention)
    b_state = _kept(p.kept, p.base_correct, min_retention)
    short = f", short of {min_retention:.0%} but within this sample's 95% interval of it"
    k = (f"knowledge {p.knowledge:.1%} ({p.knowledge_kept}/{p.knowledge_base_correct}) kept by likelihood"
         + (short if k_state == "short" else ""))
    b = (f"behaviour {p.retention:.1%} ({p.kept}/{p.base_correct}) kept when it answers"
         + (short if b_state == "short" else ""))
    leak = f", {p.leakage:.0%} of general answers in the task's format" if p.leakage else ""
    if k_state != "lost" and b_state == "lost":
        return (f"scale {p.scale:g}: the knowledge is still there ({k}) but the behaviour broke ({b}{leak}): the "
                "adapter's format takes over answers the model still knows")
    if k_state == "lost" and b_state == "lost":
        return f"scale {p.scale:g}: knowledge lost ({k}) and behaviour with it ({b}{leak})"
    if k_state == "lost":
        return f"scale {p.scale:g}: knowledge lost ({k}) though the answers still look right ({b})"
    if k_state == "kept" and b_state == "kept":
        return f"scale {p.scale:g}: knowledge ({k}) and behaviour ({b}) both kept"
    return f"scale {p.scale:g}: neither clearly lost ({k}; {b})"


def refine_scales(points: Sequence[ScalePoint], min_retention: float = MIN_RETENTION,
                  max_leakage: float = MAX_LEAKAGE) -> float | None:
    """The midpoint between the last passing and the first failing scale (bisection step), or None
    when there is no boundary to refine (all pass, none pass, or they are already close)."""
    ordered = sorted((p for p in points if p.scale > 0), key=lambda p: p.scale)
    for lo, hi in itertools.pairwise(ordered):
        if passes(lo, min_retention, max_leakage) and not passes(hi, min_retention, max_leakage):
            mid = round((lo.scale + hi.scale) / 2, 4)
            return mid if hi.scale - lo.scale > 0.01 else None
    return None


def diagnose(points: Sequence[ScalePoint], min_retention: float = MIN_RETENTION) -> str | None:
    """``knowledge_or_behaviour`` at the largest evaluated scale (every face shows this one sentence)."""
    scaled = [p for p in points if p.scale > 0]
    return knowledge_or_behaviour(max(scaled, key=lambda p: p.scale), min_retention) if scaled else None


@dataclass(frozen=True)
class SweepView:
    """One adapter's sweep as every face shows it: its points by scale, the Pareto front, the recommendation."""

    adapter_id: str
    label: str
    points: tuple[ScalePoint, ...]
    front: frozenset[float]
    recommendation: Recommendation
    #: scale -> the release gates that failed there (as judged and stored with the run); None: not judged
    blocked: Mapping[float, str] | None = None

    @property
    def diagnosis(self) -> str | None:
        """At the largest scale, which of knowledge and behaviour the adapter kept (``knowledge_or_behaviour``), under
        the run's retention limit; None when the run did not measure both."""
        return diagnose(self.points, self.recommendation.min_retention)

    @property
    def measured(self) -> frozenset[str]:
        """Which optional columns any scale measured: "knowledge", "drift"."""
        return frozenset(k for k, on in (("knowledge", any(p.knowledge is not None for p in self.points)),
                                         ("drift", any(p.drift is not None and p.scale > 0 for p in self.points))) if on)

    def gate_mark(self, scale: float) -> str:
        """The scale's release-gate outcome for the sweep's table: "pass", "FAIL name, name", or "" (not judged)."""
        if self.blocked is None or scale == 0:
            return ""
        why = _blocked(self.blocked, scale)
        if why is None:
            return "pass"
        names = why.removeprefix("fails ").split(" -- ", 1)[0].split(", ")
        return "FAIL " + ", ".join(dict.fromkeys(n.split("[", 1)[0] for n in names))


def sweep_views(c: Comparison, adapter_ids: Sequence[str], limits: Limits,
                blocked: Mapping[str, Mapping[float, str]] | None = None) -> list[SweepView]:
    """Per adapter, its curve, front and the one recommendation under ``limits`` (the run's, ``run_limits``) and
    the scales its release gates blocked (the run's, ``run_blocked``)."""
    out = []
    for aid in adapter_ids:
        points = curve(c, aid)
        label = next((x.target.rsplit("@", 1)[0] for x in c.cells if x.adapter_id == aid), aid[:12])
        out.append(SweepView(aid, label, tuple(points), frozenset(p.scale for p in pareto_front(points)),
                             recommend(points, *limits, blocked=(blocked or {}).get(aid)),
                             dict((blocked or {}).get(aid) or {}) if blocked is not None else None))
    return out

