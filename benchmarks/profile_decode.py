"""Where the fast generation path's time goes: a torch.profiler run of ``generate(path="fast")`` on the same prompts
and settings as ``benchmarks/eval_speed.py`` (32 general-knowledge prompts, batch 16, greedy, 48 new tokens), after a
warm-up.

    .venv/bin/python benchmarks/profile_decode.py [--n 32] [--batch-size 16]

Prints the wall time, the share of it inside the model's forward (``LlamaForCausalLM.forward``, everything lm-eval's
HFLM must also compute for the same tokens), split into its matrix products (``aten::mm`` / ``addmm`` /
``linear``: the projections and the LM head), attention and the rest, and the share outside the forward (the decode
loop's own Python: refill, stop strings, cache bookkeeping, sampling). The outside share bounds what any loop change
can gain: with it at zero, the same forwards take ``1 - outside`` of the time.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--suite", default="general-knowledge")
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from harness.generation.generate import generate, render_prompt
    from harness.models.base import load_base, resolve_base
    from harness.suites.spec import load_examples, load_suite, render_user_text

    base = load_base(resolve_base("smollm2-135m"))
    suite = load_suite(args.suite)
    settings = suite.generation
    prompts = [render_prompt(base.tokenizer, render_user_text(suite, e), suite.prompt.system, suite.prompt.raw)
               for e in load_examples(suite, args.n)]
    generate(base.model, base.tokenizer, prompts[:4], settings, args.batch_size, path="fast")  # warm-up
    model = base.model
    inner = model.forward

    @functools.wraps(inner)  # the fast path reads the forward's signature
    def forward(*a, **k):
        with record_function("model.forward"):
            return inner(*a, **k)

    model.forward = forward  # type: ignore[method-assign]
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {len(prompts)} prompts, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = generate(model, base.tokenizer, prompts, settings, args.batch_size, path="fast")
    wall = time.perf_counter() - t0
    model.forward = inner  # type: ignore[method-assign]
    events = prof.key_averages()
    us = {e.key: e.cpu_time_total for e in events}
    self_us = {e.key: e.self_cpu_time_total for e in events}
    calls = {e.key: e.count for e in events}
    fwd = us.get("model.forward", 0.0)
    mm = sum(self_us.get(k, 0.0) for k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"))
    attn = sum(v for k, v in self_us.items() if "attention" in k or "sdpa" in k or "flash" in k)
    print(f"wall {wall:.1f} s under the profiler; {sum(o.n_new_tokens for o in out)} new tokens; "
          f"{calls.get('model.forward', 0)} forwards")
    span = wall * 1e6  # the profiler's times are microseconds; a record_function range's total is its elapsed time
    print(f"inside the model's forward: {fwd / span:.1%} of the wall time (its operators' own time: matrix products "
          f"{mm / span:.1%}, attention {attn / span:.1%}, everything else in the forward, HF's Python included, "
          f"{(fwd - mm - attn) / span:.1%})")
    print(f"outside the forward (the loop: refill, stops, cache, sampling): {1 - fwd / span:.1%}; with it at zero the "
          f"same forwards would take {fwd / span:.2f}x the time, a ceiling of {span / fwd:.2f}x over this loop")
    print("\ntop operators by self CPU time:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"  {e.key:<40} {e.self_cpu_time_total / span:6.1%} of the wall  ({e.count} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
