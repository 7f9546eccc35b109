"""Anomaly findings from a training loss log (ours, or any Hugging Face ``trainer_state.json``).

``read_log(path)`` turns a log into a :class:`StepLog`; ``detect(log)`` returns a list of
:class:`Finding` ``{kind, severity, step, message}`` (DESIGN.md, "Anomaly finding"). Each message
says what was seen (numbers, steps) and the usual causes and fixes, in the words of DOMAIN.md.

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


from harness.anomalies.logs import (  # noqa: F401
    EPOCH_RESTART_TOL,
    Finding,
    RL_KEYS,
    RL_PREFIXES,
    SUMMARY_KEYS,
    Segment,
    StepLog,
    from_history,
    read_log,
)
from harness.anomalies.rules import (  # noqa: F401
    DIVERGE_MIN_ABS,
    DIVERGE_RATIO,
    DIVERGE_TAIL_RATIO,
    DIVERGE_TAIL_ROWS,
    FLAT_LOSS_MIN_ROWS,
    FLAT_LOSS_TOL,
    FLUCT_MIN_ROWS,
    FLUCT_REL_NOISE,
    FLUCT_WINDOW,
    GRAD_EXPLOSION_FACTOR,
    GRAD_EXPLOSION_HUGE_FACTOR,
    GRAD_EXPLOSION_MIN_ABS,
    GRAD_EXPLOSION_RUN,
    KINDS,
    MEMO_LOSS,
    MEMO_MIN_EPOCHS,
    NEGATIVE_LOSS_TOL,
    NONFINITE_GRAD_RUN,
    OVERFIT_EVAL_RISE,
    OVERFIT_GAP_WIDEN,
    OVERFIT_MIN_EVALS,
    OVERFIT_TRAIN_FALL,
    PLATEAU_EDGE_FRAC,
    PLATEAU_MIN_REL_DROP,
    PLATEAU_MIN_ROWS,
    SEVERITIES,
    SMOOTH_WINDOW_FRAC,
    SMOOTH_WINDOW_MIN,
    SPIKE_MAX_REPORTED,
    SPIKE_MIN_REL_SCALE,
    SPIKE_RATIO,
    SPIKE_RECOVER_RATIO,
    SPIKE_RECOVER_ROWS,
    SPIKE_WINDOW,
    SPIKE_Z,
    ZERO_COLLAPSE_MAX_EPOCH,
    ZERO_COLLAPSE_MIN_PRIOR,
    ZERO_GRAD_START_ROWS,
    ZERO_LOSS_EPS,
    ZERO_RUN_MIN,
    detect,
    has_errors,
)
