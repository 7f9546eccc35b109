"""Anomaly findings from a training loss log (ours, or any Hugging Face ``trainer_state.json``).

``read_log(path)`` turns a log into a :class:`StepLog`; ``detect(log, max_grad_norm=None)`` returns a list
of :class:`Finding` ``{kind, severity, step, message}`` (DESIGN.md, "Anomaly finding"). Each message
says what was seen (numbers, steps) and the usual causes and fixes, in the words of DOMAIN.md.

Rules judge against the run's start and the expected scale of each quantity, never only against
statistics the anomaly itself can move: a loss that climbs far above where it started is a divergence
even if it later comes back; a grad norm is compared with its early level and, when the run's
``max_grad_norm`` is known (passed to ``detect``, or carried by the log: ``max_grad_norm`` /
``training_args.max_grad_norm`` in the JSON, ``spec.max_grad_norm`` in an adapter's harness.json), with
the clip: pre-clip norms 10x above it are a finding. A zero loss with no gradient is "nothing
supervised" (no_learning), never memorisation.

Kinds (severity): ``nan_inf`` (error), ``zero_collapse`` (error), ``negative_loss`` (error),
``no_learning`` (error), ``divergence`` (error), ``grad_explosion`` (error when sustained, warning
when isolated), ``spike`` (warning), ``overfitting`` (warning), ``memorization`` (warning),
``plateau`` (warning), ``fluctuation`` (warning).

Things real logs do that the rules allow for:

- eval rows (``eval_loss``) are logged as separate rows from train rows (``loss``);
- the last row of a finished run is a summary (``train_loss``, ``train_runtime``), not a step;
- a resumed or restarted run can restart ``epoch`` / ``step`` / the LR schedule mid-log: the log is
  split into segments there, and no rule compares across the restart;
- old logs lack ``grad_norm`` (or ``epoch``); rules that need a key skip when it is missing;
- the Trainer rounds ``loss`` to 4 decimals, so "exactly 0" and "flat" are judged at that precision;
- the Trainer logs a non-finite step loss as ``0.0``: a loss of 0.0 beside a NaN/inf ``grad_norm``
  is a NaN loss in disguise;
- RL runs (GRPO/PPO/RLOO/online DPO: ``reward``, ``kl``, ``rewards/...``, ``objective/...`` keys)
  have a loss near 0 or negative by design, so the loss-shape rules do not run on them.

This module never prints (DESIGN.md); the ``anomalies`` command and the training callback report.
"""


from harness.anomalies.logs import Finding, Segment, StepLog, from_history, read_log
from harness.anomalies.rules import KINDS, SEVERITIES, detect, has_errors

# The reading rules are in .logs; the detectors by family in .breakage, .stability and .fitting, run
# by .rules (detect); their thresholds are named constants in .thresholds (re-exported by .rules).
__all__ = ["KINDS", "SEVERITIES", "Finding", "Segment", "StepLog", "detect", "from_history", "has_errors", "read_log"]
