"""Store benchmark: ingest 1,000,000 score rows through the harness's shard path and answer the
per-scale comparison view over them, against a plain row-by-row INSERT baseline measured in the same run.

    python benchmarks/store.py [--scores 1000000] [--baseline-rows 20000]

The baseline inserts rows one statement at a time (the naive way to fill DuckDB from Python); it runs
on a smaller sample and its rate is compared with ours (rows/s), since 1M single-row inserts take
many minutes. Nothing here is a pass/fail target: it prints numbers and ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = [f"m{i}" for i in range(12)]


def build_rows(n_scores: int):
    from harness.store import AdapterRow, BaseModelRow, ExampleRow, GenerationRow, ScoreRow, SuiteRow, cache_key

    adapters, scales = [f"ad{i}" for i in range(4)], [0.25, 0.5, 0.75, 1.0, 1.5]
    models = [(None, 0.0)] + [(a, s) for a in adapters for s in scales]
    n_examples = max(1, n_scores // (len(models) * len(METRICS)))
    meta = [BaseModelRow("base", "bench-base", "/none")]
    meta += [AdapterRow(a, "base", f"/adapters/{a}", "{}", None, None, a) for a in adapters]
    meta += [SuiteRow("suite", "bench", "1", "/none", n_examples)]
    meta += [ExampleRow("suite", f"e{i}", f"input {i}", "t", f"c{i % 8}") for i in range(n_examples)]
    gens, scores = [], []
    for a, s in models:
        for i in range(n_examples):
            k = cache_key(a=a, s=s, i=i)
            gens.append(GenerationRow(k, "base", a, s, "suite", f"e{i}", "prompt", "output", "{}", 10, 5, None, 0.01))
            for j, m in enumerate(METRICS):
                scores.append(ScoreRow(k, m, ((i * 7 + j * 3 + int(s * 4)) % 10) / 10, None, "bench", "1"))
    return meta, gens, scores


def ours(db: Path, meta, gens, scores) -> tuple[float, float]:
    from harness.store import RunInfo, Store

    store = Store(db)
    t0 = time.perf_counter()
    with store.run(RunInfo(kind="bench", command="benchmarks/store.py")) as run:
        for r in meta:
            run._add([r])
        run.expect(len(gens))
        run.add_generations(gens)
        run.add_scores(scores)
        run.flush()
        run_id = run.run_id
    ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = store.query("SELECT * FROM v_adapter_vs_base WHERE run_id = ? AND adapter_name = 'ad1' ORDER BY metric, scale", [run_id])
    query = time.perf_counter() - t0
    assert len(rows) == 5 * len(METRICS), len(rows)
    return ingest, query


def baseline(db: Path, scores, n: int) -> float:
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE scores (cache_key VARCHAR, metric VARCHAR, value DOUBLE, reason VARCHAR, scorer VARCHAR, "
                "scorer_version VARCHAR, PRIMARY KEY (cache_key, metric))")
    t0 = time.perf_counter()
    for s in scores[:n]:
        con.execute("INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?)", [s.cache_key, s.metric, s.value, s.reason, s.scorer, s.scorer_version])
    took = time.perf_counter() - t0
    con.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scores", type=int, default=1_000_000)
    ap.add_argument("--baseline-rows", type=int, default=20_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    meta, gens, scores = build_rows(args.scores)
    print(f"built {len(scores):,} score rows over {len(gens):,} generations in {time.perf_counter() - t0:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        ingest, query = ours(Path(tmp) / "ours.duckdb", meta, gens, scores)
        base_n = min(args.baseline_rows, len(scores))
        base_t = baseline(Path(tmp) / "base.duckdb", scores, base_n)
    n_rows = len(scores) + len(gens) * 2 + len(meta)  # scores + generations + run_results + metadata
    ours_rate, base_rate = len(scores) / ingest, base_n / base_t
    print(f"harness ingest (shard write + one transaction): {len(scores):,} scores ({n_rows:,} rows in all) in {ingest:.2f}s "
          f"= {ours_rate:,.0f} score rows/s")
    print(f"row-by-row INSERT baseline: {base_n:,} rows in {base_t:.2f}s = {base_rate:,.0f} rows/s "
          f"(1M rows would take ~{1_000_000 / base_rate:,.0f}s)")
    print(f"ratio: harness ingest is {ours_rate / base_rate:,.1f}x the baseline's rate")
    print(f"per-scale comparison view (v_adapter_vs_base, one adapter, all scales): {query * 1000:.0f} ms")


if __name__ == "__main__":
    main()
