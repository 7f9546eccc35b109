"""The detectors: one rule per anomaly kind, over the segments of a :class:`StepLog`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from harness.anomalies.logs import Finding, Segment, StepLog, _is_rl_key

# --------------------------------------------------------------------------------------------
# Thresholds. Each is a named constant so that a false alarm can be traced to one number.
# --------------------------------------------------------------------------------------------

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

SEVERITIES = ("error", "warning", "info")
KINDS = (
    "nan_inf", "zero_collapse", "negative_loss", "no_learning", "spike", "divergence",
    "grad_explosion", "overfitting", "memorization", "plateau", "fluctuation",
)



# --------------------------------------------------------------------------------------------
# Detection helpers
# --------------------------------------------------------------------------------------------


def _col(rows: Sequence[Mapping[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(values with NaN where missing, mask of rows where the key is present)."""
    present = np.array([key in r for r in rows], dtype=bool)
    vals = np.array([r.get(key, math.nan) for r in rows], dtype=float)
    return vals, present


def _steps(rows: Sequence[Mapping[str, float]]) -> list[int | None]:
    out: list[int | None] = []
    for r in rows:
        s = r.get("step")
        out.append(int(s) if s is not None and math.isfinite(s) else None)
    return out


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.4g}"


def _rolling_median(x: np.ndarray, window: int, centered: bool = False) -> np.ndarray:
    """Median over a trailing (or centered) window; the edges use the part of the window that exists."""
    n = len(x)
    out = np.empty(n)
    if n == 0:
        return out
    half = window // 2
    lo_of = (lambda i: max(0, i - half)) if centered else (lambda i: max(0, i - window + 1))
    hi_of = (lambda i: min(n, i + half + 1)) if centered else (lambda i: i + 1)
    full = 2 * half + 1 if centered else window
    if n >= full:
        mids = np.median(np.lib.stride_tricks.sliding_window_view(x, full), axis=1)
        first = half if centered else window - 1
        out[first:first + len(mids)] = mids
        edges = list(range(first)) + list(range(first + len(mids), n))
    else:
        edges = list(range(n))
    for i in edges:
        out[i] = np.median(x[lo_of(i):hi_of(i)])
    return out


def _start_level(x: np.ndarray) -> float:
    """The run's starting level of a quantity: the lower of its first value and the median of its first START_ROWS."""
    return float(min(x[0], np.median(x[:START_ROWS])))


def _where(seg: Segment, n_segments: int) -> str:
    return f" (segment {seg.index + 1} of {n_segments}, after a restart of the epoch/step counter)" if seg.index > 0 else ""


def _step_label(step: int | None) -> str:
    return f"step {step}" if step is not None else "an unnumbered log"


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def _rule_nonfinite(seg: Segment, tag: str, is_rl: bool) -> list[Finding]:
    rows = seg.train
    out: list[Finding] = []
    steps = _steps(rows)
    loss, has_loss = _col(rows, "loss")
    gn, has_gn = _col(rows, "grad_norm")
    bad_loss = has_loss & ~np.isfinite(loss)
    bad_gn = has_gn & ~np.isfinite(gn)
    hidden = has_loss & (loss == 0.0) & bad_gn & (not is_rl)
    if bad_loss.any():
        i = int(np.argmax(bad_loss))
        out.append(Finding("nan_inf", "error", steps[i],
            f"loss is {_fmt(loss[i])} from {_step_label(steps[i])}{tag} ({int(bad_loss.sum())} of {len(rows)} train logs non-finite). "
            "Usual causes: fp16 overflow, a learning rate too high, no gradient clipping, a bad batch. Fixes: use bf16 "
            "(or fp32) instead of fp16, lower the LR, set max_grad_norm 0.3-1.0, check the data for empty or broken examples."))
    if hidden.any():
        i = int(np.argmax(hidden))
        out.append(Finding("nan_inf", "error", steps[i],
            f"hidden NaN: loss logged as exactly 0.0 with grad_norm {_fmt(gn[i])} from {_step_label(steps[i])}{tag} "
            f"({int(hidden.sum())} logs); the HF Trainer logs a non-finite step loss as 0.0, so the loss was really NaN/inf. "
            "Usual causes: fp16 overflow, LR too high, no clipping. Fixes: bf16 instead of fp16, lower the LR (e.g. 4e-6 on a "
            "large model), max_grad_norm 0.3, check labels and special tokens."))
    rest = bad_gn & ~hidden & ~bad_loss
    if rest.any():
        idx = np.flatnonzero(rest)
        longest, cur, start_of_longest = 0, 0, int(idx[0])
        prev = -2
        for j in idx:
            cur = cur + 1 if j == prev + 1 else 1
            if cur > longest:
                longest, start_of_longest = cur, int(j) - cur + 1
            prev = int(j)
        at_end = bool(rest[-1])
        first = int(idx[0])
        if longest >= NONFINITE_GRAD_RUN or at_end:
            i = start_of_longest if longest >= NONFINITE_GRAD_RUN else int(idx[-1])
            out.append(Finding("nan_inf", "error", steps[i],
                f"grad_norm is {_fmt(gn[i])} on {int(rest.sum())} train logs{tag}, {longest} in a row from {_step_label(steps[i])}"
                f"{' and still at the last log' if at_end else ''}: the updates are being skipped or are garbage. Fixes: bf16 "
                "instead of fp16, lower the LR, max_grad_norm 0.3-1.0, check for broken examples."))
        else:
            out.append(Finding("nan_inf", "warning", steps[first],
                f"grad_norm non-finite on {int(rest.sum())} isolated train logs{tag} (first at {_step_label(steps[first])}) with a "
                "finite loss: usually the fp16 loss scaler skipping overflowing steps. Harmless if rare; bf16 avoids it."))
    # Eval loss and RL metrics.
    for key_rows, label in ((seg.eval, "eval_loss"),):
        ev, has_ev = _col(key_rows, label)
        bad = has_ev & ~np.isfinite(ev)
        if bad.any():
            i = int(np.argmax(bad))
            st = _steps(key_rows)[i]
            out.append(Finding("nan_inf", "error", st,
                f"eval_loss is {_fmt(ev[i])} at {_step_label(st)}{tag}: the model's outputs are non-finite. Fixes: bf16 "
                "instead of fp16 (also for evaluation), lower the LR, max_grad_norm 0.3-1.0."))
    if is_rl:
        keys = sorted({k for r in rows for k in r if _is_rl_key(k)})
        for k in keys:
            v, has = _col(rows, k)
            bad = has & ~np.isfinite(v)
            if bad.any():
                i = int(np.argmax(bad))
                out.append(Finding("nan_inf", "error", steps[i],
                    f"{k} is {_fmt(v[i])} from {_step_label(steps[i])}{tag}. Usual causes in RL runs: a reward function returning "
                    "NaN/None, a KL blow-up from a too high LR, fp16. Fixes: check the reward functions, lower the LR, bf16."))
                break
    return out


def _finite_loss(seg: Segment) -> tuple[np.ndarray, list[int | None], np.ndarray]:
    """Finite train losses of a segment (excluding hidden-NaN zeros), their steps, and epochs."""
    rows = seg.train
    loss, has = _col(rows, "loss")
    gn, has_gn = _col(rows, "grad_norm")
    hidden = has & (loss == 0.0) & has_gn & ~np.isfinite(gn)
    keep = has & np.isfinite(loss) & ~hidden
    steps = [s for s, k in zip(_steps(rows), keep) if k]
    ep, _ = _col(rows, "epoch")
    return loss[keep], steps, ep[keep]


def _rule_zero_and_negative(seg: Segment, tag: str) -> list[Finding]:
    out: list[Finding] = []
    loss, steps, ep = _finite_loss(seg)
    n = len(loss)
    if n == 0:
        return out
    neg = loss < NEGATIVE_LOSS_TOL
    if neg.any():
        i = int(np.argmax(neg))
        out.append(Finding("negative_loss", "error", steps[i],
            f"loss is negative ({_fmt(loss[i])}) from {_step_label(steps[i])}{tag}, minimum {_fmt(float(loss.min()))}; "
            "cross-entropy cannot be below 0. Usual causes: a custom loss or label-smoothing bug, wrong sign, labels out of "
            "range. Fixes: check compute_loss and the labels (-100 for masked tokens), compare with the stock Trainer loss."))
    zero = np.abs(loss) <= ZERO_LOSS_EPS
    if zero.any():
        i = int(np.argmax(zero))
        run_len = 0
        while i + run_len < n and zero[i + run_len]:
            run_len += 1
        persistent = run_len >= ZERO_RUN_MIN or i + run_len == n
        prior_high = i > 0 and float(loss[:i].max()) > ZERO_COLLAPSE_MIN_PRIOR
        epoch = ep[i]
        early = not math.isfinite(epoch) or epoch < ZERO_COLLAPSE_MAX_EPOCH
        if persistent and prior_high and early:
            when = f"epoch {epoch:.2f}" if math.isfinite(epoch) else "an unknown epoch"
            out.append(Finding("zero_collapse", "error", steps[i],
                f"loss fell from {_fmt(float(loss[:i].max()))} to {_fmt(float(loss[i]))} at {_step_label(steps[i])} ({when}){tag} "
                f"and stayed there for {run_len} logs: a collapse, not learning. Usual causes: LR too high, no gradient "
                "clipping, fp16 overflow, broken special tokens or labels (e.g. the answer masked or leaked). Fixes: a much "
                "lower LR (e.g. 4e-6), max_grad_norm 0.3, bf16, check the data pipeline and label masking."))
    return out


def _rule_no_learning(seg: Segment, tag: str, is_rl: bool, first_segment: bool) -> list[Finding]:
    out: list[Finding] = []
    rows = seg.train
    if not rows:
        return out
    steps = _steps(rows)
    gn, has_gn = _col(rows, "grad_norm")
    gvals = gn[has_gn]
    if first_segment and len(gvals) > 0:
        k = min(ZERO_GRAD_START_ROWS, len(gvals))
        if np.all(gvals[:k] == 0.0):
            nz = int(np.sum(gvals == 0.0))
            out.append(Finding("no_learning", "error", steps[int(np.argmax(has_gn))],
                f"grad_norm is exactly 0 from the first log{tag} ({nz} of {len(gvals)} logs): no token is supervised or nothing "
                "is trainable. Usual causes: all labels masked (-100), e.g. a completion-only collator or chat template that "
                "never finds the response marker, or sequences truncated before the answer; an adapter loaded frozen. Fixes: "
                "check that some labels are not -100, the response template, max sequence length, and load a saved adapter "
                "with is_trainable=True."))
    lr, has_lr = _col(rows, "learning_rate")
    lrv = lr[has_lr]
    if len(lrv) >= 2 and np.all(lrv == 0.0):
        out.append(Finding("no_learning", "error", steps[int(np.argmax(has_lr))],
            f"learning_rate is 0 on all {len(lrv)} logged steps{tag}: the weights never change. Usual causes: a scheduler "
            "that ends at 0 before training starts (warmup longer than the run, max_steps mismatch), LR set to 0 in the "
            "config. Fixes: set learning_rate (5e-5 to 2e-4 for LoRA) and check warmup_steps against the run's length."))
    if not is_rl:
        loss, lsteps, _ = _finite_loss(seg)
        if len(loss) >= FLAT_LOSS_MIN_ROWS and float(loss.max() - loss.min()) <= FLAT_LOSS_TOL and not out:
            out.append(Finding("no_learning", "error", lsteps[0],
                f"loss is {_fmt(float(loss[0]))} on all {len(loss)} logs from {_step_label(lsteps[0])} to "
                f"{_step_label(lsteps[-1])}{tag}, not even batch-to-batch noise: the loss is not computed from the data "
                "(labels all masked, a constant returned) or nothing trains. Fixes: check the labels and the collator, "
                "that the adapter is trainable (is_trainable=True), and the learning rate."))
    return out


def _smooth(loss: np.ndarray) -> np.ndarray:
    w = max(SMOOTH_WINDOW_MIN, int(len(loss) * SMOOTH_WINDOW_FRAC))
    return _rolling_median(loss, w)


def _rule_spikes_divergence(seg: Segment, tag: str) -> list[Finding]:
    out: list[Finding] = []
    loss, steps, _ = _finite_loss(seg)
    n = len(loss)
    if n < SPIKE_WINDOW + 2:
        return out
    # Divergence first: a sustained rise is not a spike.
    sm = _smooth(loss)
    start = _start_level(loss)
    skip = min(SMOOTH_WINDOW_MIN, n // 4)  # the smoother's first values see too few points
    m = skip + int(np.argmin(sm[skip:]))
    lo = float(sm[m])
    if start < lo:  # the loss never went below where it started: the start is the minimum
        m, lo = 0, start
    end = float(sm[-1])
    tail = loss[-DIVERGE_TAIL_ROWS:]
    diverged = (lo > 0 and end >= lo * DIVERGE_RATIO and end - lo >= DIVERGE_MIN_ABS and m < n - DIVERGE_TAIL_ROWS
                and bool(np.all(tail >= lo * DIVERGE_TAIL_RATIO)))
    fixes = ("Usual causes: LR too high for the setup, no gradient clipping, fp16 overflow. Fixes: lower the LR (2-10x), "
             "max_grad_norm 0.3-1.0, bf16, warmup of 5-10% of steps; resume from the checkpoint before the rise.")
    if diverged:
        # Where the rise starts: the last time the smoothed loss was near its minimum.
        near = np.flatnonzero(sm[: n] <= lo * 1.1)
        start_i = int(near[near >= m][-1]) if len(near[near >= m]) else m
        where_min = (f"started at {_fmt(lo)} ({_step_label(steps[0])}) and never went lower" if m == 0 else
                     f"reached {_fmt(lo)} around {_step_label(steps[m])}")
        out.append(Finding("divergence", "error", steps[start_i],
            f"loss diverges{tag}: it {where_min}, then rose to {_fmt(end)} by {_step_label(steps[-1])} ({end / lo:.1f}x "
            f"{'its start' if m == 0 else 'its minimum'}; first logged loss {_fmt(float(loss[0]))}). " + fixes))
    elif start > 0:
        bar = DIVERGE_START_RATIO * math.exp(DIVERGE_START_NOISE_Z * _rel_noise(loss))
        above = (sm >= start * bar) & (sm - start >= DIVERGE_MIN_ABS)
        run_start, run_len, best_start, best_len = 0, 0, 0, 0
        for i, a in enumerate(above):
            run_len = run_len + 1 if a else 0
            if run_len == 1:
                run_start = i
            if run_len > best_len:
                best_start, best_len = run_start, run_len
        if best_len >= DIVERGE_TAIL_ROWS:
            b_end = best_start + best_len - 1
            peak = best_start + int(np.argmax(loss[best_start:b_end + 1]))
            back = np.flatnonzero(sm[b_end + 1:] < start)
            after = (f"it came back below its start only at {_step_label(steps[b_end + 1 + int(back[0])])} and ends at "
                     f"{_fmt(end)}, but the weights went through the blow-up" if len(back) else
                     f"it ends at {_fmt(end)} ({end / start:.1f}x its start)")
            out.append(Finding("divergence", "error", steps[best_start],
                f"loss rose far above its start{tag}: from {_fmt(start)} at the start to {_fmt(float(loss[peak]))} at "
                f"{_step_label(steps[peak])} ({float(loss[peak]) / start:.1f}x), above {bar:.1f}x the start for "
                f"{best_len} logs from {_step_label(steps[best_start])} to {_step_label(steps[b_end])}; {after}. Training "
                "should make the loss fall from where it starts; this is the optimiser overshooting. " + fixes))
    spikes: list[tuple[int, float, float, int | None]] = []
    # Median and MAD of the SPIKE_WINDOW logs before each log i >= SPIKE_WINDOW (vectorised).
    windows = np.lib.stride_tricks.sliding_window_view(loss[:-1], SPIKE_WINDOW)
    bases = np.median(windows, axis=1)
    mads = np.median(np.abs(windows - bases[:, None]), axis=1) * 1.4826
    i = SPIKE_WINDOW
    while i < n:
        base, mad = float(bases[i - SPIKE_WINDOW]), float(mads[i - SPIKE_WINDOW])
        scale = max(mad, abs(base) * SPIKE_MIN_REL_SCALE, 1e-6)
        if base > 0 and loss[i] > base * SPIKE_RATIO and (loss[i] - base) / scale > SPIKE_Z:
            rec = None
            for j in range(i + 1, min(n, i + 1 + SPIKE_RECOVER_ROWS)):
                if loss[j] <= base * SPIKE_RECOVER_RATIO:
                    rec = j
                    break
            if rec is not None:
                peak = i + int(np.argmax(loss[i:rec]))
                spikes.append((peak, float(loss[peak]), base, steps[rec]))
                i = rec + 1
                continue
        i += 1
    for peak, val, base, rec_step in spikes[:SPIKE_MAX_REPORTED]:
        out.append(Finding("spike", "warning", steps[peak],
            f"loss spiked to {_fmt(val)} at {_step_label(steps[peak])}{tag} from a recent median of {_fmt(base)} "
            f"({val / base:.1f}x) and recovered by {_step_label(rec_step)}. Usual causes: a bad or unusually long batch, the "
            "LR peak right after warmup, fp16 overflow. Fixes: inspect the examples of that step, longer warmup or lower "
            "LR, max_grad_norm 0.3-1.0, bf16."))
    if len(spikes) > SPIKE_MAX_REPORTED:
        out.append(Finding("spike", "warning", steps[spikes[SPIKE_MAX_REPORTED][0]],
            f"{len(spikes) - SPIKE_MAX_REPORTED} more loss spikes{tag} after these (total {len(spikes)})."))
    return out


def _rule_grad_explosion(seg: Segment, tag: str, max_grad_norm: float | None = None) -> list[Finding]:
    rows = seg.train
    gn, has = _col(rows, "grad_norm")
    steps = _steps(rows)
    ok = has & np.isfinite(gn)
    if ok.sum() < 5:
        return []
    vals = gn[ok]
    med = float(np.median(vals))
    ref = min(med, _start_level(vals))
    if ref <= 0:
        ref = med  # a grad norm of 0 at the start (LoRA B = 0 gives small, not 0; masked labels: no_learning)
    if ref <= 0:
        return []
    limit = max(GRAD_EXPLOSION_FACTOR * ref, GRAD_EXPLOSION_MIN_ABS)
    clip = max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else None
    by_clip = clip is not None and GRAD_CLIP_FACTOR * clip < limit
    if by_clip and clip is not None:  # by_clip implies a clip
        limit = GRAD_CLIP_FACTOR * clip
    big = ok & (gn > limit)
    if not big.any():
        return []
    idx = np.flatnonzero(big)
    longest, cur, start_longest, prev = 0, 0, int(idx[0]), -2
    for j in idx:
        cur = cur + 1 if j == prev + 1 else 1
        if cur > longest:
            longest, start_longest = cur, int(j) - cur + 1
        prev = int(j)
    peak = int(idx[np.argmax(gn[idx])])
    last_ok = int(np.flatnonzero(ok)[-1])
    at_end = bool(big[last_ok])
    if by_clip:  # a scale judgement: the excess must last (or be the run's typical value), not be one last log
        sustained = longest >= GRAD_EXPLOSION_RUN or med > limit or gn[peak] > GRAD_EXPLOSION_HUGE_FACTOR * ref
    else:
        sustained = longest >= GRAD_EXPLOSION_RUN or at_end or gn[peak] > GRAD_EXPLOSION_HUGE_FACTOR * ref
    first = start_longest if longest >= GRAD_EXPLOSION_RUN else int(idx[0])
    scale = (f"{gn[peak] / clip:.0f}x your max_grad_norm of {_fmt(clip)} (the run's median {_fmt(med)} is "
             f"{med / clip:.1f}x it)" if by_clip and clip is not None else
             f"{gn[peak] / ref:.0f}x the run's {'early level' if ref < med else 'median'} of {_fmt(ref)}")
    what = (f"grad_norm reached {_fmt(float(gn[peak]))} at {_step_label(steps[peak])}{tag}, {scale}; {int(big.sum())} "
            f"logs above {_fmt(limit)}"
            f"{f', {longest} in a row from {_step_label(steps[first])}' if longest > 1 else ''}"
            f"{', still at the last log' if at_end else ''}. ")
    if by_clip:
        what += ("Clipping keeps each update at max_grad_norm, so the steps taken are a small fraction of the gradient "
                 "and their direction is dominated by the blow-up. ")
    elif max_grad_norm == 0:
        what += "Gradient clipping is off (max_grad_norm 0). "
    if sustained:
        return [Finding("grad_explosion", "error", steps[first], what +
            "Usual causes: LR too high, no gradient clipping, fp16 overflow, long sequences with a large rank. Fixes: "
            "lower the LR (2-10x), max_grad_norm 0.3-1.0, bf16, warmup 5-10% of steps.")]
    return [Finding("grad_explosion", "warning", steps[first], what +
        "Isolated: a bad batch or the LR peak; clipping (max_grad_norm 0.3-1.0) keeps one such step from doing harm.")]


def _train_loss_at(seg: Segment, step: float, window: int = 5) -> float:
    """Median of the finite train losses logged at or up to `window` logs before `step`."""
    loss, steps, _ = _finite_loss(seg)
    idx = [i for i, s in enumerate(steps) if s is not None and s <= step]
    if not idx:
        return math.nan
    last = idx[-1]
    return float(np.median(loss[max(0, last - window + 1): last + 1]))


def _rule_overfitting(seg: Segment, tag: str) -> list[Finding]:
    ev_rows = [r for r in seg.eval if math.isfinite(r.get("eval_loss", math.nan)) and r.get("step") is not None]
    if len(ev_rows) < OVERFIT_MIN_EVALS:
        return []
    ev = np.array([r["eval_loss"] for r in ev_rows])
    est = [r["step"] for r in ev_rows]
    b = int(np.argmin(ev))
    last = len(ev) - 1
    if b == last:
        return []
    rose = ev[last] >= ev[b] * (1 + OVERFIT_EVAL_RISE)
    stalled = b <= last // 2 and ev[last] >= ev[b]
    if not (rose or stalled):
        return []
    tr_b, tr_last = _train_loss_at(seg, est[b]), _train_loss_at(seg, est[last])
    if not (math.isfinite(tr_b) and math.isfinite(tr_last)):
        return []
    if tr_last > tr_b * (1 - OVERFIT_TRAIN_FALL):
        return []  # train loss not falling: not overfitting (maybe divergence, reported elsewhere)
    gap_b, gap_last = ev[b] - tr_b, ev[last] - tr_last
    if gap_last <= 0 or gap_last - gap_b < OVERFIT_GAP_WIDEN:  # train must end below eval, and pull away
        return []
    ep = ev_rows[b].get("epoch")
    ep_txt = f", epoch {ep:.2f}" if ep is not None and math.isfinite(ep) else ""
    return [Finding("overfitting", "warning", int(est[b]),
        f"eval loss was best at {_fmt(float(ev[b]))} (step {int(est[b])}{ep_txt}) and is {_fmt(float(ev[last]))} at step "
        f"{int(est[last])}{tag}, while the train loss fell from {_fmt(tr_b)} to {_fmt(tr_last)}; the eval-train gap widened "
        f"from {_fmt(gap_b)} to {_fmt(gap_last)}. Fixes: keep the checkpoint of step {int(est[b])} "
        "(load_best_model_at_end / early stopping), fewer epochs, more or more varied data, more regularisation "
        "(lora_dropout 0.05-0.1, weight decay), a lower r.")]


def _rule_memorization(seg: Segment, tag: str) -> list[Finding]:
    loss, steps, ep = _finite_loss(seg)
    if len(loss) < 5:
        return []
    fin_ep = ep[np.isfinite(ep)]
    if len(fin_ep) == 0 or float(fin_ep.max()) < MEMO_MIN_EPOCHS:
        return []
    tail = loss[-max(3, len(loss) // 20):]
    end = float(np.median(tail))
    if end >= MEMO_LOSS or end < NEGATIVE_LOSS_TOL:  # a negative loss is reported as negative_loss
        return []
    if _start_level(loss) <= MEMO_MIN_START:
        return []  # ~0 from the start: nothing was supervised (no_learning), nothing was memorised
    gn, has_gn = _col(seg.train, "grad_norm")
    if has_gn.any() and np.all(gn[has_gn] == 0.0):
        return []  # no gradient ever: the zero loss is masked labels, not a learnt training set
    below = np.flatnonzero(_smooth(loss) < MEMO_LOSS)
    i = int(below[0]) if len(below) else len(loss) - 1
    return [Finding("memorization", "warning", steps[i],
        f"train loss is {_fmt(end)} at the end{tag}, after {float(fin_ep.max()):.1f} epochs (below {MEMO_LOSS} from "
        f"{_step_label(steps[i])}, epoch {ep[i]:.2f}): the adapter has memorised the training set. Check held-out accuracy "
        "and general knowledge (retention, format leakage). Fixes: 1-3 epochs, early stopping on an eval set, more data, "
        "lower r, dropout / weight decay.")]


def _rule_plateau(train_segments: Sequence[Segment]) -> list[Finding]:
    segs = [s for s in train_segments if s.train]
    parts = [_finite_loss(s) for s in segs]
    loss = np.concatenate([p[0] for p in parts]) if parts else np.array([])
    steps = [s for p in parts for s in p[1]]
    n = len(loss)
    if n < PLATEAU_MIN_ROWS:
        return []
    k = max(5, int(n * PLATEAU_EDGE_FRAC))
    first, last = float(np.median(loss[:k])), float(np.median(loss[-k:]))
    if first <= 0:
        return []
    drop = (first - last) / first
    if drop >= PLATEAU_MIN_REL_DROP:
        return []
    return [Finding("plateau", "warning", steps[0],
        f"train loss barely moved: median {_fmt(first)} over the first {k} logs, {_fmt(last)} over the last {k} "
        f"({drop * 100:+.1f}% drop from {_step_label(steps[0])} to {_step_label(steps[-1])}). Usual causes: LR too low, too "
        "few steps, a saved adapter loaded frozen (PeftModel.from_pretrained without is_trainable=True), rank too small. "
        "Fixes: a higher LR for short runs (5e-5 to 2e-4), more epochs, larger r and alpha, data closer to the domain.")]


def _rel_deviation(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(running median level, mask where the level is above ~0, relative deviation from the level there)."""
    level = _rolling_median(loss, FLUCT_WINDOW, centered=True)
    pos = level > ZERO_LOSS_EPS * 10
    return level, pos, np.abs(loss[pos] - level[pos]) / level[pos]


def _rel_noise(loss: np.ndarray) -> float:
    """The loss's typical batch-to-batch relative noise (robust: 1.4826 x the median relative deviation)."""
    _, pos, rel = _rel_deviation(loss)
    return float(np.median(rel)) * 1.4826 if pos.sum() >= 3 else 0.0


def _rule_fluctuation(seg: Segment, tag: str) -> list[Finding]:
    loss, steps, _ = _finite_loss(seg)
    n = len(loss)
    if n < FLUCT_MIN_ROWS:
        return []
    level, pos, rel = _rel_deviation(loss)
    if pos.sum() < FLUCT_MIN_ROWS:
        return []
    noise = float(np.median(rel)) * 1.4826
    if noise < FLUCT_REL_NOISE:
        return []
    worst = int(np.flatnonzero(pos)[int(np.argmax(rel))])
    return [Finding("fluctuation", "warning", steps[worst],
        f"loss fluctuates strongly{tag}: typical deviation {noise * 100:.0f}% of its running median over {n} logs (largest at "
        f"{_step_label(steps[worst])}: {_fmt(float(loss[worst]))} vs {_fmt(float(level[worst]))}). Usual causes: a small "
        "effective batch, no warmup or a constant LR, mixed-length batches. Fixes: warmup 5-10% of steps with linear or "
        "cosine decay, a larger effective batch (gradient accumulation, 8-32), a lower LR, group_by_length.")]


def detect(log: StepLog, max_grad_norm: float | None = None) -> list[Finding]:
    """All anomaly findings for a parsed log, errors first, then by step.

    ``max_grad_norm``: the run's clipping threshold (``TrainingArguments.max_grad_norm``; 0 = off) when
    known; defaults to what the log carries (``log.max_grad_norm``). With it, grad norms are also judged
    against the clip, their expected scale."""
    clip = max_grad_norm if max_grad_norm is not None else log.max_grad_norm
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
        findings += _rule_overfitting(seg, tag)
        findings += _rule_memorization(seg, tag)
    kinds = {f.kind for f in findings}
    if not log.is_rl and not kinds & {"no_learning", "nan_inf", "divergence", "zero_collapse", "negative_loss"}:
        findings += _rule_plateau(train_segments)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order.get(f.severity, 9), f.step if f.step is not None else -1))


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)

