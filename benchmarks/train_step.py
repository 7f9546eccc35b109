"""Training-step throughput and peak memory on the real base model, as ratios to a baseline run in
the same invocation.

Variants (each in a fresh subprocess, so the CPU's max-RSS figure belongs to that variant alone):

- ``loop-b1``:   the baseline: plain PEFT + torch loop (AdamW, clipping), batch 1
- ``loop-bN``:   the same loop at batch N
- ``recipe-bN``: ``harness.train.recipe.train_adapter`` (TRL SFTTrainer + PEFT) at batch N, timed per step by a callback
- ``kernels-bN`` (with ``--kernels``): the same recipe with ``kernels: true`` (train/kernels; the path it took,
  Triton or the PyTorch reference, is printed); ``liger-bN``: the plain loop on a Liger-patched model, where
  ``liger_kernel`` is installed

Tokens/s counts the tokens actually fed (every example is the same text, so no padding). Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU, ``resource.getrusage`` max RSS on the CPU.

    python benchmarks/train_step.py                      # smollm2-135m, cuda if present else cpu
    python benchmarks/train_step.py --steps 3 --batch 4  # shorter
    python benchmarks/train_step.py --kernels            # adds kernels-bN (and liger-bN where installed)
    python benchmarks/train_step.py --kernels --seq-len 2048 --batch 8   # the issue's GPU target shape
    python benchmarks/train_step.py --random-init DIR    # same architecture, random weights, from DIR's
                                                         # config + tokenizer (a machine without the weights)

Speed does not depend on the weights' values, so ``--random-init`` gives the same step times.

Measured 2026-11-25 on one NVIDIA H100 80GB (random-init smollm2-135m shapes, bf16, 10 timed steps after 3
warm-up; ``--random-init`` because the 538 MB weights could not travel to that machine):

    batch 8:  loop-b1 503 tok/s, 559 MiB | loop-b8 9.06x tok/s, 3.25x MiB | recipe-b8 7.93x tok/s, 2.24x MiB
    batch 32: loop-b1 560 tok/s, 559 MiB | loop-b32 27.3x tok/s, 10.7x MiB | recipe-b32 27.8x tok/s, 6.66x MiB

At this size a step is launch-bound (about 0.25 s at batch 1 to 32), so tokens/s grows almost linearly with
the batch. CPU figures on a shared 2-core machine swing several-fold with other load; compare them only
within one run and with care.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROW = {"prompt": "Please send three red hoodies, size M, express shipping to 12 Main Street, Springfield. " * 3,
       "completion": '{"item": "hoodie", "color": "red", "size": "M", "quantity": 3, "shipping": "express"}'}


def _base(args: argparse.Namespace):
    from harness.models.base import load_base, resolve_base

    if args.random_init:
        import tempfile

        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        out = Path(tempfile.mkdtemp(prefix="bench-base-"))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.random_init))
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(args.random_init).save_pretrained(out)
        return load_base(resolve_base(str(out)), device=args.device)
    return load_base(resolve_base(args.base), device=args.device)


def _peak_mb(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _tokens_per_example(tokenizer, row: dict = ROW) -> int:
    from collections.abc import Mapping

    ids = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                         {"role": "assistant", "content": row["completion"]}], tokenize=True)
    return len(ids["input_ids"] if isinstance(ids, Mapping) else ids)


def _row(args: argparse.Namespace, tokenizer) -> dict:
    """The benchmark example, its prompt repeated to about ``--seq-len`` tokens (where compute dominates)."""
    if not args.seq_len:
        return ROW
    repeat = max(1, round(args.seq_len / _tokens_per_example(tokenizer)))
    return {"prompt": ROW["prompt"] * repeat, "completion": ROW["completion"]}


def run_loop(args: argparse.Namespace, batch: int, liger: bool = False) -> dict:
    """Baseline: PEFT LoRA + a plain torch training loop, no Trainer (``liger``: on a Liger-patched model)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from harness.train.spec import TrainSpec

    base = _base(args)
    if liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=base.model)
    spec = TrainSpec()
    dtype = torch.bfloat16 if base.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    # as the recipe does: the base in its loaded dtype (bf16 on a GPU that has it) under autocast, else fp32
    model = get_peft_model(base.model if dtype != torch.float32 else base.model.float(), LoraConfig(
        r=spec.r, lora_alpha=spec.lora_alpha, target_modules=list(spec.target_modules), task_type="CAUSAL_LM"))
    model.train()
    row = _row(args, base.tokenizer)
    text = base.tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                               {"role": "assistant", "content": row["completion"]}], tokenize=False)
    enc = base.tokenizer([text] * batch, return_tensors="pt").to(base.device)
    labels = enc["input_ids"].clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate)
    if base.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        if base.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(base.device, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if base.device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    tokens = int(enc["attention_mask"].sum())
    return {"device": base.device, "batch": batch, "tokens_per_step": tokens, "seconds_per_step": sum(times) / len(times),
            "peak_mb": _peak_mb(base.device), "precision": str(dtype).removeprefix("torch.")}


def run_recipe(args: argparse.Namespace, batch: int, kernels: bool = False) -> dict:
    """The harness's recipe: TRL SFTTrainer + PEFT, timed per optimiser step by a callback."""
    import torch
    from transformers import TrainerCallback

    from harness.train.recipe import train_adapter
    from harness.train.spec import TrainSpec

    base = _base(args)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if base.device == "cuda":
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if base.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    if base.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    spec = TrainSpec(base=str(base.ref.path), max_steps=args.warmup + args.steps, per_device_train_batch_size=batch,
                     logging_steps=args.warmup + args.steps, kernels=kernels,
                     max_seq_length=max(512, (args.seq_len or 0) + 256))
    row = _row(args, base.tokenizer)
    path_line: list[str] = []
    import tempfile

    result = train_adapter(spec, Path(tempfile.mkdtemp(prefix="bench-out-")), examples=[row] * (batch * (args.warmup + args.steps)),
                           base=base, log=lambda s: path_line.append(s) if "kernels:" in s else None,
                           callbacks=[Timer()])
    measured = times[args.warmup:]
    record = json.loads((result.adapter_dir / "harness.json").read_text())
    return {"device": base.device, "batch": batch, "tokens_per_step": batch * _tokens_per_example(base.tokenizer, row),
            "seconds_per_step": sum(measured) / len(measured), "peak_mb": _peak_mb(base.device),
            "precision": record["precision"], "kernels": (record.get("kernels") or {}).get("name"),
            "note": path_line[0].strip() if path_line else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--random-init", default=None, metavar="DIR", help="config + tokenizer dir: random weights, same shapes")
    p.add_argument("--device", default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--seq-len", type=int, default=None, help="repeat the prompt to about this many tokens per example")
    p.add_argument("--kernels", action="store_true", help="also time the recipe with train/kernels (and Liger, if installed)")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = p.parse_args()
    if args.variant:
        kind, _, b = args.variant.partition("-b")
        if kind in ("loop", "liger"):
            result = run_loop(args, int(b), liger=kind == "liger")
        else:
            result = run_recipe(args, int(b), kernels=kind == "kernels")
        print("RESULT " + json.dumps(result))
        return 0

    variants = ["loop-b1", f"loop-b{args.batch}", f"recipe-b{args.batch}"]
    if args.kernels:
        variants.append(f"kernels-b{args.batch}")
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is not None:
            variants.append(f"liger-b{args.batch}")
        else:
            print("liger-kernel is not installed: no liger variant", file=sys.stderr)
    results = {}
    passthrough = [a for a in sys.argv[1:] if a != "--kernels"]
    for v in variants:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, *passthrough, "--variant", v], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{v} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[v] = json.loads(line[len("RESULT "):])
        print(f"  {v}: done in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    base = results["loop-b1"]
    device = base["device"]
    gpu = ""
    if device == "cuda":
        import torch

        gpu = " (" + torch.cuda.get_device_name() + ")"
    print(f"train step on {(args.random_init and 'random-init ') or ''}{args.base}, {device}{gpu}, "
          f"{args.steps} timed steps after {args.warmup} warm-up; baseline = loop-b1")
    memory = "peak GPU MiB (max_memory_allocated)" if device == "cuda" else "peak RSS MiB (getrusage)"
    print(f"{'variant':<12} {'precision':<9} {'tok/step':>8} {'s/step':>8} {'tokens/s':>9} {'x base':>7} {memory:>36} {'x base':>7}")
    base_tps = base["tokens_per_step"] / base["seconds_per_step"]
    for v, r in results.items():
        tps = r["tokens_per_step"] / r["seconds_per_step"]
        print(f"{v:<12} {r['precision']:<9} {r['tokens_per_step']:>8} {r['seconds_per_step']:>8.3f} {tps:>9.0f} "
              f"{tps / base_tps:>7.2f} {r['peak_mb']:>36.0f} {r['peak_mb'] / base['peak_mb']:>7.2f}")
    for v, r in results.items():
        if r.get("note"):
            print(f"{v}: {r['note']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
