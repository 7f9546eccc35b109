"""The harness sweep against the way users sweep today, measured in the same run.

Naive baseline (what a user does without the harness): for each scale, merge the adapter at that
scale into a fresh copy of the base (``merge_and_unload``), save it, load it back, and evaluate that
merged model on the suites with the same batched generation. The harness: one `run_eval` over every
scale, the scales sharing batches through PEFT's mixed-adapter batches, into a fresh database; then
the same sweep again (everything cached); then the base model alone on the same suites, cold, in a
database of its own. Prints the times, the ratios, and how many outputs agree.

    .venv/bin/python benchmarks/sweep.py --adapter harness-demo/adapters/order-plain
    (train one first with `bash .ci/demo --quick`, or pass any adapter of the base)

Targets: at most 0.4x the naive time with identical outputs, a re-run at most 5% of cold (issue 13);
the sweep (5 scales and the base) within 2x the base alone (issue 17). On a GPU, with random weights
(``benchmarks/random_base.py``) where the real ones cannot travel: ``benchmarks/gpu_eval.sh``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", type=Path, default=Path("harness-demo/adapters/order-plain"))
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--scales", default="0.1,0.25,0.5,0.75,1")
    ap.add_argument("--suite", action="append", default=None)
    ap.add_argument("--limit", type=int, default=16, help="examples per suite (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16, help="rows per model, both paths (default: %(default)s)")
    ap.add_argument("--max-batch", type=int, default=None,
                    help="rows of the harness's shared batches (default: the harness's own default)")
    args = ap.parse_args()
    suites_arg = args.suite or ["order-task", "general-knowledge", "format-leakage"]
    scales = [float(s) for s in args.scales.split(",")]

    from harness.evaluation.runner import DEFAULT_MAX_BATCH, run_eval, shared_batch_rows
    from harness.evaluation.targets import expand_targets
    from harness.generation.generate import generate, render_prompt
    from harness.models.adapters import inspect_adapter, load_adapter, set_scale
    from harness.models.base import load_base, resolve_base
    from harness.store import RunInfo, Store
    from harness.suites import taskformat
    from harness.suites.spec import load_examples, load_suite, render_user_text

    info = inspect_adapter(args.adapter)
    ref = resolve_base(args.base)
    base = load_base(ref)
    suites = [load_suite(s) for s in suites_arg]
    examples = {s.name: load_examples(s, args.limit) for s in suites}
    keys, _ = taskformat.resolve(suites, examples, [info], None)
    suites = taskformat.with_leakage(suites, keys)
    prompts = {s.name: [render_prompt(base.tokenizer, render_user_text(s, e), s.prompt.system, s.prompt.raw)
                        for e in examples[s.name]] for s in suites}
    n_rows = sum(len(v) for v in prompts.values()) * (len(scales) + 1)
    print(f"{info.path.name}: {len(scales)} scales + base x {len(suites)} suites x {args.limit} examples = {n_rows} generations")

    # -- naive: merge at each scale, save, load, evaluate --------------------------------------------
    from transformers import AutoModelForCausalLM

    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    t0, c0 = time.perf_counter(), time.process_time()
    naive: dict[tuple[float, str, int], str | None] = {}
    for s in suites:
        for i, g in enumerate(generate(base.model, base.tokenizer, prompts[s.name], s.generation, args.batch_size)):
            naive[(0.0, s.name, i)] = g.text
    for scale in scales:
        fresh = AutoModelForCausalLM.from_pretrained(ref.path, dtype=base.dtype).to(base.device)
        pm = load_adapter(fresh, info)
        set_scale(pm, scale)
        merged = pm.merge_and_unload()
        out = tmp / f"merged-{scale:g}"
        merged.save_pretrained(out, safe_serialization=True)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=base.dtype).to(base.device).eval()
        for s in suites:
            for i, g in enumerate(generate(model, base.tokenizer, prompts[s.name], s.generation, args.batch_size)):
                naive[(scale, s.name, i)] = g.text
        del model, merged, fresh
        shutil.rmtree(out)
    naive_wall, naive_cpu = time.perf_counter() - t0, time.process_time() - c0

    # -- the harness sweep, cold then warm ----------------------------------------------------------
    store = Store(tmp / "h.duckdb")
    targets = expand_targets([info], scales)
    max_batch = args.max_batch or DEFAULT_MAX_BATCH
    shared = shared_batch_rows(args.batch_size, max_batch, len(targets))
    t0, c0 = time.perf_counter(), time.process_time()
    with store.run(RunInfo(kind="sweep", command="benchmark")) as run:
        run_eval(base, targets, suites, run, store, batch_size=args.batch_size, max_batch=max_batch, examples=examples,
                 log=lambda m: None)
        run_id = run.run_id
    cold_wall, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    with store.run(RunInfo(kind="sweep", command="benchmark (re-run)")) as run:
        run_eval(base, targets, suites, run, store, batch_size=args.batch_size, max_batch=max_batch, examples=examples,
                 log=lambda m: None)
    warm_wall = time.perf_counter() - t0
    # the base model alone on the same suites, cold, in a store of its own (nothing cached)
    alone = Store(tmp / "base-alone.duckdb")
    t0 = time.perf_counter()
    with alone.run(RunInfo(kind="eval", command="benchmark (base alone)")) as run:
        run_eval(base, expand_targets([], []), suites, run, alone, batch_size=args.batch_size, max_batch=max_batch,
                 examples=examples, log=lambda m: None)
    base_wall = time.perf_counter() - t0

    rows = store.query(
        "SELECT g.scale, s.name AS suite, g.example_id, g.output FROM generations g JOIN run_results rr USING (cache_key) "
        "JOIN suites s ON s.suite_id = g.suite_id WHERE rr.run_id = ?", [run_id])
    index = {s.name: {e.id: i for i, e in enumerate(examples[s.name])} for s in suites}
    agree = sum(naive.get((r["scale"], r["suite"], index[r["suite"]][r["example_id"]])) == r["output"] for r in rows)
    shutil.rmtree(tmp, ignore_errors=True)

    per_model = sorted({min(args.batch_size, len(v)) for v in prompts.values()})
    print(f"batches: naive {'/'.join(map(str, per_model))} rows (one model's suite); harness up to {shared} rows "
          f"({len(targets)} models x {args.batch_size}, --max-batch {max_batch})")
    print(f"naive (merge + save + load + evaluate per scale): {naive_wall:7.1f} s wall, {naive_cpu:7.1f} s CPU")
    print(f"harness sweep, cold:                              {cold_wall:7.1f} s wall, {cold_cpu:7.1f} s CPU"
          f"   ratio {cold_wall / naive_wall:.2f}x naive (target <= 0.40x)")
    print(f"harness sweep, re-run (all cached):               {warm_wall:7.1f} s wall"
          f"   {100 * warm_wall / cold_wall:.1f}% of cold (target <= 5%)")
    print(f"the base model alone, cold (harness eval):     {base_wall:7.1f} s wall"
          f"   the sweep took {cold_wall / base_wall:.2f}x its time (target <= 2x)")
    print(f"outputs identical to the naive path: {agree}/{len(rows)}; device {base.device}, {base.dtype}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
