"""What the rules read from a segment, and how their messages write numbers.

Columns as arrays, steps, the finite train losses (hidden-NaN zeros left out), rolling medians and the
smoothed loss, a quantity's starting level, the loss's batch-to-batch noise; ``_fmt`` / ``_step_label`` /
``_where`` for the sentences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from harness.anomalies.logs import Segment
from harness.anomalies.thresholds import FLUCT_WINDOW, SMOOTH_WINDOW_FRAC, SMOOTH_WINDOW_MIN, START_ROWS, ZERO_LOSS_EPS


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


def _smooth(loss: np.ndarray) -> np.ndarray:
    w = max(SMOOTH_WINDOW_MIN, int(len(loss) * SMOOTH_WINDOW_FRAC))
    return _rolling_median(loss, w)


def _rel_deviation(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(running median level, mask where the level is above ~0, relative deviation from the level there)."""
    level = _rolling_median(loss, FLUCT_WINDOW, centered=True)
    pos = level > ZERO_LOSS_EPS * 10
    return level, pos, np.abs(loss[pos] - level[pos]) / level[pos]


def _rel_noise(loss: np.ndarray) -> float:
    """The loss's typical batch-to-batch relative noise (robust: 1.4826 x the median relative deviation)."""
    _, pos, rel = _rel_deviation(loss)
    return float(np.median(rel)) * 1.4826 if pos.sum() >= 3 else 0.0
