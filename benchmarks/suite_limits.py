"""How long the base model's answers to the built-in general suites run, to set their token limits.

An answer cut by ``max_new_tokens`` is still scored (and counted beside every retention figure), but a
limit should leave a complete short answer for nearly every question. This generates the base model's
greedy answers with a generous cap, for the suite's prompt as configured and for the bare question, and
prints per suite: how many ended on their own within the configured limit, and the length percentiles.

    .venv/bin/python benchmarks/suite_limits.py [--base smollm2-135m] [--n 96] [--cap 160]

Measured 2026-12-07 on this 2-core CPU (smollm2-135m, fp32; 96 general-knowledge questions and the 64
format-leakage prompts, cap 160):

    general-knowledge  bare question      within 32: 35/96   p50 51  p90 108  p95 148  cut at 160: 4
    general-knowledge  + one short sentence within 32: 84/96 p50 17  p90 37   p95 40   cut at 160: 1
    format-leakage     bare prompt        within 32: 10/64   p50 66  p90 103  p95 104  cut at 160: 3
    format-leakage     + one short sentence within 32: 50/64 p50 24  p90 39   p95 51   cut at 160: 0

hence the suites' "Answer in one short sentence." and limits of 48 and 56 new tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=96, help="questions per suite (a seeded sample)")
    ap.add_argument("--cap", type=int, default=160, help="max_new_tokens while measuring")
    args = ap.parse_args()

    from harness.generation.generate import GenerationSettings, generate, render_prompt
    from harness.models.base import load_base, resolve_base
    from harness.suites.spec import load_examples, load_suite, render_user_text

    base = load_base(resolve_base(args.base), device="cpu")
    for name in ("general-knowledge", "format-leakage"):
        suite = load_suite(name)
        examples = load_examples(suite)
        random.Random(0).shuffle(examples)
        examples = examples[: args.n]
        limit = suite.generation.max_new_tokens
        for label, texts in (("as configured", [render_user_text(suite, e) for e in examples]),
                             ("bare question", [e.input for e in examples])):
            t0 = time.perf_counter()
            prompts = [render_prompt(base.tokenizer, t) for t in texts]
            gens = generate(base.model, base.tokenizer, prompts,
                            GenerationSettings(max_new_tokens=args.cap, stop=tuple(suite.generation.stop)), batch_size=16)
            ended = sorted(g.n_new_tokens for g in gens if not g.truncated)
            lens = sorted(g.n_new_tokens for g in gens)
            pct = {p: lens[min(len(lens) - 1, int(p / 100 * len(lens)))] for p in (50, 90, 95)}
            print(json.dumps({"suite": name, "prompt": label, "n": len(gens), "limit": limit,
                              "ended_within_limit": sum(n <= limit for n in ended), "cut_at_cap": len(gens) - len(ended),
                              "p50": pct[50], "p90": pct[90], "p95": pct[95],
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
