"""Precision and recall per anomaly kind on the labelled corpus (tests/data/anomaly_logs).

    python benchmarks/anomalies.py [CORPUS_DIR] [--severity error|warning|info] [--seeds N]

A file counts as predicted for a kind when detect() reports that kind at or above the chosen severity
(default: warning); labels.json gives the expected kinds per file (empty for healthy runs).

The committed corpus is what the thresholds were tuned on, so its scores are optimistic. ``--seeds N``
also scores N redraws of every case (make_corpus.py with other noise seeds, same shapes), in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.anomalies import KINDS, detect, from_history, read_log  # noqa: E402

SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", type=Path, default=ROOT / "tests" / "data" / "anomaly_logs")
    ap.add_argument("--seeds", type=int, default=0, help="also score N redraws of each case with other noise seeds")
    ap.add_argument("--severity", choices=list(SEVERITY_RANK), default="warning", help="lowest severity that counts as a prediction")
    args = ap.parse_args()
    labels: dict[str, list[str]] = json.loads((args.corpus / "labels.json").read_text())
    tp = dict.fromkeys(KINDS, 0)
    fp = dict.fromkeys(KINDS, 0)
    fn = dict.fromkeys(KINDS, 0)
    misses: list[str] = []
    t0 = time.perf_counter()
    cases = [(name, expected, lambda name=name: read_log(args.corpus / name)) for name, expected in sorted(labels.items())]
    if args.seeds:
        sys.path.insert(0, str(args.corpus))
        import make_corpus

        for offset in range(1, args.seeds + 1):
            for stem, make in make_corpus.CASES.items():
                make_corpus.SEED_OFFSET = offset * 1000
                state, kinds = make()
                cases.append((f"{stem}.json@seed+{offset * 1000}", kinds,
                              lambda state=state, stem=stem: from_history(state["log_history"], source=stem)))
        make_corpus.SEED_OFFSET = 0
    for name, expected, load in cases:
        findings = detect(load())
        got = {f.kind for f in findings if SEVERITY_RANK[f.severity] <= SEVERITY_RANK[args.severity]}
        exp = set(expected)
        for k in KINDS:
            tp[k] += k in got and k in exp
            fp[k] += k in got and k not in exp
            fn[k] += k not in got and k in exp
        if got != exp:
            misses.append(f"  {name}: expected {sorted(exp)}, got {sorted(got)}")
    seconds = time.perf_counter() - t0
    n_healthy = sum(1 for _, exp, _ in cases if not exp)
    print(f"{len(cases)} logs ({len(labels)} committed + {len(cases) - len(labels)} redrawn), {n_healthy} healthy; "
          f"severity >= {args.severity}; {seconds:.2f}s")
    print(f"{'kind':<16}{'tp':>4}{'fp':>4}{'fn':>4}{'precision':>11}{'recall':>8}")
    for k in KINDS:
        p = tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else float("nan")
        r = tp[k] / (tp[k] + fn[k]) if tp[k] + fn[k] else float("nan")
        print(f"{k:<16}{tp[k]:>4}{fp[k]:>4}{fn[k]:>4}{p:>11.2f}{r:>8.2f}")
    T, F, N = sum(tp.values()), sum(fp.values()), sum(fn.values())
    print(f"{'all':<16}{T:>4}{F:>4}{N:>4}{(T / (T + F) if T + F else float('nan')):>11.2f}{(T / (T + N) if T + N else float('nan')):>8.2f}")
    if misses:
        print("mismatches:")
        print("\n".join(misses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
