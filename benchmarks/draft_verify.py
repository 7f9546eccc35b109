"""Would drafting each scale's answer from its neighbouring scale pay off? The cost of checking a drafted
answer in one forward (speculative decoding's verification) against decoding it step by step, in the
same run, and the share of tokens neighbouring scales of a stored sweep have in common.

    python benchmarks/draft_verify.py [--batch 16,96] [--prompt-tokens 48] [--draft-tokens 32]
                                      [--db harness-demo/harness.duckdb --adapter order-replay]

A sweep could generate scale 0.25 with scale 0.1's answer as the draft: one forward over the prompt
and the draft gives the greedy token at every draft position, the longest agreeing prefix is kept
and decoding goes on from there. That saves time only where verifying a token costs less than
decoding it. Printed per batch size and thread count: the prefill of the prompt, the prefill of
prompt + draft (their difference is the verification), the same number of decode steps, and
verify / decode. With --db, the share of the answers' tokens that lie in the common prefix of two
neighbouring scales (what a draft could have saved at most) and the bound that gives:
saving <= share x (1 - verify / decode) of the decode time. Token ids are random (the time of a
forward does not depend on them); the model is the real one.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def common_prefix_share(db: Path, adapter: str, tokenizer) -> tuple[float, float, int]:
    """(token share in the common prefix with the next-lower scale, share of identical answers, pairs)
    over every stored (suite, example) of ``adapter``; scale 0 is the base model's rows."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT suite_name, example_id, scale, any_value(output) FROM v_scores "
            "WHERE adapter_name = ? AND output IS NOT NULL GROUP BY ALL", [adapter]).fetchall()
        base = con.execute(
            "SELECT suite_name, example_id, any_value(output) FROM v_scores "
            "WHERE adapter_id IS NULL AND output IS NOT NULL GROUP BY ALL").fetchall()
    finally:
        con.close()
    if not rows:
        raise SystemExit(f"{db}: no stored rows of adapter {adapter!r} (`harness runs` lists the names)")
    by: dict[tuple[str, str], dict[float, str]] = {}
    for suite, ex, out in base:
        by.setdefault((suite, ex), {})[0.0] = out
    for suite, ex, scale, out in rows:
        by.setdefault((suite, ex), {})[float(scale)] = out
    common = total = same = pairs = 0
    for outs in by.values():
        scales = sorted(outs)
        for lo, hi in itertools.pairwise(scales):
            a, b = tokenizer.encode(outs[lo]), tokenizer.encode(outs[hi])
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            common += k
            total += len(b)
            same += outs[lo] == outs[hi]
            pairs += 1
    return common / max(1, total), same / max(1, pairs), pairs


def prefill(model, kw: str, ids, n: int, n_prompt: int, sync) -> tuple[float, object]:
    """(seconds, cache) of one forward over the first ``n`` tokens into a fresh cache, with the logits
    verification needs: every position after the prompt's last but one."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    sync()
    t0 = time.perf_counter()
    model(input_ids=ids[:, :n], **{kw: cache}, use_cache=True, logits_to_keep=n - n_prompt + 1)
    sync()
    return time.perf_counter() - t0, cache


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="16,96", help="batch sizes (default: %(default)s)")
    ap.add_argument("--prompt-tokens", type=int, default=48, help="a built-in suite's chat prompt is 40-60 tokens")
    ap.add_argument("--draft-tokens", type=int, default=32, help="the built-in suites' max_new_tokens")
    ap.add_argument("--threads", default=None, help="thread counts (default: 1 and all)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--db", type=Path, default=None, help="a store holding a sweep, for the neighbouring scales' overlap")
    ap.add_argument("--adapter", default=None, help="the adapter's name in --db")
    ap.add_argument("--base", default="smollm2-135m", help="base model name or local directory (default: %(default)s)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import torch

    from harness.models.base import load_base, resolve_base

    base = load_base(resolve_base(args.base), device=args.device)
    model = base.model.eval()
    P, D = args.prompt_tokens, args.draft_tokens
    # transformers 5.x renamed past_key_values to cache (the old name warns)
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, torch.get_num_threads()})
    was = torch.get_num_threads()
    sync = torch.cuda.synchronize if base.device.startswith("cuda") else (lambda: None)
    print(f"{args.base} {base.dtype} on {base.device}; prompt {P} tokens, draft {D} tokens; best of {args.reps}")
    ratios: dict[tuple[int, int], float] = {}
    for b in [int(x) for x in args.batch.split(",")]:
        ids = torch.randint(100, 20000, (b, P + D), device=model.device)
        for t in threads:
            torch.set_num_threads(t)
            with torch.inference_mode():
                prefill(model, kw, ids, P, P, sync)  # warm-up
                t_prompt = min(prefill(model, kw, ids, P, P, sync)[0] for _ in range(args.reps))
                t_both = min(prefill(model, kw, ids, P + D, P, sync)[0] for _ in range(args.reps))
                steps = []
                for _ in range(args.reps):
                    _, cache = prefill(model, kw, ids, P, P, sync)
                    t0 = time.perf_counter()
                    for k in range(D):
                        model(input_ids=ids[:, P + k : P + k + 1], **{kw: cache}, use_cache=True, logits_to_keep=1)
                    sync()
                    steps.append(time.perf_counter() - t0)
                t_decode = min(steps)
            verify = t_both - t_prompt
            ratios[(b, t)] = verify / t_decode
            print(f"  batch {b:>3}, {t} thread(s): prefill {P} {t_prompt:6.2f} s, prefill {P}+{D} {t_both:6.2f} s "
                  f"-> verify {D} {verify:6.2f} s; decode {D} steps {t_decode:6.2f} s; verify / decode {ratios[(b, t)]:.2f}",
                  flush=True)
    torch.set_num_threads(was)
    if args.db is not None:
        if not args.adapter:
            raise SystemExit("--db needs --adapter NAME")
        share, same, pairs = common_prefix_share(args.db, args.adapter, base.tokenizer)
        print(f"{args.adapter} in {args.db}: {pairs} pairs of neighbouring scales; {same:.1%} identical answers; "
              f"{share:.1%} of the higher scale's tokens lie in the common prefix")
        for (b, t), r in ratios.items():
            print(f"  batch {b:>3}, {t} thread(s): a draft saves at most {max(0.0, share * (1 - r)):.1%} of the decode time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
