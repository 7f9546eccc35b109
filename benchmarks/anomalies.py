"""Precision and recall per anomaly kind: the synthetic corpus and the held-out real-run set, side by side.

    python benchmarks/anomalies.py [--synthetic DIR] [--real DIR] [--severity error|warning|info] [--seeds N]

A file counts as predicted for a kind when detect() reports that kind at or above the chosen severity
(default: warning); each set's labels.json gives the expected kinds per file (empty for healthy runs).

- synthetic (``tests/data/anomaly_logs``): generated curves; the thresholds were tuned on it, so its
  scores are optimistic. ``--seeds N`` also scores N redraws of every case (make_corpus.py with other
  noise seeds, same shapes), in memory.
- real (``tests/data/anomaly_logs_real``): logs of real HF Trainer runs (make_real_runs.py); held out,
  never used to tune a threshold. The files carry the run's max_grad_norm, which read_log picks up.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.anomalies import KINDS, StepLog, detect, from_history, read_log  # noqa: E402

SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
Case = tuple[str, list[str], Callable[[], StepLog]]


def committed(corpus: Path) -> list[Case]:
    labels: dict[str, list[str]] = json.loads((corpus / "labels.json").read_text())
    return [(name, expected, lambda name=name: read_log(corpus / name)) for name, expected in sorted(labels.items())]


def redrawn(corpus: Path, seeds: int) -> list[Case]:
    sys.path.insert(0, str(corpus))
    import make_corpus

    out: list[Case] = []
    for offset in range(1, seeds + 1):
        for stem, make in make_corpus.CASES.items():
            make_corpus.SEED_OFFSET = offset * 1000
            state, kinds = make()
            out.append((f"{stem}.json@seed+{offset * 1000}", kinds,
                        lambda state=state, stem=stem: from_history(state["log_history"], source=stem)))
    make_corpus.SEED_OFFSET = 0
    return out


def score(cases: list[Case], severity: str) -> dict:
    tp, fp, fn = (dict.fromkeys(KINDS, 0) for _ in range(3))
    misses: list[str] = []
    healthy_errors = 0
    for name, expected, load in cases:
        findings = detect(load())
        got = {f.kind for f in findings if SEVERITY_RANK[f.severity] <= SEVERITY_RANK[severity]}
        exp = set(expected)
        if not exp and any(f.severity == "error" for f in findings):
            healthy_errors += 1
        for k in KINDS:
            tp[k] += k in got and k in exp
            fp[k] += k in got and k not in exp
            fn[k] += k not in got and k in exp
        if got != exp:
            misses.append(f"  {name}: expected {sorted(exp)}, got {sorted(got)}")
    return {"tp": tp, "fp": fp, "fn": fn, "misses": misses, "n": len(cases),
            "healthy": sum(1 for _, e, _ in cases if not e), "healthy_errors": healthy_errors}


def _pr(tp: int, fp: int, fn: int) -> tuple[float, float]:
    return (tp / (tp + fp) if tp + fp else math.nan, tp / (tp + fn) if tp + fn else math.nan)


def _cell(tp: int, fp: int, fn: int) -> str:
    if tp + fp + fn == 0:
        return f"{'-':>4}{'-':>4}{'-':>4}{'-':>7}{'-':>7}"
    p, r = _pr(tp, fp, fn)
    return f"{tp:>4}{fp:>4}{fn:>4}{p:>7.2f}{r:>7.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", type=Path, default=ROOT / "tests" / "data" / "anomaly_logs")
    ap.add_argument("--real", type=Path, default=ROOT / "tests" / "data" / "anomaly_logs_real")
    ap.add_argument("--seeds", type=int, default=0, help="also score N redraws of each synthetic case with other noise seeds")
    ap.add_argument("--severity", choices=list(SEVERITY_RANK), default="warning", help="lowest severity that counts as a prediction")
    args = ap.parse_args()
    t0 = time.perf_counter()
    syn_cases = committed(args.synthetic)
    n_committed = len(syn_cases)
    if args.seeds:
        syn_cases += redrawn(args.synthetic, args.seeds)
    syn = score(syn_cases, args.severity)
    real = score(committed(args.real), args.severity)
    seconds = time.perf_counter() - t0
    print(f"synthetic (tuning set): {syn['n']} logs ({n_committed} committed + {syn['n'] - n_committed} redrawn), "
          f"{syn['healthy']} healthy, {syn['healthy_errors']} of them with an error")
    print(f"real (held out):        {real['n']} HF Trainer runs, {real['healthy']} healthy, "
          f"{real['healthy_errors']} of them with an error")
    print(f"severity >= {args.severity}; {seconds:.2f}s")
    cols = f"{'tp':>4}{'fp':>4}{'fn':>4}{'prec':>7}{'recall':>7}"
    print(f"{'':<16}{'synthetic':^26} | {'real (held out)':^26}")
    print(f"{'kind':<16}{cols} | {cols}")
    for k in KINDS:
        print(f"{k:<16}{_cell(syn['tp'][k], syn['fp'][k], syn['fn'][k])} | {_cell(real['tp'][k], real['fp'][k], real['fn'][k])}")
    tot = {name: tuple(sum(d[key].values()) for key in ("tp", "fp", "fn")) for name, d in (("syn", syn), ("real", real))}
    print(f"{'all':<16}{_cell(*tot['syn'])} | {_cell(*tot['real'])}")
    for label, d in (("synthetic", syn), ("real", real)):
        if d["misses"]:
            print(f"{label} mismatches:")
            print("\n".join(d["misses"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
