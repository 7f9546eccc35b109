"""Evaluation speed: the harness's generation path against lm-eval's HF backend and against the
model's own batched-forward speed, on the same prompts, settings and model, in the same run.

    python benchmarks/eval_speed.py [--suite general-knowledge] [--n 64] [--batch-size 16] [--pairs 3]
        [--lmeval-python /tmp/lmeval-venv/bin/python | --install-lmeval | --no-lmeval]

Measured, in alternating order (pair k runs fast, hf, forward, lm-eval; pair k+1 the reverse):
- harness ``fast`` path (the default: continuous batching over the model's forward) and ``hf`` path
  (``model.generate`` on fixed batches, the reference);
- the forward limit: bare batched forward passes with a KV cache (DynamicCache), greedy, the same batch
  size, prompt lengths and max_new_tokens, no stop handling, every row run to max_new_tokens;
- lm-eval 0.4's HFLM ``generate_until`` (greedy, same max_gen_toks, same stop strings), run in a
  subprocess from a separate virtual environment (lm-eval is never a dependency of the harness;
  ``--install-lmeval`` makes one: torch CPU, then lm-eval[hf] with this venv's transformers). Its
  prompts come from its own ``apply_chat_template`` and are checked token-identical to ours first.

Prints wall and CPU seconds, prompts/s and new tokens/s of each, the ratios to lm-eval and to the
forward limit, and how many outputs agree (fast vs hf: must be all; harness vs lm-eval). On a shared
machine the numbers are noisy: compare the ratios of one run, and use several pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LMEVAL_VENV = Path("/tmp/lmeval-venv")

# Runs inside lm-eval's venv: only lm-eval, transformers and torch are importable there.
LMEVAL_SCRIPT = r'''
import json, sys, time
cfg = json.load(open(sys.argv[1]))
import torch
torch.set_num_threads(cfg["threads"])
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
lm = HFLM(pretrained=cfg["model"], dtype="float32", device=cfg.get("device", "cpu"), batch_size=cfg["batch_size"])
rendered = [lm.apply_chat_template(([{"role": "system", "content": cfg["system"]}] if cfg["system"] else [])
                                   + [{"role": "user", "content": t}]) for t in cfg["texts"]]
tokens = [lm.tok_encode(r) for r in rendered]
def requests(prompts):
    gen = {"until": cfg["stop"], "max_gen_toks": cfg["max_new_tokens"], "do_sample": False, "temperature": 0.0}
    return [Instance(request_type="generate_until", doc={}, arguments=(p, dict(gen)), idx=i) for i, p in enumerate(prompts)]
lm.generate_until(requests(rendered[:2]), disable_tqdm=True)  # warm-up, as the harness paths get
runs = []
for _ in range(cfg["repeats"]):
    t0, c0 = time.perf_counter(), time.process_time()
    outs = lm.generate_until(requests(rendered), disable_tqdm=True)
    runs.append({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0})
json.dump({"rendered": rendered, "tokens": tokens, "outputs": outs, "runs": runs,
           "version": __import__("lm_eval").__version__}, open(cfg["out"], "w"))
'''


def install_lmeval(venv: Path) -> Path:
    """A throwaway venv with torch (CPU) and lm-eval[hf], the transformers of this venv pinned."""
    import torch
    import transformers

    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    # the exact torch of this venv: on these machines `pip install torch==2.13.0` takes the CPU wheel on disk
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
    subprocess.run([*pip, "lm-eval[hf]==0.4.*", f"transformers=={transformers.__version__}"], check=True)
    return py


def run_lmeval(py: Path, model_dir: Path, texts: list[str], system: str | None, settings, batch_size: int,
               repeats: int, threads: int, device: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script, cfg_path, out = Path(tmp) / "lmeval_run.py", Path(tmp) / "cfg.json", Path(tmp) / "out.json"
        script.write_text(LMEVAL_SCRIPT)
        cfg_path.write_text(json.dumps({
            "model": str(model_dir), "texts": texts, "system": system, "stop": list(settings.stop),
            "max_new_tokens": settings.max_new_tokens, "batch_size": batch_size, "repeats": repeats,
            "threads": threads, "out": str(out), "device": device,
        }))
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        env.pop("PYTHONPATH", None)
        subprocess.run([str(py), str(script), str(cfg_path)], check=True, env=env, cwd=tmp)
        return json.loads(out.read_text())


def forward_limit(model, encoded: list[list[int]], pad: int, batch_size: int, new_tokens: int) -> int:
    """Bare batched greedy decoding with HF's DynamicCache: length-sorted batches, every row to the end.

    Returns the number of tokens produced (rows x new_tokens)."""
    import torch
    from transformers import DynamicCache

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    produced = 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[start : start + batch_size]]
            width = max(len(e) for e in batch)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in batch], device=model.device)
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in batch], device=model.device)
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            cache = DynamicCache(config=model.config)
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            last = pos[:, -1:]
            for _ in range(new_tokens - 1):
                mask = torch.cat([mask, mask.new_ones(len(batch), 1)], 1)
                last = last + 1
                out = model(input_ids=nxt, attention_mask=mask, position_ids=last, cache=cache, use_cache=True, logits_to_keep=1)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            produced += len(batch) * new_tokens
    return produced


def timed(fn):
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the GPU's queued work is part of the time
    return value, time.perf_counter() - t0, time.process_time() - c0


def sweep_rows(base, prompts, settings, batch_size: int, scales=(0.1, 0.25, 0.5, 0.75, 1.0)) -> None:
    """A sweep's rows per second against the base model's: every prompt at the base and 5 scales of a LoRA adapter (r 16
    on every projection, random B: the speed does not depend on the weights) in the engine's shared batches, each
    (adapter, scale) a route, against the base model alone on the same prompts; the same decode path and batch rows
    per model. Its own question: how much of a sweep's cost is the scales' rows (compute-bound: the rows are real
    work), and how much the sharing saves over running them one model at a time."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model

    from harness.evaluation.engine import attached
    from harness.evaluation.runner import DEFAULT_MAX_BATCH, shared_batch_rows
    from harness.evaluation.targets import expand_targets
    from harness.generation.generate import generate
    from harness.models.adapters import inspect_adapter

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        cfg = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])
        pm = get_peft_model(base.model, cfg)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
        pm.save_pretrained(tmp)
        base.model = pm.unload()
        adapter = inspect_adapter(tmp)
        targets = expand_targets([adapter], [0.0, *scales])
        before = os.getloadavg()[0]
        _, alone, _ = timed(lambda: generate(base.model, base.tokenizer, prompts, settings, batch_size, path="fast"))
        with attached(base, targets, None) as group:
            items = [(t, p) for t in targets for p in prompts]
            rows = shared_batch_rows(batch_size, DEFAULT_MAX_BATCH, len(targets))
            _, shared, _ = timed(lambda: generate(group.model, base.tokenizer, [p for _, p in items], settings, rows,
                                                  adapter_names=group.route([t for t, _ in items]), path="fast"))
        after = os.getloadavg()[0]
    n = len(prompts)
    print(f"\nsweep rows: the base model alone {n} rows in {alone:.1f} s ({n / alone:.2f} rows/s, batch {batch_size}); "
          f"the base and {len(scales)} scales, {n * len(targets)} rows in shared batches of up to {rows}: {shared:.1f} s "
          f"({n * len(targets) / shared:.2f} rows/s, {shared / alone:.2f}x the base alone for {len(targets)}x the rows; "
          f"load {before:.2f} / {after:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--suite", default="general-knowledge")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds of all contenders (default: %(default)s)")
    ap.add_argument("--lmeval-python", type=Path, default=LMEVAL_VENV / "bin" / "python")
    ap.add_argument("--install-lmeval", action="store_true", help=f"create {LMEVAL_VENV} with lm-eval first")
    ap.add_argument("--no-lmeval", action="store_true")
    ap.add_argument("--skip-hf", action="store_true", help="skip the harness hf path (identity then unchecked)")
    ap.add_argument("--device", default="cpu", help="torch device, for every contender (default: %(default)s)")
    ap.add_argument("--sweep", action="store_true",
                    help="also time a sweep's shared batches (the base and 5 scales of a LoRA adapter: rows/s) against the "
                         "base model alone on the same prompts")
    args = ap.parse_args()

    import torch

    from harness.generation.generate import generate, render_prompt
    from harness.models.base import load_base, resolve_base
    from harness.suites.spec import load_examples, load_suite, render_user_text

    ref = resolve_base(args.base)
    base = load_base(ref, device=args.device)
    on_gpu = base.device.startswith("cuda")
    suite = load_suite(args.suite)
    settings = suite.generation
    examples = load_examples(suite, args.n)
    texts = [render_user_text(suite, e) for e in examples]
    prompts = [render_prompt(base.tokenizer, t, suite.prompt.system, suite.prompt.raw) for t in texts]
    encoded = [base.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n = len(prompts)
    print(f"{n} prompts from {suite.name} ({min(map(len, encoded))}-{max(map(len, encoded))} tokens), "
          f"batch {args.batch_size}, greedy, max_new_tokens={settings.max_new_tokens}, stop={list(settings.stop)}, "
          f"{base.dtype} on {base.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    py = args.lmeval_python
    if args.install_lmeval:
        py = install_lmeval(LMEVAL_VENV)
    use_lmeval = not args.no_lmeval and py.exists()
    if not args.no_lmeval and not use_lmeval:
        print(f"lm-eval: {py} not found (run with --install-lmeval); skipped")

    warm = prompts[: min(4, n)]
    generate(base.model, base.tokenizer, warm, settings, args.batch_size, path="fast")
    generate(base.model, base.tokenizer, warm, settings, args.batch_size, path="hf")

    rows: dict[str, list[tuple[float, float, int]]] = {}
    outputs: dict[str, list[str | None]] = {}
    lm: dict | None = None

    def fast():
        g, w, c = timed(lambda: generate(base.model, base.tokenizer, prompts, settings, args.batch_size, path="fast",
                                         log=lambda line: print("  " + line, flush=True)))
        print(f"  fast: {w:.1f}s wall", flush=True)
        outputs["fast"] = [x.text for x in g]
        rows.setdefault("harness fast", []).append((w, c, sum(x.n_new_tokens for x in g)))

    def hf():
        g, w, c = timed(lambda: generate(base.model, base.tokenizer, prompts, settings, args.batch_size, path="hf"))
        outputs["hf"] = [x.text for x in g]
        print(f"  hf: {w:.1f}s wall", flush=True)
        rows.setdefault("harness hf (model.generate)", []).append((w, c, sum(x.n_new_tokens for x in g)))

    def fwd():
        # the limit is the better of the default thread count and 1 thread (what the fast path may pick)
        now = torch.get_num_threads()
        for threads in [now] if on_gpu else sorted({now, 1}, reverse=True):
            torch.set_num_threads(threads)
            try:
                k, w, c = timed(lambda: forward_limit(base.model, encoded, base.tokenizer.pad_token_id, args.batch_size,
                                                      settings.max_new_tokens))
            finally:
                torch.set_num_threads(now)
            rows.setdefault(f"forward limit, {threads} thread(s)", []).append((w, c, k))
            print(f"  forward limit on {threads} thread(s): {w:.1f}s wall", flush=True)

    def lmeval():
        nonlocal lm
        lm = run_lmeval(py, ref.path, texts, suite.prompt.system if not suite.prompt.raw else None, settings,
                        args.batch_size, 1, torch.get_num_threads(), base.device)
        outs = lm["outputs"]
        n_tok = sum(len(base.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outs)  # re-tokenised
        print(f"  lm-eval: {lm['runs'][0]['wall']:.1f}s wall", flush=True)
        rows.setdefault(f"lm-eval {lm['version']} HFLM", []).append((lm["runs"][0]["wall"], lm["runs"][0]["cpu"], n_tok))

    contenders = [fast] + ([] if args.skip_hf else [hf]) + [fwd] + ([lmeval] if use_lmeval else [])
    loads: list[tuple[int, str, float, float]] = []
    for k in range(args.pairs):
        for fn in (contenders if k % 2 == 0 else contenders[::-1]):
            before = os.getloadavg()[0]
            fn()
            loads.append((k + 1, fn.__name__, before, os.getloadavg()[0]))
    print("\nload average (1 min) before / after each measurement: "
          + "; ".join(f"pair {k} {name} {a:.2f}/{b:.2f}" for k, name, a, b in loads))

    if lm is not None:
        same_text = sum(a == b for a, b in zip(lm["rendered"], prompts))
        same_tok = sum(a == b for a, b in zip(lm["tokens"], encoded))
        print(f"prompts: lm-eval's chat template gives the same text for {same_text}/{n}, the same tokens for {same_tok}/{n}")
    import statistics

    print(f"\n{'path':44s} {'median s':>8s} {'range s':>13s} {'cpu s':>8s} {'prompts/s':>10s} {'tokens':>7s} {'tokens/s':>9s}")
    best = {}
    for name, rs in rows.items():
        # the median over the pairs (the range beside it); the ratios below are of medians
        w = statistics.median(r[0] for r in rs)
        r = sorted(rs)[len(rs) // 2]
        best[name] = (w, r[1], r[2])
        print(f"{name:44s} {w:8.1f} {min(x[0] for x in rs):6.1f}-{max(x[0] for x in rs):<6.1f} {r[1]:8.1f} {n / w:10.2f} "
              f"{r[2]:7d} {r[2] / w:9.1f}" + (f"   (walls: {', '.join(f'{x[0]:.1f}' for x in rs)})" if len(rs) > 1 else ""))
    lm_name = next((x for x in rows if x.startswith("lm-eval")), None)
    if lm_name and len(rows[lm_name]) == len(rows["harness fast"]) > 1:
        per_pair = [b[0] / a[0] for a, b in zip(rows["harness fast"], rows[lm_name])]
        print(f"harness fast vs lm-eval, pair by pair: {', '.join(f'{x:.2f}x' for x in per_pair)} "
              f"(median {statistics.median(per_pair):.2f}x)")
    fast_w, _, fast_tok = best["harness fast"]
    print()
    for name, (w, _, tok) in best.items():
        if name.startswith("lm-eval"):
            print(f"harness fast vs {name}: {w / fast_w:.2f}x its throughput (prompts/s)")
        if name.startswith("harness hf"):
            print(f"harness fast vs harness hf: {w / fast_w:.2f}x")
        if name.startswith("forward limit") and (w == min(v[0] for x, v in best.items() if x.startswith("forward limit"))):
            print(f"harness fast tokens/s vs the forward limit ({name}): {(fast_tok / fast_w) / (tok / w):.2f}x "
                  f"(useful tokens: rows stop at {list(settings.stop)} or an end token; the limit runs every row "
                  f"to {settings.max_new_tokens})")
    if args.sweep:
        sweep_rows(base, prompts, settings, args.batch_size)
    if "hf" in outputs:
        print(f"fast == hf (the reference path): {sum(a == b for a, b in zip(outputs['fast'], outputs['hf']))}/{n} outputs identical")
    if lm is not None:
        lm_out = [cut.strip() for cut in lm["outputs"]]
        print(f"harness fast == lm-eval: {sum((a or '').strip() == b for a, b in zip(outputs['fast'], lm_out))}/{n} "
              "outputs agree (stripped)")
        if "hf" in outputs:
            print(f"harness hf == lm-eval: {sum((a or '').strip() == b for a, b in zip(outputs['hf'], lm_out))}/{n}")


if __name__ == "__main__":
    main()
