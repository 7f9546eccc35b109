"""`harness train`: train a LoRA adapter (or a grid of them) from a spec, record it in the store.

Parse, build, run, print: the work lives in ``train/`` (spec, recipe, checkpoints, grid, record).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from harness.commands._common import add_db_argument
from harness.errors import TrainingStopped, UsageError

if TYPE_CHECKING:
    from train.recipe import TrainResult

# One line per spec field for --help; the defaults come from TrainSpec itself.
FIELD_HELP = {
    "base": "base model: 'smollm2-135m' (embedded) or a local model directory",
    "data": "training data: JSONL/JSON/CSV/Parquet file or dataset directory",
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
    from train.spec import TrainSpec

    lines = ["spec fields (YAML keys; override any with --set FIELD=VALUE):"]
    for f in dataclasses.fields(TrainSpec):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]  # mypy does not narrow default_factory from MISSING
        if isinstance(default, tuple):
            default = ",".join(default)
        lines.append(f"  {f.name:<28} {FIELD_HELP.get(f.name, '')} (default: {default})")
    lines += [
        "",
        "exit codes: 0 trained; 1 stopped by the anomaly check (NaN, divergence, no learning: no adapter written);",
        "143 stopped by SIGTERM (130 by Ctrl-C) after saving a complete checkpoint (the message",
        "says how to resume); 2 bad spec, flag or data; 3 adapter incompatible with the base; 4 refused for safety;",
        "5 storage trouble.",
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
    from harness import distributed

    # Under `accelerate launch` / `torchrun` every rank trains (the Trainer's DDP); the main process
    # writes the adapter and its store rows, and every rank exits with the main process's code.
    return distributed.agree(_run(args))


def _run(args: argparse.Namespace) -> int:
    from harness import distributed
    from harness.adapters import inspect_adapter
    from harness.models import load_base, resolve_base
    from harness.store import Store, default_db_path
    from train.checkpoints import SaveAndStop
    from train.grid import GridPoint, expand, parse_grid
    from train.recipe import train_adapter
    from train.spec import load_spec

    main = distributed.is_main()
    log = (lambda m: print(m, file=sys.stderr)) if main else (lambda m: None)
    # Everything cheap is checked before the model loads: spec, overrides, grid, parent adapter.
    overrides = _parse_sets(args.overrides)
    if args.data is not None:
        overrides["data"] = args.data
    if args.kernels:
        overrides["kernels"] = True
    spec = load_spec(args.spec, overrides)
    grid = parse_grid(args.grid)
    if {"base", "data"} & set(grid):
        raise UsageError("--grid over base or data is not supported; run one train command per base or data set")
    shape = {"r", "lora_alpha", "target_modules", "init_lora_weights", "use_dora", "use_rslora", "bias", "lora_dropout"}
    if args.from_adapter and shape & set(grid):
        raise UsageError(f"--grid over {', '.join(sorted(shape & set(grid)))} with --from-adapter: a continued adapter keeps "
                         "its parent's LoRA shape; grid over optimiser fields (learning_rate, max_steps, ...) instead")
    points = expand(grid) if grid else [GridPoint("", {})]
    specs = [(p, load_spec(args.spec, {**overrides, **p.overrides})) for p in points]
    parent = inspect_adapter(args.from_adapter) if args.from_adapter else None
    name = args.name or args.spec.stem
    out = args.out or Path("adapters") / (name if not grid else "")
    if not args.resume and not args.force:
        taken = [out] if not grid else [out / f"{name}-{p.suffix}" for p in points]
        for d in taken:
            if (d / "adapter_model.safetensors").exists():
                raise UsageError(f"{d} already holds an adapter; pass --out another directory, --force to replace it, "
                                 "or --resume to continue its run")
    from harness.adapters import check_target_modules_names
    from harness.models import check_device, module_names

    check_device(args.device)
    from train.data import load_rows, map_fields, normalize_row

    for path, fields in sorted({(str(ps.data), tuple(sorted(ps.data_fields.items()))) for _, ps in specs if ps.data}):
        # the data is read and checked (format, bad values, shape of every row) before the model loads
        for i, row in enumerate(map_fields(load_rows(path), dict(fields), path)):
            normalize_row(row, f"{path} row {i + 1}")
    ref = resolve_base(spec.base)
    names = module_names(ref)  # from the safetensors headers: target_modules are checked before the model loads
    if parent is None:
        for _, point_spec in specs:
            check_target_modules_names(point_spec.target_modules, names, f"training spec {args.spec or '(flags)'}")
    base = load_base(ref, device=distributed.device(args.device))
    store = Store(args.db or default_db_path())
    stopper = SaveAndStop()
    stopper.install()
    command = shlex.join(["harness", *sys.argv[1:]])
    results = []
    try:
        for point, point_spec in specs:
            point_name = f"{name}-{point.suffix}" if point.suffix else name
            point_out = out / point_name if grid else out
            if grid and args.resume and distributed.broadcast(_finished(point_out)):
                log(f"{point_name}: already trained in {point_out}, skipped")
                continue
            log(f"{point_name}: training into {point_out}")
            resume = args.resume and (not grid or (point_out / "checkpoints").is_dir())
            try:
                result = train_adapter(point_spec, point_out, base=base, log=log,
                                       from_adapter=parent.path if parent else None, resume=resume, stopper=stopper)
            except TrainingStopped as exc:
                from train.record import store_stopped_training

                if not main:
                    raise  # every rank stops at the same step (the logs they judge are reduced over ranks)
                # the recipe raises it with its TrainResult (harness.errors cannot name train's types)
                run_id = store_stopped_training(store, cast("TrainResult", exc.result), point_name, command,
                                                {"spec": point_spec.to_dict(), "device": base.device})
                raise TrainingStopped(f"{exc} (step logs and findings: store run {run_id})") from None
            if result.interrupted:
                if main:
                    _print_interrupted(result, stopper, args)
                # 128 + SIGTERM, the shell's convention (FAULTS.md 30): a scheduler sees the job was stopped,
                # and the checkpoint it saved is complete and marked.
                return 143 if stopper.signal_name == "SIGTERM" else 130
            from train.record import store_training

            if main:  # the adapter's rows are written once, by the main process
                config: dict[str, Any] = {"spec": point_spec.to_dict(), "device": base.device,
                                          "grid_point": dict(point.overrides)}
                if distributed.is_distributed():
                    config["world_size"] = distributed.world_size()
                run_id = store_training(store, result, point_name, command, config)
                assert result.adapter_id is not None  # None only for an interrupted run, which returned above
                log(f"{point_name}: adapter {result.adapter_id[:12]} written to {result.adapter_dir} (store run {run_id})")
            results.append((point_name, point, result))
    finally:
        stopper.uninstall()
    if not main:
        return 0  # the main process prints, and its code is every rank's
    if grid:
        _print_table(results, list(grid))
    else:
        print(results[0][2].adapter_dir)
    return 0


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: use FIELD=VALUE, e.g. --set learning_rate=1e-4")
        out[key.strip()] = value
    return out


def _finished(adapter_dir: Path) -> bool:
    return (adapter_dir / "adapter_model.safetensors").is_file() and (adapter_dir / "harness.json").is_file()


def _print_interrupted(result: Any, stopper: Any, args: argparse.Namespace) -> None:
    argv = [a for a in sys.argv[1:] if a != "--resume"] if sys.argv[1:2] == ["train"] else ["train", str(args.spec)]
    resume = shlex.join(["harness", *argv, "--resume"])
    print(
        f"stopped by {stopper.signal_name or 'request'} after step {result.n_steps}; checkpoint saved to "
        f"{result.checkpoint}. Resume with: {resume}",
        file=sys.stderr,
    )


def _print_table(results: list[tuple[str, Any, Any]], keys: list[str]) -> None:
    header = ["adapter", *keys, "steps", "final_loss", "eval_loss", "adapter_id", "dir"]
    rows = []
    for name, point, r in results:
        evals = [s["eval_loss"] for s in r.step_logs if "eval_loss" in s]
        rows.append([name, *(str(point.overrides[k]) for k in keys), str(r.n_steps),
                     f"{r.final_loss:.4f}" if r.final_loss is not None else "-",
                     f"{evals[-1]:.4f}" if evals else "-", r.adapter_id[:12], str(r.adapter_dir)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
