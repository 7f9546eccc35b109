"""Rules on how the adapter fits its data: ``overfitting`` (eval loss rising while the train loss falls),
``memorization`` (a train loss near 0 after epochs), ``plateau`` (a loss that barely moves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from harness.anomalies.logs import Finding, Segment
from harness.anomalies.series import _col, _finite_loss, _fmt, _smooth, _start_level, _step_label
from harness.anomalies.thresholds import (
    MEMO_LOSS,
    MEMO_MIN_EPOCHS,
    MEMO_MIN_START,
    NEGATIVE_LOSS_TOL,
    OVERFIT_EVAL_RISE,
    OVERFIT_GAP_WIDEN,
    OVERFIT_LOSS_CV,
    OVERFIT_MIN_EVALS,
    OVERFIT_NOISE_Z,
    OVERFIT_TRAIN_FALL,
    PLATEAU_EDGE_FRAC,
    PLATEAU_MIN_REL_DROP,
    PLATEAU_MIN_ROWS,
)


def _train_loss_at(seg: Segment, step: float, window: int = 5) -> float:
    """Median of the finite train losses logged at or up to `window` logs before `step`."""
    loss, steps, _ = _finite_loss(seg)
    idx = [i for i, s in enumerate(steps) if s is not None and s <= step]
    if not idx:
        return math.nan
    last = idx[-1]
    return float(np.median(loss[max(0, last - window + 1): last + 1]))


def overfit_rise_needed(eval_size: int | None) -> float:
    """The relative eval-loss rise the overfitting rule needs: OVERFIT_EVAL_RISE, or the noise of a mean over
    ``eval_size`` rows when that is larger (``OVERFIT_NOISE_Z * OVERFIT_LOSS_CV / sqrt(eval_size)``)."""
    if not eval_size or eval_size <= 0:
        return OVERFIT_EVAL_RISE
    return max(OVERFIT_EVAL_RISE, OVERFIT_NOISE_Z * OVERFIT_LOSS_CV / math.sqrt(eval_size))


def _rule_overfitting(seg: Segment, tag: str, eval_size: int | None = None) -> list[Finding]:
    ev_rows = [r for r in seg.eval if math.isfinite(r.get("eval_loss", math.nan)) and r.get("step") is not None]
    if len(ev_rows) < OVERFIT_MIN_EVALS:
        return []
    ev = np.array([r["eval_loss"] for r in ev_rows])
    est = [r["step"] for r in ev_rows]
    b = int(np.argmin(ev))
    last = len(ev) - 1
    if b == last:
        return []
    need = overfit_rise_needed(eval_size)
    rise = float(ev[last] / ev[b] - 1) if ev[b] > 0 else math.inf
    rose = rise >= need
    # a best reached early and never bettered counts only where no noise is known to explain a small rise
    stalled = b <= last // 2 and ev[last] >= ev[b] and not eval_size
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
    noise = (f"a rise of {rise:.1%} against the {need:.1%} that the noise of a mean over the eval set's {eval_size} rows "
             f"allows ({OVERFIT_NOISE_Z:g} x {OVERFIT_LOSS_CV:g} / sqrt({eval_size}))" if eval_size else
             f"a rise of {rise:.1%} (rule: >= {OVERFIT_EVAL_RISE:.0%}, or no new best since the first half); the eval "
             "set's size is unknown, so its noise was not judged")
    return [Finding("overfitting", "warning", int(est[b]),
        f"eval loss was best at {_fmt(float(ev[b]))} (step {int(est[b])}{ep_txt}) and is {_fmt(float(ev[last]))} at step "
        f"{int(est[last])}{tag}: {noise}; meanwhile the train loss (median of the last 5 logs up to each of those "
        f"steps) fell from {_fmt(tr_b)} to {_fmt(tr_last)}, and the eval-train gap widened from {_fmt(gap_b)} to "
        f"{_fmt(gap_last)}. Fixes: keep the checkpoint of step {int(est[b])} "
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
