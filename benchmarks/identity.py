"""Greedy outputs of the fast generation path against the reference path, on every built-in suite.

For each suite under ``suites/`` (``--limit`` examples each, the harness's stratified sample):
- the base model: the fast decode loop against ``model.generate`` (``HARNESS_GENERATE=hf``);
- with ``--adapter``: the sweep's routing (base, the adapter at 0.5 and at 1 in shared batches, one
  copy of the adapter, a LoRA scale per row) on the fast path, against ``model.generate`` on the
  adapter loaded the plain PEFT way with ``set_scale`` (one model per scale).

Prints the agreement per suite and model; exits 1 when any output differs.

    .venv/bin/python benchmarks/identity.py [--adapter DIR] [--limit 24] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--adapter", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=24, help="examples per suite (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    from harness.evaluation.engine import attached
    from harness.evaluation.targets import Target
    from harness.generation.generate import generate, render_prompt
    from harness.models.adapters import inspect_adapter, load_adapter, set_scale
    from harness.models.base import load_base, resolve_base
    from harness.suites import taskformat
    from harness.suites.spec import builtin_suites, load_examples, load_suite, render_user_text

    base = load_base(resolve_base(args.base))
    info = inspect_adapter(args.adapter) if args.adapter else None
    suites = [load_suite(n) for n in builtin_suites()]
    examples = {s.name: load_examples(s, args.limit) for s in suites}
    keys, _ = taskformat.resolve(suites, examples, [info] if info else [], None)
    suites = taskformat.with_leakage(suites, keys)
    bad = 0
    t0 = time.perf_counter()
    for s in suites:
        prompts = [render_prompt(base.tokenizer, render_user_text(s, e), s.prompt.system, s.prompt.raw) for e in examples[s.name]]
        fast = generate(base.model, base.tokenizer, prompts, s.generation, args.batch_size, path="fast")
        ref = generate(base.model, base.tokenizer, prompts, s.generation, args.batch_size, path="hf")
        same = sum(a.text == b.text for a, b in zip(fast, ref))
        bad += len(prompts) - same
        print(f"{s.name:18s} base            fast == model.generate: {same}/{len(prompts)}", flush=True)
        if info is None:
            continue
        targets = [Target(None, 0.0), Target(info, 0.5), Target(info, 1.0)]
        rows = [(t, p) for p in prompts for t in targets]
        with attached(base, targets, checks=[]) as group:
            swept = generate(group.model, base.tokenizer, [p for _, p in rows], s.generation, args.batch_size * 3,
                             adapter_names=group.route([t for t, _ in rows]), path="fast")
            how = group.how
        for k, t in enumerate(targets):
            mine = [g.text for (tt, _), g in zip(rows, swept) if tt == t]
            if t.adapter is None:
                want = [g.text for g in ref]
            else:
                pm = load_adapter(base.model, info)
                set_scale(pm, t.scale)
                want = [g.text for g in generate(pm, base.tokenizer, prompts, s.generation, args.batch_size, path="hf")]
                base.model = pm.unload()
            same = sum(a == b for a, b in zip(mine, want))
            bad += len(prompts) - same
            print(f"{s.name:18s} {t.label.split('[')[0] + '@' + format(t.scale, 'g'):15s} sweep == plain PEFT + model.generate: "
                  f"{same}/{len(prompts)}" + (f"   ({how})" if k == 0 else ""), flush=True)
    print(f"{'all outputs identical' if bad == 0 else f'{bad} outputs differ'} ({time.perf_counter() - t0:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
