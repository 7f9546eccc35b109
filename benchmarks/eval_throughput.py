"""Evaluation throughput: examples/s of the harness's evaluation path (length-sorted, left-padded
batches, stop strings, scoring, rows written to DuckDB) against a plain one-prompt-at-a-time
``model.generate`` loop over the same prompts with the same greedy settings, in the same run.

    python benchmarks/eval_throughput.py [--suite general-knowledge] [--n 64] [--batch-size 16]

Uses the real base model (smollm2-135m by default). Prints both rates and their ratio, and how many
outputs agree between the two paths (greedy decoding: batched and single outputs should match).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--suite", default="general-knowledge")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import torch

    from harness.evaluation.runner import run_eval
    from harness.evaluation.targets import expand_targets
    from harness.generation.generate import cut_at_stop, render_prompt
    from harness.models.base import load_base, resolve_base
    from harness.store import RunInfo, Store
    from harness.suites.spec import load_examples, load_suite, render_user_text

    base = load_base(resolve_base(args.base), device=args.device)
    suite = load_suite(args.suite)
    examples = load_examples(suite, args.n)
    print(f"{len(examples)} prompts from {suite.name}, max_new_tokens={suite.generation.max_new_tokens}, "
          f"device={base.device}, torch threads={torch.get_num_threads()}")

    # Baseline: the loop people write first.
    prompts = [render_prompt(base.tokenizer, render_user_text(suite, e)) for e in examples]
    t0 = time.perf_counter()
    plain = []
    for p in prompts:
        enc = base.tokenizer(p, return_tensors="pt", add_special_tokens=False).to(base.device)
        with torch.no_grad():
            out = base.model.generate(**enc, max_new_tokens=suite.generation.max_new_tokens, do_sample=False,
                                      temperature=None, top_p=None, top_k=None, pad_token_id=base.tokenizer.pad_token_id,
                                      stop_strings=list(suite.generation.stop) or None, tokenizer=base.tokenizer)
        plain.append(cut_at_stop(base.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True),
                                 suite.generation.stop))
    t_plain = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        t0 = time.perf_counter()
        with store.run(RunInfo(kind="bench", command="benchmarks/eval_throughput.py")) as run:
            run_eval(base, expand_targets([], [1.0]), [suite], run, store, batch_size=args.batch_size, limit=args.n,
                     log=lambda m: None)
            run_id = run.run_id
        t_ours = time.perf_counter() - t0
        outs = {r["example_id"]: r["output"] for r in store.query(
            "SELECT g.example_id, g.output FROM run_results rr JOIN generations g USING (cache_key) WHERE rr.run_id = ?", [run_id])}
    same = sum((outs.get(e.id) or "").strip() == p.strip() for e, p in zip(examples, plain))
    n = len(examples)
    print(f"plain generate loop (batch 1):        {n / t_plain:6.2f} examples/s ({t_plain:.1f}s)")
    print(f"harness eval path (batch {args.batch_size}, scored, stored): {n / t_ours:6.2f} examples/s ({t_ours:.1f}s)")
    print(f"ratio: {t_plain / t_ours:.2f}x; outputs identical on {same}/{n} prompts")


if __name__ == "__main__":
    main()
