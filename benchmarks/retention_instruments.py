"""Three instruments of what an adapter did to the base, in one run on the same questions and scales: retention by
generation (general-knowledge: the answer decoded and alias-matched), retention by likelihood (general-knowledge-mc:
the right choice's log-likelihood against three distractors, lm-eval's acc) and drift (KL(base || adapter@scale) per
token on the base's own answers, no labels).

    .venv/bin/python benchmarks/retention_instruments.py --adapter harness-demo/adapters/order-plain [--limit N]
    (train one first with `bash .ci/demo --quick`, or pass any adapter of the base)

Each instrument runs every scale (0.1 ... 1 and the base) in the sweep engine's shared per-row-scale batches, into a
fresh database, from cold. Printed per instrument: wall seconds (the drift pass timed on its own, inside the
generation run it needs: it teacher-forces the base's answers), the 95% interval at scale 1 (Wilson on kept /
base-correct for the two retentions; a t interval on the mean KL per answer for drift) and its half-width, and the
evidence per second: the seconds the instrument would need for a half-width of 0.05 (wall x (half-width / 0.05)^2,
the interval narrowing as 1 / sqrt(n)). Load averages before and after are printed: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _run(base, adapter, suite: str, scales, limit, db: Path):
    from harness.evaluation.runner import run_eval
    from harness.evaluation.targets import expand_targets
    from harness.store import RunInfo, Store
    from harness.suites.spec import check_suites

    suites, examples = check_suites([suite], limit)
    store = Store(db)
    targets = expand_targets([adapter], scales)
    with store.run(RunInfo(kind="eval", command=f"benchmark {suite}")) as w:
        stats = run_eval(base, targets, suites, w, store, examples=examples, log=lambda m: None)
        run_id = w.run_id
    return store, run_id, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", type=Path, default=Path("harness-demo/adapters/order-plain"))
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--scales", default="0.1,0.25,0.5,0.75,1")
    ap.add_argument("--limit", type=int, default=None, help="questions per suite (default: all 336)")
    args = ap.parse_args()
    from scipy import stats as st

    from harness.analysis.build import build_comparison
    from harness.analysis.stats import wilson
    from harness.analysis.sweep import curve
    from harness.models.adapters import inspect_adapter
    from harness.models.base import load_base, resolve_base

    scales = [float(s) for s in args.scales.split(",")]
    base = load_base(resolve_base(args.base))
    adapter = inspect_adapter(args.adapter)
    print(f"load average at start: {_load()}; {len(scales)} scales and the base; adapter {args.adapter}")
    walls: dict[str, float] = {}
    loads: dict[str, str] = {}
    per_scale: dict[str, dict[float, tuple[str, float, float]]] = {}  # instrument -> scale -> (figure, low, high)
    with tempfile.TemporaryDirectory() as tmp:
        for suite, what in (("general-knowledge", "generation"), ("general-knowledge-mc", "likelihood")):
            before = _load()
            t0 = time.perf_counter()
            store, run_id, stats = _run(base, adapter, suite, scales, args.limit, Path(tmp) / f"{suite}.duckdb")
            wall = time.perf_counter() - t0
            c = build_comparison(store, run_id, samples_per_suite=0)
            name = f"retention by {what}"
            walls[name] = wall - stats.drift_seconds
            loads[name] = f"{before} / {_load()}"
            for point in curve(c, adapter.adapter_id):
                if point.scale == 0:
                    continue
                kept, n = (point.knowledge_kept, point.knowledge_base_correct) if what == "likelihood" else (point.kept, point.base_correct)
                ci = wilson(kept, n)
                if ci:
                    per_scale.setdefault(name, {})[point.scale] = (f"{kept}/{n} = {kept / n:.3f}", ci.low, ci.high)
            if what == "generation":
                walls["drift"] = stats.drift_seconds
                loads["drift"] = loads[name]
                for scale in scales:
                    vals = [r["value"] for r in store.query(
                        "SELECT value FROM v_scores WHERE run_id = ? AND metric = 'drift_kl' AND scale = ? AND value IS NOT NULL",
                        [run_id, scale])]
                    if len(vals) < 2:
                        continue
                    m = sum(vals) / len(vals)
                    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
                    half = st.t.ppf(0.975, len(vals) - 1) * sd / math.sqrt(len(vals))
                    per_scale.setdefault("drift", {})[scale] = (f"{m:.4f} nats (n={len(vals)})", m - half, m + half)
    print(f"\n{'instrument':<26} {'scale':>5} {'figure':>24} {'95% interval':>16} {'half-width':>10}")
    for name, by_scale in per_scale.items():
        for scale, (fig, lo, hi) in sorted(by_scale.items()):
            print(f"{name:<26} {scale:>5g} {fig:>24} {lo:>7.3f}-{hi:<8.3f} {(hi - lo) / 2:>10.3f}")
    print(f"\n{'instrument':<26} {'wall s':>8} {'widest half-width':>18} {'s to +-0.05 there':>18}  load before / after")
    for name, wall in walls.items():
        widest = max(((hi - lo) / 2 for _, lo, hi in per_scale.get(name, {}).values()), default=float("nan"))
        print(f"{name:<26} {wall:>8.1f} {widest:>18.3f} {wall * (widest / 0.05) ** 2:>18.1f}  {loads[name]}")
    print("\n(a retention's interval is Wilson's on kept / base-correct; drift's is a t interval on the mean KL in nats, so "
          "its half-width is not a share and its 's to +-0.05' is in nats; the drift pass needs the base's answers and is "
          "timed inside the generation run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
