"""The rule registry: the kinds and severities of findings, and ``detect``, which runs every rule over
the segments of a :class:`StepLog` and settles their overlaps.

The rules themselves live by family: ``harness.anomalies.breakage`` (``nan_inf``, ``zero_collapse``,
``negative_loss``, ``no_learning``), ``.stability`` (``divergence``, ``spike``, ``grad_explosion``,
``fluctuation``) and ``.fitting`` (``overfitting``, ``memorization``, ``plateau``); what they read from a
segment is in ``.series``, their thresholds in ``.thresholds`` (re-exported here, where they were first
defined). ``detect`` decides what runs on which log (no loss-shape rules on RL runs; no spikes inside a
divergence or a noisy loss; a plateau only when no loss-breaking error explains it) and the order.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.anomalies.breakage import _rule_no_learning, _rule_nonfinite, _rule_zero_and_negative
from harness.anomalies.fitting import _rule_memorization, _rule_overfitting, _rule_plateau
from harness.anomalies.logs import Finding, StepLog
from harness.anomalies.series import _where
from harness.anomalies.stability import _rule_fluctuation, _rule_grad_explosion, _rule_spikes_divergence
from harness.anomalies.thresholds import *  # noqa: F403  (every threshold, importable from here as before)

SEVERITIES = ("error", "warning", "info")
KINDS = (
    "nan_inf", "zero_collapse", "negative_loss", "no_learning", "spike", "divergence",
    "grad_explosion", "overfitting", "memorization", "plateau", "fluctuation",
)


def detect(log: StepLog, max_grad_norm: float | None = None, eval_size: int | None = None) -> list[Finding]:
    """All anomaly findings for a parsed log, errors first, then by step.

    ``max_grad_norm``: the run's clipping threshold (``TrainingArguments.max_grad_norm``; 0 = off) when
    known; defaults to what the log carries (``log.max_grad_norm``). With it, grad norms are also judged
    against the clip, their expected scale. ``eval_size``: how many held-out rows each eval loss averages
    (defaults to ``log.eval_size``); an eval-loss rise within that mean's noise is not overfitting."""
    clip = max_grad_norm if max_grad_norm is not None else log.max_grad_norm
    n_eval = eval_size if eval_size is not None else log.eval_size
    findings: list[Finding] = []
    nseg = len(log.segments)
    train_segments = [s for s in log.segments if s.train]
    for seg in log.segments:
        tag = _where(seg, nseg)
        findings += _rule_nonfinite(seg, tag, log.is_rl)
        findings += _rule_no_learning(seg, tag, log.is_rl, first_segment=seg is (train_segments[0] if train_segments else None))
        findings += _rule_grad_explosion(seg, tag, clip)
        if log.is_rl:
            continue  # RL losses sit near 0 or below by design: no loss-shape rules
        findings += _rule_zero_and_negative(seg, tag)
        fluct = _rule_fluctuation(seg, tag)
        shape = _rule_spikes_divergence(seg, tag)
        if fluct:  # in a loss this noisy, single high values are the noise itself, not spikes
            shape = [f for f in shape if f.kind != "spike"]
        if any(f.kind == "divergence" for f in shape):  # the blow-up's own jumps are not separate findings
            shape = [f for f in shape if f.kind != "spike"]
            fluct = []
        findings += shape + fluct
        findings += _rule_overfitting(seg, tag, n_eval)
        findings += _rule_memorization(seg, tag)
    kinds = {f.kind for f in findings}
    if not log.is_rl and not kinds & {"no_learning", "nan_inf", "divergence", "zero_collapse", "negative_loss"}:
        findings += _rule_plateau(train_segments)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order.get(f.severity, 9), f.step if f.step is not None else -1))


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)
