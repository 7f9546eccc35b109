"""TRL's ``SFTTrainer`` wired for a LoRA run: precision from the device, the training arguments, and
our callbacks (step printer, checkpoint marker, live anomaly stop, SIGTERM stop, early stopping).

Precision and gradient checkpointing are chosen from the device, never from library defaults: TRL's
``SFTConfig`` defaults to bf16 and gradient checkpointing, which on a CPU make a step ~20x slower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from harness.errors import UsageError
from harness.records import StepLogEntry
from harness.train.checkpoints import RunIdentity, SaveAndStop, marker_callback
from harness.train.spec import TrainSpec

#: evaluations per run when eval_steps is not set: an eval after every step took 37% of a short run
EVALS_PER_RUN = 10


class Precision(NamedTuple):
    precision: str  # "fp32" | "bf16" | "fp16"
    gradient_checkpointing: bool
    warnings: list[str]


def resolve_precision(spec: TrainSpec, device: str) -> Precision:
    """The spec's precision and gradient checkpointing for ``device``, or the device's best."""
    import torch

    warnings: list[str] = []
    device = str(device).split(":")[0]  # cuda:N (one rank's GPU under a launcher) is a cuda device
    precision = spec.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("precision=bf16 but this GPU has no bf16 support; use fp16 or fp32")
    if precision == "bf16" and device == "cpu":
        raise UsageError("precision=bf16 on the CPU is slow and inexact; use fp32 (or auto)")
    if precision == "fp16" and device == "cpu":
        warnings.append("precision=fp16: this device (cpu) has no fp16 training support; training in fp32 instead")
        precision = "fp32"
    elif precision == "fp16" and device == "cuda":
        if torch.cuda.get_device_capability() < (7, 0):
            warnings.append("precision=fp16: this GPU has no fp16 tensor cores (compute capability < 7.0); "
                            "fp16 will be slow; fp32 may be faster")
        if torch.cuda.is_bf16_supported():
            warnings.append("precision=fp16 on a GPU with bf16 support: bf16 has fp32's range and avoids fp16 overflow")
    checkpointing = spec.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = False  # only worth its ~30% extra compute when activations do not fit; opt in
    return Precision(precision, bool(checkpointing), warnings)


def planned_steps(spec: TrainSpec, n_train: int) -> int:
    """Optimizer steps the run will take (max_steps, else epochs over the training rows)."""
    if spec.max_steps and spec.max_steps > 0:
        return int(spec.max_steps)
    per_step = spec.per_device_train_batch_size * spec.gradient_accumulation_steps
    return max(1, math.ceil(math.ceil(n_train / spec.per_device_train_batch_size) / spec.gradient_accumulation_steps
                            * spec.num_train_epochs)) if per_step else 1


def default_eval_steps(spec: TrainSpec, n_train: int) -> int:
    """About EVALS_PER_RUN evaluations over the run, never more often than the logging interval."""
    return max(spec.logging_steps, planned_steps(spec, n_train) // EVALS_PER_RUN, 1)


def best_eval(steps: Sequence[StepLogEntry]) -> tuple[float | None, int | None]:
    """The lowest logged eval loss and its step (the Trainer tracks it only with early stopping)."""
    evals = [(s.eval_loss, s.step) for s in steps if s.eval_loss is not None and math.isfinite(s.eval_loss)]
    return min(evals) if evals else (None, None)


def sft_config(spec: TrainSpec, precision: Precision, ckpt_root: Path, n_train: int, has_eval: bool,
               use_cpu: bool) -> Any:
    """The ``SFTConfig`` of a run: the spec's optimiser fields, our logging and saving rules."""
    from trl import SFTConfig

    eval_steps = spec.eval_steps or default_eval_steps(spec, n_train)
    early = spec.early_stopping_patience is not None
    return SFTConfig(
        output_dir=str(ckpt_root),
        per_device_train_batch_size=spec.per_device_train_batch_size,
        per_device_eval_batch_size=spec.per_device_train_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        num_train_epochs=spec.num_train_epochs,
        max_steps=spec.max_steps,
        # an int >= 1 is a step count; a float < 1 is a share of the steps
        warmup_steps=spec.warmup_steps if spec.warmup_steps is not None else spec.warmup_ratio,
        lr_scheduler_type=spec.lr_scheduler_type,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm if spec.max_grad_norm > 0 else 0.0,
        logging_steps=spec.logging_steps,
        logging_nan_inf_filter=False,  # log a NaN as NaN: the anomaly detectors need to see it
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        # the best checkpoint can be reloaded only when every eval step also saved one
        load_best_model_at_end=bool(early and spec.save_steps and spec.save_steps % eval_steps == 0),
        save_strategy="steps" if spec.save_steps else "no",
        save_steps=spec.save_steps or 500,
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=use_cpu,
        bf16=precision.precision == "bf16",
        fp16=precision.precision == "fp16",
        # transformers 5 renamed gradient_checkpointing (a deprecated alias that warns on every run)
        activation_checkpointing=precision.gradient_checkpointing,
        max_length=spec.max_seq_length,
        completion_only_loss=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # DDP (under a launcher): every LoRA parameter takes part in each forward, so no extra graph walk
        # per step (and none of its clashes with activation checkpointing)
        ddp_find_unused_parameters=False,
    )


def our_callbacks(spec: TrainSpec, identity: RunIdentity, stopper: SaveAndStop | None, anomaly: Any,
                  log: Callable[[str], None]) -> list[Any]:
    """Step printer, checkpoint marker, the live anomaly check, the SIGTERM stop, early stopping."""
    from transformers import EarlyStoppingCallback

    from harness.util import distributed

    extra = [StepPrinter(log), marker_callback(identity, log), anomaly]
    if stopper is not None:
        if distributed.is_distributed():
            extra.append(distributed.stop_sync_callback(stopper))  # every rank stops at the same step
        extra.append(stopper.callback())
    if spec.early_stopping_patience is not None:
        extra.append(EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience))
    return extra


class StepPrinter:
    """A TrainerCallback that prints one short line per logged step."""

    def __new__(cls, log: Callable[[str], None]):
        from transformers import TrainerCallback

        class _StepPrinter(TrainerCallback):
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

        return _StepPrinter()
