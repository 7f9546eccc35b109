"""Rules on the stability of the loss and the gradient: ``divergence``, ``spike``, ``grad_explosion``,
``fluctuation``.

Each judges against the run's start and the expected scale of the quantity (the clip, when
``max_grad_norm`` is known), never only against statistics the anomaly itself can move.
"""

from __future__ import annotations

import math

import numpy as np

from harness.anomalies.logs import Finding, Segment
from harness.anomalies.series import (
    _col,
    _finite_loss,
    _fmt,
    _rel_deviation,
    _rel_noise,
    _smooth,
    _start_level,
    _step_label,
    _steps,
)
from harness.anomalies.thresholds import (
    DIVERGE_MIN_ABS,
    DIVERGE_RATIO,
    DIVERGE_START_NOISE_Z,
    DIVERGE_START_RATIO,
    DIVERGE_TAIL_RATIO,
    DIVERGE_TAIL_ROWS,
    FLUCT_MIN_ROWS,
    FLUCT_REL_NOISE,
    GRAD_CLIP_FACTOR,
    GRAD_EXPLOSION_FACTOR,
    GRAD_EXPLOSION_HUGE_FACTOR,
    GRAD_EXPLOSION_MIN_ABS,
    GRAD_EXPLOSION_RUN,
    SMOOTH_WINDOW_MIN,
    SPIKE_MAX_REPORTED,
    SPIKE_MIN_REL_SCALE,
    SPIKE_RATIO,
    SPIKE_RECOVER_RATIO,
    SPIKE_RECOVER_ROWS,
    SPIKE_WINDOW,
    SPIKE_Z,
)


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
