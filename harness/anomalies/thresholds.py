"""The thresholds of the anomaly rules, grouped by rule, each with the reasoning behind its value.

Each is a named constant so that a false alarm can be traced to one number. The rules read them from
here (``harness.anomalies.breakage``, ``.stability``, ``.fitting``, the helpers in ``.series``);
``harness.anomalies.rules`` re-exports them.
"""

#: A loss at or below this counts as "zero" (the Trainer rounds to 4 decimals, so a collapsed loss
#: reads 0.0; healthy runs almost never log 0.0000).
ZERO_LOSS_EPS = 5e-4
#: A zero loss must persist this many consecutive train logs (or to the end of the log) to count.
ZERO_RUN_MIN = 3
#: ...and be reached before this epoch to be a collapse (later it is memorisation, or nothing).
ZERO_COLLAPSE_MAX_EPOCH = 1.0
#: ...after at least one earlier loss above this (a loss that is 0 from the first log is
#: "no token supervised", reported as no_learning).
ZERO_COLLAPSE_MIN_PRIOR = 0.05

#: A loss below this is negative (cross-entropy cannot be); -0.0 and rounding noise are not.
NEGATIVE_LOSS_TOL = -1e-4

#: grad_norm exactly 0 on the first this-many train logs means no trainable signal (labels masked).
ZERO_GRAD_START_ROWS = 3
#: Loss identical (to this absolute tolerance) over at least FLAT_LOSS_MIN_ROWS logs: nothing changes.
FLAT_LOSS_TOL = 1e-4
FLAT_LOSS_MIN_ROWS = 10

#: Rolling-median window (train logs) used to smooth the loss for the trend rules.
SMOOTH_WINDOW_MIN = 5
SMOOTH_WINDOW_FRAC = 0.05  # of the segment's length, if larger than the minimum

#: Spike: loss above both SPIKE_RATIO x the median of the previous SPIKE_WINDOW logs and
#: SPIKE_Z robust standard deviations (MAD-based, floored at SPIKE_MIN_REL_SCALE of the level)
#: above it, and back within SPIKE_RECOVER_RATIO of that median in SPIKE_RECOVER_ROWS logs.
SPIKE_WINDOW = 10
SPIKE_RATIO = 1.5
SPIKE_Z = 8.0
SPIKE_MIN_REL_SCALE = 0.03
SPIKE_RECOVER_ROWS = 10
SPIKE_RECOVER_RATIO = 1.25
SPIKE_MAX_REPORTED = 3

#: Divergence: the smoothed loss ends at least DIVERGE_RATIO x (and DIVERGE_MIN_ABS above) its
#: minimum, with the last DIVERGE_TAIL_ROWS raw logs all above DIVERGE_TAIL_RATIO x that minimum.
#: The minimum includes the run's start (START_ROWS), so a loss that rises from its first step and
#: never comes back is judged against where it started, not against the damaged part.
DIVERGE_RATIO = 1.5
DIVERGE_MIN_ABS = 0.15
DIVERGE_TAIL_ROWS = 5
DIVERGE_TAIL_RATIO = 1.3
#: ...or, recovered or not, the smoothed loss stays at least DIVERGE_START_RATIO x (and DIVERGE_MIN_ABS
#: above) the run's start for DIVERGE_TAIL_ROWS consecutive logs: training makes the loss fall from where
#: it started; a sustained climb to double the start is the optimiser blowing up, whatever happens later.
#: (Higher than DIVERGE_RATIO: an excursion that came back must stand clear of a noisy start.) The start
#: is estimated from START_ROWS logs, each as noisy as the run's batch-to-batch noise (the typical relative
#: deviation from the running median, as the fluctuation rule measures it), so the bar is raised by
#: exp(DIVERGE_START_NOISE_Z x noise): ~1.1x for a healthy 5% noise, ~2.5x for a 45% one.
#: The start is the lower of the first logged value and the median of the first START_ROWS logs (a
#: blow-up can only raise the early values; it cannot lower the first one).
START_ROWS = 3
DIVERGE_START_RATIO = 2.0
DIVERGE_START_NOISE_Z = 2.0

#: Gradient explosion: grad_norm above GRAD_EXPLOSION_FACTOR x the segment's reference grad norm and
#: above GRAD_EXPLOSION_MIN_ABS. The reference is the lower of the segment's median and its start
#: (as for the loss: the first value, or the median of the first START_ROWS), so an explosion that
#: lasts most of the run cannot set its own baseline. Sustained (GRAD_EXPLOSION_RUN consecutive logs,
#: or the run ends there, or one value above GRAD_EXPLOSION_HUGE_FACTOR x the reference) is an error;
#: isolated a warning.
#: When the run's max_grad_norm is known (> 0), the expected scale is the clipping threshold: pre-clip
#: grad norms above GRAD_CLIP_FACTOR x max_grad_norm mean clipping shrinks every update by that much
#: (the LR is far too high); sustained there means GRAD_EXPLOSION_RUN logs in a row, or a median above
#: the limit, or a huge value (one high last log is not enough: in a live check every log is the last).
GRAD_EXPLOSION_FACTOR = 10.0
GRAD_CLIP_FACTOR = 10.0
GRAD_EXPLOSION_MIN_ABS = 10.0
GRAD_EXPLOSION_RUN = 3
GRAD_EXPLOSION_HUGE_FACTOR = 1000.0
#: Non-finite grad norms with a finite loss: the fp16 loss scaler skips such steps, so a few are
#: normal at the start; this many consecutive (or at the end of the log) is an error.
NONFINITE_GRAD_RUN = 3

#: Overfitting (needs OVERFIT_MIN_EVALS eval logs): the last eval loss is OVERFIT_EVAL_RISE above
#: its best (or has not improved on a best reached in the first half), while the train loss fell
#: by OVERFIT_TRAIN_FALL over the same stretch and the eval-train gap widened by OVERFIT_GAP_WIDEN.
OVERFIT_MIN_EVALS = 3
OVERFIT_EVAL_RISE = 0.03
OVERFIT_TRAIN_FALL = 0.05
OVERFIT_GAP_WIDEN = 0.05
#: With the eval set's size N known, the rise must also pass the noise of a mean loss over N rows: a
#: per-example loss spread of OVERFIT_LOSS_CV times the mean (cross-entropies of short answers vary about
#: that much from example to example) and OVERFIT_NOISE_Z standard errors, i.e. a relative rise of
#: Z * CV / sqrt(N): 33% on 9 rows, 10% on 100, 3% (the floor above) from about 1,100.
OVERFIT_LOSS_CV = 0.5
OVERFIT_NOISE_Z = 2.0

#: Memorisation: the train loss ends below MEMO_LOSS after at least MEMO_MIN_EPOCHS epochs, having
#: fallen there from a start above MEMO_MIN_START (a loss that is ~0 from the first log, or with a grad
#: norm of exactly 0, means nothing was supervised: no_learning, not memorisation).
MEMO_LOSS = 0.02
MEMO_MIN_EPOCHS = 2.0
MEMO_MIN_START = 0.1

#: Plateau (underfitting): over a run of at least PLATEAU_MIN_ROWS train logs, the median of the
#: last PLATEAU_EDGE_FRAC of the logs is less than PLATEAU_MIN_REL_DROP below the first's (and
#: neither no_learning nor a loss-breaking error explains it).
PLATEAU_MIN_ROWS = 20
PLATEAU_EDGE_FRAC = 0.2  # wide enough that batch noise does not fake or hide a 5% drop
PLATEAU_MIN_REL_DROP = 0.05

#: Fluctuation: the loss's robust deviation from its rolling median, relative to that median,
#: above FLUCT_REL_NOISE (healthy small-batch runs sit around 0.02-0.10), over FLUCT_MIN_ROWS logs.
FLUCT_REL_NOISE = 0.2
FLUCT_MIN_ROWS = 20
FLUCT_WINDOW = 9
