"""A Trainer callback that runs the anomaly rules on the log so far at every log, and stops on errors.

    trainer = Trainer(..., callbacks=[AnomalyCallback()])
    trainer.train()
    if cb.stop_reason: ...

The rules are those of :func:`harness.anomalies.detect`, applied to ``state.log_history`` (the Trainer
appends each log there before it calls ``on_log``), with the run's ``args.max_grad_norm`` as the expected
scale of the grad norm. An error finding (NaN loss, collapse to 0, no
learning, divergence, sustained gradient explosion, ...) sets ``control.should_training_stop`` unless
``stop_on_error=False``; the Trainer then saves and ends the run as after its last step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from transformers import TrainerCallback

from harness.anomalies import Finding, detect, from_history

logger = logging.getLogger(__name__)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _same_log(row: dict, logs: dict) -> bool:
    """Whether `row` (a log_history entry) is `logs` plus the step the Trainer adds."""
    return all(k in row and _same(row[k], v) for k, v in logs.items())


#: Above this many logged rows the automatic interval between full checks grows with the log.
LONG_LOG = 200


def _urgent(logs: dict | None) -> bool:
    """A log that may be an error by itself: a non-finite or exactly-0 loss or grad norm."""
    for key in ("loss", "grad_norm", "eval_loss"):
        v = (logs or {}).get(key)
        if isinstance(v, (int, float)) and (not math.isfinite(v) or v == 0):
            return True
    return False


def _clip_of(args: object) -> float | None:
    """The run's gradient clipping threshold (TrainingArguments.max_grad_norm; 0 = off), None if unknown."""
    v = getattr(args, "max_grad_norm", None)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


class AnomalyCallback(TrainerCallback):
    """Live anomaly detection. ``findings`` holds the latest findings; ``stop_reason`` the error that stopped the run."""

    def __init__(self, stop_on_error: bool = True, stop_kinds: Iterable[str] | None = None, check_every: int | None = None,
                 eval_size: int | None = None) -> None:
        self.stop_on_error = stop_on_error
        #: rows in the eval set (the overfitting rule's noise); None: unknown
        self.eval_size = eval_size
        #: Run the full rules every this many logs; None: every log for the first LONG_LOG logs, then
        #: every len(log) // LONG_LOG logs (detect is O(len(log))). A log with a NaN/inf or 0 loss or
        #: grad norm is always checked at once.
        self.check_every = check_every
        self._since_check = 0
        #: Warning kinds that should stop the run too (e.g. {"overfitting"}); errors always do if stop_on_error.
        self.stop_kinds = frozenset(stop_kinds or ())
        self.findings: list[Finding] = []
        self.stop_reason: str | None = None
        self._reported: set[tuple[str, str, int | None]] = set()

    def on_log(self, args, state, control, logs=None, **kwargs):
        history = list(state.log_history)
        if logs and not (history and _same_log(history[-1], logs)):
            # Called outside a Trainer (the Trainer appends {**logs, "step": ...} before on_log): judge it too.
            row = dict(logs)
            row.setdefault("step", state.global_step)
            history.append(row)
        if not history:
            return control
        self._since_check += 1
        interval = self.check_every or max(1, len(history) // LONG_LOG)
        if self._since_check < interval and not _urgent(logs):
            return control
        self._since_check = 0
        return self._check(history, control, _clip_of(args))

    def on_train_end(self, args, state, control, **kwargs):
        if state.log_history:
            self.findings = detect(from_history(state.log_history, source="training log", max_grad_norm=_clip_of(args)),
                                   eval_size=self.eval_size)
        return control

    def _check(self, history: list, control, max_grad_norm: float | None = None):
        self.findings = detect(from_history(history, source="live training log", max_grad_norm=max_grad_norm),
                               eval_size=self.eval_size)
        for f in self.findings:
            key = (f.kind, f.severity, f.step)
            if key not in self._reported and f.severity in ("error", "warning"):
                self._reported.add(key)
                (logger.error if f.severity == "error" else logger.warning)("%s at step %s: %s", f.kind, f.step, f.message)
        stoppers = [f for f in self.findings if (f.severity == "error" and self.stop_on_error) or f.kind in self.stop_kinds]
        if stoppers and self.stop_reason is None:
            first = stoppers[0]
            self.stop_reason = f"{first.kind} at step {first.step}: {first.message}"
            control.should_training_stop = True
            logger.error("stopping training: %s", self.stop_reason)
        return control
