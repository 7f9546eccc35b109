"""Per-op time and peak memory of the fused kernels against the Hugging Face / PEFT module and our PyTorch
reference, in the same invocation, at SmolLM2-135M shapes (hidden 576, MLP 1536, 9 query / 3 KV heads of
64, vocabulary 49152, LoRA r 16).

Each (op, variant) runs forward + backward in a fresh subprocess, so a peak belongs to that variant alone:
on a GPU ``torch.cuda.max_memory_allocated`` above what the inputs hold; on the CPU the peak resident set
above the inputs (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the op).

On the CPU the Triton kernels only run in Triton's interpreter (``--interpret``), which is thousands of
times slower than compiled code: its *times* mean nothing, its *memory* figures still show what the chunked
cross-entropy saves. Without ``--interpret`` the CPU run times the HF modules against the references.

    python benchmarks/kernel_ops.py                          # every op; cuda if present, else cpu
    python benchmarks/kernel_ops.py --ops linear_cross_entropy --interpret --tokens 1024
    python benchmarks/kernel_ops.py --tokens 8192 --reps 20  # on a GPU

Measured 2026-12-01 on the shared 2-core CPU machine (no GPU in that session; GPU figures: not yet
measured), 1024 tokens: see the README's "Kernels" section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB, RANK = 576, 1536, 9, 3, 64, 49152, 16
OPS = ("rms_norm", "rope", "swiglu", "lora_linear", "linear_cross_entropy", "multi_scale_lora")
VARIANTS = {  # the first variant of each op is its baseline
    "rms_norm": ("hf", "reference", "triton"),
    "rope": ("hf", "reference", "triton"),
    "swiglu": ("hf", "reference", "triton"),
    "lora_linear": ("peft", "reference", "triton"),
    "linear_cross_entropy": ("full-logits", "chunked-reference", "chunked-triton"),
    "multi_scale_lora": ("reference", "triton"),
}


def _build(op: str, variant: str, tokens: int, device: str, dtype):
    """(inputs that need gradients, a closure running forward + backward) for one op and variant."""
    import torch

    from harness.train.kernels import linear_cross_entropy as lce
    from harness.train.kernels import lora_linear as ll
    from harness.train.kernels import multi_scale_lora as msl
    from harness.train.kernels import rms_norm as rn
    from harness.train.kernels import rope as rp
    from harness.train.kernels import swiglu as sw

    def rand(*shape, grad=True, scale=1.0):
        return (torch.randn(*shape, device=device, dtype=dtype) * scale).requires_grad_(grad)

    tri = variant.endswith("triton")
    if op == "rms_norm":
        x, w = rand(tokens, HIDDEN), torch.ones(HIDDEN, device=device, dtype=dtype)
        if variant == "hf":
            from transformers.models.llama.modeling_llama import LlamaRMSNorm

            mod = LlamaRMSNorm(HIDDEN, eps=1e-5).to(device, dtype).requires_grad_(False)
            return lambda: mod(x).sum().backward()
        return lambda: rn.rms_norm(x, w, 1e-5, use_triton=tri).sum().backward()
    if op == "rope":
        q, k = rand(1, HEADS, tokens, HEAD_DIM), rand(1, KV_HEADS, tokens, HEAD_DIM)
        ang = torch.randn(1, tokens, HEAD_DIM // 2, device=device, dtype=dtype)
        emb = torch.cat([ang, ang], -1)
        cos, sin = emb.cos(), emb.sin()
        if variant == "hf":
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            return lambda: sum(t.sum() for t in apply_rotary_pos_emb(q, k, cos, sin)).backward()
        return lambda: sum(t.sum() for t in rp.rope(q, k, cos, sin, use_triton=tri)).backward()
    if op == "swiglu":
        g, u = rand(tokens, INTER), rand(tokens, INTER)
        if variant == "hf":
            from transformers.activations import ACT2FN

            act = ACT2FN["silu"]
            return lambda: (act(g) * u).sum().backward()
        return lambda: sw.swiglu(g, u, use_triton=tri).sum().backward()
    if op == "lora_linear":
        x = rand(tokens, HIDDEN)
        w = rand(INTER, HIDDEN, grad=False, scale=0.05)
        a, b = rand(RANK, HIDDEN, scale=0.05), rand(INTER, RANK, scale=0.05)
        if variant == "peft":
            from peft import LoraConfig, get_peft_model

            holder = torch.nn.Module()
            holder.proj = torch.nn.Linear(HIDDEN, INTER, bias=False)
            layer = get_peft_model(holder, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["proj"]))
            layer = layer.base_model.model.proj.to(device, dtype)
            return lambda: layer(x).sum().backward()
        return lambda: ll.lora_linear(x, w, None, a, b, 2.0, use_triton=tri).sum().backward()
    if op == "linear_cross_entropy":
        # the LoRA case: a frozen LM head (tied to the embeddings), gradients for the hidden states only
        h = rand(tokens, HIDDEN, scale=0.5)
        w = rand(VOCAB, HIDDEN, grad=False, scale=0.05)
        labels = torch.randint(0, VOCAB, (tokens,), device=device)
        if variant == "full-logits":
            return lambda: lce.reference_linear_cross_entropy(h, w, labels).backward()
        return lambda: lce.linear_cross_entropy(h, w, labels, use_triton=tri).backward()
    if op == "multi_scale_lora":
        # a sweep batch: 8 scales of one adapter's (A, B) over the rows; forward only, as sweeps generate
        x, base = rand(tokens, HIDDEN, grad=False), rand(tokens, HIDDEN, grad=False)
        a, b = rand(8, RANK, HIDDEN, grad=False, scale=0.05), rand(8, HIDDEN, RANK, grad=False, scale=0.05)
        scaling = torch.linspace(0, 2, 8, device=device, dtype=dtype)
        idx = torch.arange(tokens, device=device) % 8
        return lambda: msl.multi_scale_lora(x, base, a, b, scaling, idx, use_triton=tri)
    raise ValueError(op)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(op: str, variant: str, tokens: int, device: str, reps: int, dtype_name: str) -> dict:
    """Run one (op, variant) here: median seconds per forward + backward, and the peak memory in MiB."""
    import torch

    dtype = getattr(torch, dtype_name)
    fn = _build(op, variant, tokens, device, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - start) / 2**20
    else:
        before = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
        fn()
        peak = (_rss_kib("VmHWM") - before) / 1024
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times) if times else None, "peak_mib": peak}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--tokens", type=int, default=1024, help="tokens (rows) per call")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32 (CPU default) | bfloat16 (GPU default) | float16")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions after the first (measured) call")
    p.add_argument("--interpret", action="store_true", help="CPU: run the Triton variants in Triton's interpreter")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: op:variant, print JSON
    args = p.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    reps = args.reps if args.reps is not None else (20 if device == "cuda" else 3)
    if args.one:
        op, variant = args.one.split(":")
        triton_cpu = device == "cpu" and variant.endswith("triton")
        print("RESULT " + json.dumps(measure(op, variant, args.tokens, device, 0 if triton_cpu else reps, dtype)))
        return 0

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if args.interpret:
        env["TRITON_INTERPRET"] = "1"
    gpu = f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""
    print(f"kernels on {device}{gpu}, {dtype}, {args.tokens} tokens, SmolLM2-135M shapes; forward + backward "
          f"(multi_scale_lora: forward); median of {reps} after one measured call")
    if device == "cpu":
        print("CPU: peak = resident-set growth over the inputs; Triton variants "
              + ("run in the interpreter: their times are meaningless, not shown" if args.interpret
                 else "skipped (add --interpret for their memory)"))
    try:
        import liger_kernel  # noqa: F401

        print("liger-kernel is installed: benchmarks/train_step.py --kernels compares a Liger-patched model")
    except ImportError:
        print("liger-kernel is not installed here: no Liger column")
    print(f"{'op':<22} {'variant':<18} {'ms':>9} {'x base':>7} {'peak MiB':>9} {'x base':>7}")
    for op in args.ops.split(","):
        base = None
        for variant in VARIANTS[op]:
            if device == "cpu" and variant.endswith("triton") and not args.interpret:
                continue
            proc = subprocess.run([sys.executable, __file__, "--one", f"{op}:{variant}", "--tokens", str(args.tokens),
                                   "--device", device, "--dtype", dtype, "--reps", str(reps)],
                                  capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{op}:{variant} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            r = json.loads(line[len("RESULT "):])
            base = base or r
            ms = "-" if r["seconds"] is None else f"{r['seconds'] * 1e3:.2f}"
            t_ratio = "-" if r["seconds"] is None or not base["seconds"] else f"{r['seconds'] / base['seconds']:.2f}"
            m_ratio = f"{r['peak_mib'] / base['peak_mib']:.2f}" if base["peak_mib"] > 0 else "-"
            print(f"{op:<22} {variant:<18} {ms:>9} {t_ratio:>7} {r['peak_mib']:>9.1f} {m_ratio:>7}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
