"""Does ``torch.compile`` pay off on the eval path? The harness's fast generation path on the same prompts,
eager against the model's forward compiled (inductor, dynamic shapes), in the same run.

    python benchmarks/compile_trial.py [--suite general-knowledge] [--n 64] [--batch-size 16] [--mode default]

Prints the compiled run's first pass (compilation included: what a one-off ``harness eval`` pays), its
second pass (warm: what a long run tends to), the eager passes before and after, the ratios, and how
many outputs agree with eager (greedy: all must). The fast path changes the batch's shape at every
step (the cache grows by a column, rows retire and are refilled), so the compiled graph must be
dynamic; recompilations are counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="general-knowledge")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--mode", default="default", help="torch.compile mode (default, reduce-overhead, max-autotune)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import torch

    from harness.generation.generate import generate, render_prompt
    from harness.models.base import load_base, resolve_base
    from harness.suites.spec import load_examples, load_suite, render_user_text

    base = load_base(resolve_base("smollm2-135m"), device=args.device)
    suite = load_suite(args.suite)
    examples = load_examples(suite, args.n)
    prompts = [render_prompt(base.tokenizer, render_user_text(suite, e)) for e in examples]
    settings = suite.generation

    def run(label: str) -> tuple[list[str | None], float]:
        t0 = time.perf_counter()
        outs = [g.text for g in generate(base.model, base.tokenizer, prompts, settings, batch_size=args.batch_size)]
        took = time.perf_counter() - t0
        print(f"  {label:<34}{took:8.2f} s  ({len(prompts) / took:.1f} prompts/s)", flush=True)
        return outs, took

    print(f"{len(prompts)} prompts of {args.suite}, batch {args.batch_size}, {settings.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} thread(s), device {base.device}")
    eager, t_eager = run("eager")
    eager2, t_eager2 = run("eager (again)")

    import logging

    import torch._dynamo

    class Count(logging.Handler):
        """Counts inductor's compile failures (each logged with its traceback) instead of printing them."""

        def __init__(self) -> None:
            super().__init__()
            self.failures: dict[str, int] = {}

        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            for line in text.splitlines():
                if "failed while attempting to run meta for" in line:
                    key = line.split("meta for", 1)[1].strip()
                    self.failures[key] = self.failures.get(key, 0) + 1

    counted = Count()
    for name in ("torch._subclasses.fake_tensor", "torch._dynamo", "torch._inductor"):
        lg = logging.getLogger(name)
        lg.handlers, lg.propagate = [counted], False
    torch._dynamo.reset()
    torch._dynamo.config.suppress_errors = True  # a frame that fails to compile runs eagerly, as a user would see
    counters = torch._dynamo.utils.counters
    eager_forward = base.model.forward
    base.model.forward = torch.compile(eager_forward, dynamic=True, mode=args.mode)
    try:
        first, t_first = run(f"compiled, first pass ({args.mode})")
        second, t_second = run("compiled, second pass")
    finally:
        base.model.forward = eager_forward
    frames = sum(counters["stats"].values()) if "stats" in counters else 0
    breaks = sum(counters["graph_break"].values())
    best_eager = min(t_eager, t_eager2)
    agree = sum(a == b for a, b in zip(eager, second))
    if counted.failures:
        print("inductor failed to compile: " + ", ".join(f"{k} ({n}x)" for k, n in counted.failures.items())
              + "; those steps ran eagerly after each failed attempt")
    print(f"compiled/eager: first pass {t_first / best_eager:.2f}x, second pass {t_second / best_eager:.2f}x "
          f"(below 1 pays off); graph breaks {breaks}, dynamo frame stats {frames}")
    print(f"outputs equal to eager: first pass {sum(a == b for a, b in zip(eager, first))}/{len(eager)}, "
          f"second pass {agree}/{len(eager)}; eager runs agree with each other: {sum(a == b for a, b in zip(eager, eager2))}/{len(eager)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
