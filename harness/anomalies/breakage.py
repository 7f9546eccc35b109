"""Rules for a run that is broken: ``nan_inf``, ``zero_collapse``, ``negative_loss``, ``no_learning``.

Non-finite losses and grad norms (the Trainer's hidden NaN: a 0.0 loss beside a NaN grad norm; RL
runs' reward and KL keys), a loss that collapses to 0 or goes below it, and a run in which nothing
trains (grad norm 0 from the start, a learning rate of 0, a loss that never moves).
"""

from __future__ import annotations

import math

import numpy as np

from harness.anomalies.logs import Finding, Segment, _is_rl_key
from harness.anomalies.series import _col, _finite_loss, _fmt, _step_label, _steps
from harness.anomalies.thresholds import (
    FLAT_LOSS_MIN_ROWS,
    FLAT_LOSS_TOL,
    NEGATIVE_LOSS_TOL,
    NONFINITE_GRAD_RUN,
    ZERO_COLLAPSE_MAX_EPOCH,
    ZERO_COLLAPSE_MIN_PRIOR,
    ZERO_GRAD_START_ROWS,
    ZERO_LOSS_EPS,
    ZERO_RUN_MIN,
)


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
