"""`harness train`: train a LoRA adapter (or a grid of them) from a spec, record it in the store.

Parse, build, run, print: the work lives in ``train/`` (``run``: the points of a grid, resume, the
store run of each; ``recipe``: one adapter; spec, checkpoints, grid, record).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.commands._common import add_db_argument
from harness.errors import UsageError

if TYPE_CHECKING:
    from harness.train.recipe import TrainResult

# One line per spec field for --help; the defaults come from TrainSpec itself.
FIELD_HELP = {
    "base": "base model: 'smollm2-135m' (embedded) or a local model directory",
    "data": "training data: JSONL/JSON/CSV/Parquet file or dataset directory; for data as it is, "
            "data: {path: FILE, fields: {prompt: COLUMN, completion: COLUMN}}",
    "data_fields": "column mapping of the data (set through data.fields): prompt/completion, "
                   "instruction/input/output or messages -> your column names",
    "r": "LoRA rank (usual 8-64)",
    "lora_alpha": "LoRA alpha; the update is scaled by alpha/r (usual r or 2r)",
    "lora_dropout": "dropout on the LoRA input (0 or 0.05-0.2)",
    "target_modules": "projections to adapt, comma-separated",
    "bias": "none | all | lora_only",
    "use_rslora": "rank-stabilised scaling alpha/sqrt(r)",
    "use_dora": "weight-decomposed LoRA",
    "init_lora_weights": "default | gaussian | pissa | loftq (loftq needs bitsandbytes and a CUDA GPU)",
    "learning_rate": "peak learning rate (LoRA usual 5e-5 to 2e-4)",
    "num_train_epochs": "passes over the data",
    "max_steps": "stop after this many optimiser steps (-1: by epochs)",
    "per_device_train_batch_size": "examples per device per step",
    "gradient_accumulation_steps": "steps accumulated per optimiser update",
    "warmup_ratio": "share of steps with a rising LR (ignored when warmup_steps is set)",
    "warmup_steps": "a fixed number of warmup steps (replaces warmup_ratio)",
    "lr_scheduler_type": "linear | cosine | constant | ...",
    "weight_decay": "AdamW weight decay (usual 0.01-0.1)",
    "max_grad_norm": "gradient clipping (0.3-1.0; 0 disables)",
    "precision": "auto | fp32 | bf16 | fp16 (auto: bf16 on a GPU that has it, else fp32)",
    "gradient_checkpointing": "auto | true | false",
    "max_seq_length": "tokens per example after truncation",
    "seed": "seed of LoRA init, data order and dropout",
    "mix": "data mixed in against forgetting, as shares of the mixed set: '{general: 0.2}' (base-model replay, or general_data), '{parent: 0.3}' (the parent adapter's data, with --from-adapter)",
    "general_data": "your own general dataset for mix.general (any training data format) instead of base-model replay",
    "stop_on_anomaly": "stop training when the live anomaly check finds an error (NaN, divergence, no learning)",
    "logging_steps": "log loss/grad_norm/lr every N steps",
    "eval_split": "held-out share of the rows for an eval loss (0: none)",
    "eval_steps": "eval every N steps (default: logging_steps)",
    "early_stopping_patience": "stop after N evals without a lower eval_loss (needs eval_split)",
    "save_steps": "resumable checkpoint every N steps under OUT/checkpoints (default: only on SIGTERM)",
    "kernels": "fused Triton kernels (RMSNorm, RoPE, SwiGLU, LoRA linear, chunked LM-head cross-entropy); same as --kernels",
}


def _fields_epilog() -> str:
    from harness.train.spec import TrainSpec

    lines = ["spec fields (YAML keys; override any with --set FIELD=VALUE):"]
    for f in dataclasses.fields(TrainSpec):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]  # mypy does not narrow default_factory from MISSING
        if isinstance(default, tuple):
            default = ",".join(default)
        lines.append(f"  {f.name:<28} {FIELD_HELP.get(f.name, '')} (default: {default})")
    lines += [
        "",
        "exit codes: 0 trained; 1 stopped by the anomaly check (NaN, divergence, no learning: no adapter written);",
        "143 stopped by SIGTERM after saving a complete checkpoint (the message says how to resume); 130 Ctrl-C",
        "(no new checkpoint; --resume continues from the last save_steps one, if any); 2 bad spec, flag or data;",
        "3 adapter (or a record) incompatible with this harness or the base; 4 refused for safety; 5 storage trouble.",
        "Every run is in the store (`harness runs`) from its start: complete, stopped, interrupted or failed.",
    ]
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a LoRA adapter (or a grid of them) from a spec",
        description=(
            "Train a LoRA adapter with TRL's SFTTrainer as SPEC says, write it to OUT (PEFT files + harness.json + "
            "step_logs.jsonl) and record the adapter and its step logs in the results store. SIGTERM stops after "
            "the current step with a saved checkpoint; --resume continues from it."
        ),
        epilog=_fields_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", type=Path, metavar="SPEC.yaml", help="training spec: a YAML mapping of the fields below")
    p.add_argument("--data", default=None, metavar="F", help="training data file; overrides the spec's data")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="adapter directory (default: adapters/NAME); with --grid, the parent of one directory per point")
    p.add_argument("--force", action="store_true", help="replace an adapter already in the output directory")
    p.add_argument("--name", default=None, help="adapter name in the store and in grid directory names (default: the spec file's stem)")
    add_db_argument(p)
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set learning_rate=1e-4 r=8; repeatable")
    p.add_argument("--from-adapter", type=Path, default=None, metavar="DIR",
                   help="continue training this adapter (loaded trainable); recorded as the new adapter's parent")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint under OUT/checkpoints (partial ones are quarantined); "
                        "refused if the spec or data changed")
    p.add_argument("--grid", action="extend", nargs="+", default=[], metavar="FIELD=V1,V2",
                   help="train one adapter per combination, e.g. --grid r=8,16 lora_alpha=16,32 -> OUT/NAME-r8-alpha16 ...")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--kernels", action="store_true",
                   help="train with the fused kernels (train/kernels); HARNESS_KERNELS=triton|reference forces a path")


def run(args: argparse.Namespace) -> int:
    from harness.util import distributed

    # Under `accelerate launch` / `torchrun` every rank trains (the Trainer's DDP); the main process
    # writes the adapter and its store rows, and every rank exits with the main process's code.
    return distributed.agree(_run(args))


def _run(args: argparse.Namespace) -> int:
    from harness.util.extras import require

    require(("trl", "accelerate"), "train", "harness train")
    from harness.jobs.train import TrainRequest, train
    from harness.util import distributed

    main = distributed.is_main()
    log = (lambda m: print(m, file=sys.stderr)) if main else (lambda m: None)
    overrides = _parse_sets(args.overrides)
    if args.data is not None:
        overrides["data"] = args.data
    if args.kernels:
        overrides["kernels"] = True
    req = TrainRequest(spec_path=args.spec, overrides=overrides, grid=tuple(args.grid), name=args.name, out=args.out,
                       force=args.force, resume=args.resume, from_adapter=args.from_adapter, device=args.device,
                       db=args.db, command=shlex.join(["harness", *sys.argv[1:]]))
    plan, outcome = train(req, log)  # everything cheap is checked before the model loads
    if not main:
        return outcome.exit_code  # the main process prints, and its code is every rank's
    if outcome.interrupted is not None:
        _print_interrupted(outcome.interrupted.result, outcome.signal_name, outcome.interrupted.run_id, args)
    elif plan.grid_keys:
        _print_table([(t.name, t.point, t.result) for t in outcome.trained], list(plan.grid_keys))
    elif outcome.trained:
        print(outcome.trained[0].result.adapter_dir)
    return outcome.exit_code


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: use FIELD=VALUE, e.g. --set learning_rate=1e-4")
        out[key.strip()] = value
    return out


def _print_interrupted(result: TrainResult, signal_name: str | None, run_id: str | None, args: argparse.Namespace) -> None:
    argv = [a for a in sys.argv[1:] if a != "--resume"] if sys.argv[1:2] == ["train"] else ["train", str(args.spec)]
    resume = shlex.join(["harness", *argv, "--resume"])
    print(
        f"stopped by {signal_name or 'request'} after step {result.n_steps}; checkpoint saved to "
        f"{result.checkpoint} (store run {run_id}, interrupted). Resume with: {resume}",
        file=sys.stderr,
    )


def _print_table(results: list[tuple[str, Any, Any]], keys: list[str]) -> None:
    header = ["adapter", *keys, "steps", "final_loss", "eval_loss", "adapter_id", "dir"]
    rows = []
    for name, point, r in results:
        evals = [s.eval_loss for s in r.step_logs if s.eval_loss is not None]
        rows.append([name, *(str(point.overrides[k]) for k in keys), str(r.n_steps),
                     f"{r.final_loss:.4f}" if r.final_loss is not None else "-",
                     f"{evals[-1]:.4f}" if evals else "-", r.adapter_id[:12], str(r.adapter_dir)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
