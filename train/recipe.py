"""Train one LoRA adapter with TRL's ``SFTTrainer`` and PEFT, and write it with its full record.

The adapter directory holds PEFT's own files (``adapter_config.json``, ``adapter_model.safetensors``)
plus ``harness.json`` (the spec, hashes of base model, data and parent adapter, package versions,
final metrics) and ``step_logs.jsonl`` (the loss curve). Precision and gradient checkpointing are
chosen from the device, never from library defaults: TRL's ``SFTConfig`` defaults to bf16 and
gradient checkpointing, which on a CPU make a step ~20x slower.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import DatasetError, InputError, UsageError
from train.data import (
    check_supervision,
    data_hash,
    load_rows,
    mix_in,
    n_general_for,
    normalize_row,
    replay_rows,
)
from train.spec import TrainSpec, validate

if TYPE_CHECKING:
    from harness.models import LoadedBase

HARNESS_FILE = "harness.json"
STEP_LOG_FILE = "step_logs.jsonl"


@dataclass
class TrainResult:
    adapter_dir: Path
    adapter_id: str
    n_steps: int
    final_loss: float | None
    seconds: float
    step_logs: list[dict[str, Any]]
    n_examples: int
    n_truncated: int
    findings: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def resolve_precision(spec: TrainSpec, device: str) -> tuple[str, bool]:
    """(precision, gradient_checkpointing) for ``device``: the spec's choice, or the device's best."""
    import torch

    precision = spec.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("precision=bf16 but this GPU has no bf16 support; use fp16 or fp32")
    if precision in ("bf16", "fp16") and device == "cpu":
        raise UsageError(f"precision={precision} on the CPU is slow or unsupported by the Trainer; use fp32 (or auto)")
    checkpointing = spec.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = False  # only worth its ~30% extra compute when activations do not fit; opt in
    return precision, bool(checkpointing)


class _StepPrinter:
    """A TrainerCallback that prints one short line per logged step."""

    def __new__(cls, log: Callable[[str], None]):
        from transformers import TrainerCallback

        class StepPrinter(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    parts = [f"step {state.global_step}/{state.max_steps}", f"loss {logs['loss']:.4f}"]
                    if logs.get("grad_norm") is not None:
                        parts.append(f"grad_norm {logs['grad_norm']:.3g}")
                    if logs.get("learning_rate") is not None:
                        parts.append(f"lr {logs['learning_rate']:.3g}")
                    log("    " + "  ".join(parts))
                elif logs and "eval_loss" in logs:
                    log(f"    step {state.global_step}: eval_loss {logs['eval_loss']:.4f}")

        return StepPrinter()


def prepare_rows(
    spec: TrainSpec,
    base: "LoadedBase",
    examples: Sequence[dict[str, Any]] | None,
    log: Callable[[str], None],
) -> tuple[list[dict], str, int]:
    """Task rows (normalised) mixed with general replay rows as the spec asks. Returns (rows, hash, n_task)."""
    if examples is None:
        if not spec.data:
            raise UsageError("no training data: set `data:` in the spec or pass --data FILE")
        raw = load_rows(spec.data)
        where = str(spec.data)
    else:
        raw, where = list(examples), "examples"
    if not raw:
        raise DatasetError(f"{where}: no training examples")
    task = [normalize_row(r, f"{where} row {i + 1}") for i, r in enumerate(raw)]
    rows = task
    share = spec.mix.get("general")
    if share:
        n_general = n_general_for(len(task), share)
        general = replay_rows(base, n_general, spec.seed, log)
        rows = mix_in(task, general, spec.seed)
        log(f"  mixed {len(general)} general replay rows into {len(task)} task rows (share {share:g})")
    return rows, data_hash(rows), len(task)


def train_adapter(
    spec: TrainSpec,
    out_dir: Path | str,
    examples: Sequence[dict[str, Any]] | None = None,
    base: "LoadedBase | None" = None,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train a LoRA adapter on ``base`` as ``spec`` says and write it to ``out_dir``.

    ``base`` is left as it was (the LoRA layers are removed after saving), so one loaded base model
    can train several adapters and then evaluate them.
    """
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from harness.adapters import inspect_adapter
    from harness.models import load_base, resolve_base
    from harness.provenance import package_versions

    errors, warnings = validate(spec)
    if errors:
        raise InputError("training spec: " + "; ".join(errors))
    for w in warnings:
        log(f"  warning: {w}")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    if base is None:
        base = load_base(resolve_base(spec.base))
    precision, checkpointing = resolve_precision(spec, base.device)

    rows, rows_hash, n_task = prepare_rows(spec, base, examples, log)
    tokenizer = base.tokenizer
    check = check_supervision(tokenizer, rows, spec.max_seq_length)
    if check.n_truncated:
        log(f"  warning: {check.n_truncated} of {check.n_examples} examples truncated to max_seq_length={spec.max_seq_length}")

    set_seed(spec.seed)  # before the LoRA matrices are initialised, so two runs start identical
    lora = LoraConfig(
        r=spec.r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
        target_modules=list(spec.target_modules), bias=spec.bias, use_rslora=spec.use_rslora,
        use_dora=spec.use_dora, init_lora_weights=_init_arg(spec.init_lora_weights), task_type="CAUSAL_LM",
    )
    model = base.model.float() if precision == "fp32" else base.model
    peft_model = get_peft_model(model, lora)
    n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if n_trainable == 0:
        raise InputError("no trainable parameters: check target_modules against the model's linear layers")

    args = SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=spec.per_device_train_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        num_train_epochs=spec.num_train_epochs,
        max_steps=spec.max_steps,
        warmup_steps=spec.warmup_ratio,
        lr_scheduler_type=spec.lr_scheduler_type,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm if spec.max_grad_norm > 0 else 0.0,
        logging_steps=spec.logging_steps,
        logging_nan_inf_filter=False,  # log a NaN as NaN: the anomaly detectors need to see it
        save_strategy="no",
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=base.device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=checkpointing,
        max_length=spec.max_seq_length,
        completion_only_loss=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    datasets.disable_progress_bars()
    trainer = SFTTrainer(
        model=peft_model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[_StepPrinter(log), *callbacks],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our StepPrinter prints a shorter line per step
    log(f"  training {n_trainable:,} LoRA parameters on {len(rows)} examples ({precision}, {base.device})")
    try:
        trainer.train()
        steps = [dict(s) for s in trainer.state.log_history if "loss" in s or "eval_loss" in s]
        final = next((s["loss"] for s in reversed(steps) if "loss" in s), None)
        adapter_dir = out_dir
        adapter_dir.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    finally:
        # Give the caller back its base model without the LoRA layers, in inference mode.
        base.model = peft_model.unload()
        base.model.eval()
        tokenizer.padding_side = "left"
    (adapter_dir / STEP_LOG_FILE).write_text("".join(json.dumps(s) + "\n" for s in steps), encoding="utf-8")
    record = {
        "spec": spec.to_dict(),
        "base_model": {"name": base.ref.name, "model_id": base.ref.model_id},
        "data": {"hash": rows_hash, "n_examples": len(rows), "n_task": n_task, "n_truncated": check.n_truncated,
                 "n_supervised_tokens": check.n_supervised_tokens, "source": spec.data or "in-memory"},
        "parent_adapter": None,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "device": base.device,
        "packages": package_versions(),
        "metrics": {"final_loss": final, "steps": trainer.state.global_step, "train_seconds": time.perf_counter() - t0,
                    "n_trainable_parameters": n_trainable},
    }
    (adapter_dir / HARNESS_FILE).write_text(json.dumps(record, indent=2, default=_json_default) + "\n", encoding="utf-8")
    info = inspect_adapter(adapter_dir)
    return TrainResult(
        adapter_dir=adapter_dir, adapter_id=info.adapter_id, n_steps=trainer.state.global_step,
        final_loss=final if final is None or math.isfinite(final) else None, seconds=time.perf_counter() - t0,
        step_logs=steps, n_examples=len(rows), n_truncated=check.n_truncated, warnings=warnings,
    )


def _init_arg(name: str) -> Any:
    return {"default": True, "true": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "loftq": "loftq"}.get(
        str(name).lower(), name
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)
