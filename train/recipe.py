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
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import DatasetError, InputError, StorageError, TrainingStopped, UsageError
from train.checkpoints import MARKER, RunIdentity, SaveAndStop, checkpoints, find_resumable, marker_callback
from train.data import (
    check_supervision,
    data_hash,
    load_rows,
    map_fields,
    mix_in,
    n_general_for,
    normalize_row,
    replay_rows,
    sample_rows,
)
from train.spec import TrainSpec, validate

if TYPE_CHECKING:
    from harness.models import LoadedBase

HARNESS_FILE = "harness.json"
STEP_LOG_FILE = "step_logs.jsonl"


@dataclass
class TrainResult:
    """What a training call produced. ``interrupted``: stopped early on request (SIGTERM) after saving
    ``checkpoint``; no final adapter was written then (``adapter_id`` is None)."""

    adapter_dir: Path
    adapter_id: str | None
    n_steps: int
    final_loss: float | None
    seconds: float
    step_logs: list[dict[str, Any]]
    n_examples: int
    n_truncated: int
    findings: list[Any] = field(default_factory=list)
    stop_reason: str | None = None  # set when the live anomaly check stopped the run
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    checkpoint: Path | None = None
    parent_adapter_id: str | None = None
    base_model_id: str | None = None


def resolve_precision(spec: TrainSpec, device: str) -> tuple[str, bool, list[str]]:
    """(precision, gradient_checkpointing, warnings) for ``device``: the spec's choice, or the device's best."""
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
    return precision, bool(checkpointing), warnings


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
    base: LoadedBase,
    examples: Sequence[dict[str, Any]] | None,
    log: Callable[[str], None],
    parent: Any = None,
) -> tuple[list[dict], str, int]:
    """Task rows (normalised) with the mixes the spec asks for. Returns (rows, hash, n_task).

    Shares are of the mixed set: with 0.2 general, 20% of the rows are general ones.
    """
    if examples is None:
        if not spec.data:
            raise UsageError("no training data: set `data:` in the spec or pass --data FILE")
        where = str(spec.data)
        raw = map_fields(load_rows(spec.data), spec.data_fields, where)
    else:
        raw, where = list(examples), "examples"
    if not raw:
        raise DatasetError(f"{where}: no training examples")
    task = [normalize_row(r, f"{where} row {i + 1}") for i, r in enumerate(raw)]
    extra: list[dict] = []
    n_task = len(task)
    total_share = sum(spec.mix.values())
    for name, share in spec.mix.items():
        n = max(1, round(n_general_for(n_task, total_share) * share / total_share))
        if name == "general" and spec.general_data:
            pool = [normalize_row(r, f"{spec.general_data} row {i + 1}") for i, r in enumerate(load_rows(spec.general_data))]
            got, what = sample_rows(pool, n, spec.seed), f"general rows from {spec.general_data}"
        elif name == "general":
            got, what = replay_rows(base, n, spec.seed, log), "general replay rows (the base model's own answers)"
        else:  # parent
            got, what = sample_rows(_parent_rows(parent), n, spec.seed), "rows of the parent adapter's training data"
        extra.extend(got)
        log(f"  mixed {len(got)} {what} into {n_task} task rows (share {share:g})")
    rows = mix_in(task, extra, spec.seed) if extra else task
    return rows, data_hash(rows), n_task


def _parent_rows(parent: Any) -> list[dict]:
    """The parent adapter's training data, from the path its harness.json records."""
    if parent is None:
        raise UsageError("mix.parent needs --from-adapter: it mixes in the data the parent adapter was trained on")
    source = ((parent.harness or {}).get("data") or {}).get("source")
    if not source or source == "in-memory" or not Path(source).exists():
        raise DatasetError(
            f"{parent.path}: its harness.json does not name a readable training data file ({source!r}); "
            "mix its data in yourself (concatenate it into --data) or drop mix.parent"
        )
    return [normalize_row(r, f"{source} row {i + 1}") for i, r in enumerate(load_rows(source))]


def train_adapter(
    spec: TrainSpec,
    out_dir: Path | str,
    examples: Sequence[dict[str, Any]] | None = None,
    base: LoadedBase | None = None,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Any] = (),
    from_adapter: Path | str | None = None,
    resume: bool = False,
    stopper: SaveAndStop | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``base`` as ``spec`` says and write it to ``out_dir``.

    ``from_adapter`` continues training an existing adapter (its own LoRA config wins over the
    spec's r, alpha and target modules); ``resume`` continues from the newest complete checkpoint
    under ``out_dir/checkpoints``; ``stopper`` lets a signal stop the run after a clean save.
    ``base`` is left as it was (the LoRA layers are removed after saving, and the base weights that
    PiSSA/LoftQ initialisation rewrites are put back), so one loaded base can train several adapters.

    Under ``accelerate launch`` / ``torchrun`` every rank calls this: the Trainer runs data parallel
    (DDP; FSDP when the launcher's accelerate config asks for it), the rows are the main process's,
    and the adapter, its step log and harness.json are written by the main process alone; every rank
    returns once they are written.
    """
    import datasets
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from harness import distributed
    from harness.adapters import inspect_adapter, load_adapter
    from harness.models import load_base, resolve_base
    from harness.provenance import package_versions

    errors, warnings = validate(spec)
    if errors:
        raise InputError("training spec: " + "; ".join(errors))
    init = _init_arg(spec.init_lora_weights)
    if init == "loftq" and from_adapter is None:
        _check_loftq_runs()
    parent = inspect_adapter(from_adapter) if from_adapter is not None else None
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    main = distributed.is_main()
    if not main:
        log = lambda m: None  # noqa: E731  (the main process speaks for the run)
    if base is None:
        base = load_base(resolve_base(spec.base), device=distributed.device(None))
    precision, checkpointing, device_warnings = resolve_precision(spec, base.device)
    warnings = [*warnings, *device_warnings]
    for w in warnings:
        log(f"  warning: {w}")

    if distributed.is_distributed():
        # the main process's rows on every rank (replay rows are generated once, not once per rank)
        prepared = distributed.broadcast(prepare_rows(spec, base, examples, log, parent) if main else None)
        assert prepared is not None  # the main process's, which is never None
        rows, rows_hash, n_task = prepared
    else:
        rows, rows_hash, n_task = prepare_rows(spec, base, examples, log, parent)
    tokenizer = base.tokenizer
    check = check_supervision(tokenizer, rows, spec.max_seq_length)
    if check.n_truncated:
        log(f"  warning: {check.n_truncated} of {check.n_examples} examples truncated to max_seq_length={spec.max_seq_length}")
    train_ds, eval_ds = _split(datasets, rows, spec)

    identity = RunIdentity(spec.to_dict(), rows_hash, base.ref.model_id, parent.adapter_id if parent else None)
    ckpt_root = out_dir / "checkpoints"
    # the main process alone looks (partial checkpoints are moved aside); every rank resumes from its pick
    resume_from = distributed.broadcast(find_resumable(ckpt_root, identity, log) if resume and main else None)
    if resume_from is not None:
        log(f"  resuming from {resume_from}")

    set_seed(spec.seed)  # before the LoRA matrices are initialised, so two runs start identical
    model = base.model.float() if precision == "fp32" else base.model
    # PiSSA and LoftQ rewrite the base weights they adapt; keep the originals to hand the base back.
    saved_base = _snapshot_targets(model, spec.target_modules) if init in ("pissa", "loftq") and parent is None else {}
    if parent is not None:
        _note_parent_config(spec, parent, log)
        peft_model = load_adapter(model, parent, trainable=True)
    else:
        from harness.adapters import check_target_modules

        check_target_modules(list(spec.target_modules), model, "training spec")
        peft_model = get_lora_model(model, spec, init)
    n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if n_trainable == 0:
        raise InputError("no trainable parameters: check target_modules against the model's linear layers")
    pissa_init_dir = ckpt_root / "pissa-init"
    if init == "pissa" and parent is None and not (resume_from and pissa_init_dir.is_dir()) and main:
        # the adapter as initialised: needed to convert the trained PiSSA adapter into a plain LoRA one
        peft_model.save_pretrained(str(pissa_init_dir), safe_serialization=True)

    eval_steps = spec.eval_steps or default_eval_steps(spec, len(train_ds))
    if eval_ds is not None:
        log(f"  eval loss on {len(eval_ds)} held-out examples every {eval_steps} steps "
            f"(about {max(1, planned_steps(spec, len(train_ds)) // eval_steps)} evaluations; set eval_steps to change)")
    early = spec.early_stopping_patience is not None
    args = SFTConfig(
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
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=eval_steps if eval_ds is not None else None,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        # the best checkpoint can be reloaded only when every eval step also saved one
        load_best_model_at_end=bool(early and spec.save_steps and spec.save_steps % eval_steps == 0),
        save_strategy="steps" if spec.save_steps else "no",
        save_steps=spec.save_steps or 500,
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=base.device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # transformers 5 renamed gradient_checkpointing (a deprecated alias that warns on every run)
        activation_checkpointing=checkpointing,
        max_length=spec.max_seq_length,
        completion_only_loss=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # DDP (under a launcher): every LoRA parameter takes part in each forward, so no extra graph walk
        # per step (and none of its clashes with activation checkpointing)
        ddp_find_unused_parameters=False,
    )
    datasets.disable_progress_bars()
    from harness.anomaly_callback import AnomalyCallback

    anomaly = AnomalyCallback(stop_on_error=spec.stop_on_anomaly)
    extra = [_StepPrinter(log), marker_callback(identity, log), anomaly]
    if stopper is not None:
        if distributed.is_distributed():
            extra.append(distributed.stop_sync_callback(stopper))  # every rank stops at the same step
        extra.append(stopper.callback())
    if spec.early_stopping_patience is not None:  # = early
        extra.append(EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience))
    trainer = SFTTrainer(
        model=peft_model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, callbacks=[*extra, *callbacks],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our StepPrinter prints a shorter line per step
    kernels = None
    what = f"continuing adapter {parent.adapter_id[:12]}" if parent else f"training {n_trainable:,} LoRA parameters"
    log(f"  {what} on {len(train_ds)} examples ({precision}, {base.device}, init {spec.init_lora_weights if parent is None else 'parent'})")
    interrupted, checkpoint = False, None
    adapter_dir = out_dir
    try:
        if spec.kernels:
            from train.kernels import KernelPathError, apply_kernels

            # after the trainer is built: TRL attaches its own fused LM head then, and ours replaces it
            try:
                kernels = apply_kernels(peft_model, log=lambda m: log("  " + m))
            except KernelPathError as exc:
                raise UsageError(f"kernels: {exc}") from None
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        steps = [dict(s) for s in trainer.state.log_history if "loss" in s or "eval_loss" in s]
        final = next((s["loss"] for s in reversed(steps) if "loss" in s), None)
        if stopper is not None and stopper.requested:
            interrupted = True
            checkpoint = ckpt_root / f"checkpoint-{trainer.state.global_step}"
        elif anomaly.stop_reason:
            pass  # a broken run's weights are not an adapter; the error below says what happened
        else:
            convert = {"path_initial_model_for_weight_conversion": str(pissa_init_dir)} if init == "pissa" and parent is None else {}
            if distributed.is_distributed() and getattr(trainer, "is_fsdp_enabled", False):
                # FSDP shards the weights: every rank takes part in gathering the full state for the save
                convert["state_dict"] = trainer.accelerator.get_state_dict(trainer.model)
            if main:
                adapter_dir.mkdir(parents=True, exist_ok=True)
                _save_adapter(peft_model, adapter_dir, convert)
    finally:
        if kernels is not None:
            kernels.undo()
        # Give the caller back its base model without the LoRA layers, in inference mode.
        from harness.adapters import detach_adapter

        base.model = detach_adapter(peft_model)
        if saved_base:
            _restore_targets(base.model, saved_base)
        base.model.eval()
        tokenizer.padding_side = "left"
    if anomaly.stop_reason:
        log(f"  stopped early by the anomaly check: {anomaly.stop_reason}")
    result = TrainResult(
        findings=list(anomaly.findings), stop_reason=anomaly.stop_reason,
        adapter_dir=adapter_dir, adapter_id=None, n_steps=trainer.state.global_step,
        final_loss=final if final is None or math.isfinite(final) else None, seconds=time.perf_counter() - t0,
        step_logs=steps, n_examples=len(rows), n_truncated=check.n_truncated, warnings=warnings,
        interrupted=interrupted, checkpoint=checkpoint, parent_adapter_id=identity.parent_adapter_id,
        base_model_id=base.ref.model_id,
    )
    if interrupted:
        return result
    if anomaly.stop_reason:
        good = [path for _, path in checkpoints(ckpt_root) if (path / MARKER).is_file()]
        keep = f"; the newest complete checkpoint is {good[0]}" if good else ""
        raise TrainingStopped(
            f"training stopped at step {trainer.state.global_step} by the anomaly check: {anomaly.stop_reason} "
            f"No adapter was written to {adapter_dir}{keep}. `harness anomalies` on the step log explains more; "
            "set stop_on_anomaly: false to train through it", result,
        )
    if not main:
        distributed.barrier()  # the main process writes the adapter's files; then it is read here too
        result.adapter_id = inspect_adapter(adapter_dir).adapter_id
        return result
    _write_atomic(adapter_dir / STEP_LOG_FILE, "".join(json.dumps(s) + "\n" for s in steps))
    record = {
        "spec": spec.to_dict(),
        "base_model": {"name": base.ref.name, "model_id": base.ref.model_id, "path": str(base.ref.path)},
        "data": {"hash": rows_hash, "n_examples": len(rows), "n_train": len(train_ds),
                 "n_eval": len(eval_ds) if eval_ds is not None else 0, "n_task": n_task,
                 "n_truncated": check.n_truncated, "n_supervised_tokens": check.n_supervised_tokens,
                 "source": str(Path(spec.data).resolve()) if spec.data else "in-memory"},
        "parent_adapter": {"adapter_id": parent.adapter_id, "path": str(parent.path)} if parent else None,
        # the answers' format (the JSON keys of the task completions), for leakage checks of this task
        "task_format": _task_format(rows),
        "init_lora_weights": "parent" if parent else init,
        "resumed_from": str(resume_from) if resume_from else None,
        "anomalies": [{"kind": f.kind, "severity": f.severity, "step": f.step, "message": f.message} for f in anomaly.findings],
        "stopped_by_anomaly": anomaly.stop_reason,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "kernels": kernels.path._asdict() if kernels is not None else None,
        "device": base.device,
        "packages": package_versions(),
        "metrics": {"final_loss": final, "steps": trainer.state.global_step, "train_seconds": time.perf_counter() - t0,
                    "n_trainable_parameters": n_trainable, "best_eval_loss": trainer.state.best_metric if trainer.state.best_metric is not None else _best_eval(steps)[0],
                    "best_step": trainer.state.best_global_step if trainer.state.best_metric is not None else _best_eval(steps)[1]},
    }
    _write_atomic(adapter_dir / HARNESS_FILE, json.dumps(record, indent=2, default=_json_default) + "\n")
    distributed.barrier()  # the other ranks wait for the files above (nothing without a launcher)
    result.adapter_id = inspect_adapter(adapter_dir).adapter_id
    return result


#: evaluations per run when eval_steps is not set: an eval after every step took 37% of a short run
EVALS_PER_RUN = 10


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


def _best_eval(steps: list[dict]) -> tuple[float | None, int | None]:
    """The lowest logged eval loss and its step (the Trainer tracks it only with early stopping)."""
    evals = [(s["eval_loss"], s.get("step")) for s in steps if isinstance(s.get("eval_loss"), (int, float))
             and math.isfinite(s["eval_loss"])]
    return min(evals) if evals else (None, None)


def _task_format(rows: list[dict]) -> dict | None:
    from harness.taskformat import record

    return record([str(r["completion"][-1]["content"]) for r in rows])


def _disk_full(path: Path, exc: OSError) -> StorageError:
    import shutil

    free = shutil.disk_usage(path if path.exists() else path.parent).free
    return StorageError(f"disk full while writing {path} ({exc.strerror}; {free / 2**20:.0f} MiB free); the previous "
                        "adapter there, if any, is intact. Free space and run again")


def _save_adapter(peft_model: Any, adapter_dir: Path, convert: dict[str, Any]) -> None:
    """Save PEFT's files next to the adapter and move them in with one rename each, so that a crash or a
    full disk never leaves a half-written adapter where a good one was (FAULTS.md 32)."""
    import errno
    import shutil

    staging = adapter_dir / ".saving"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        peft_model.save_pretrained(str(staging), safe_serialization=True, **convert)
        _portable_base_name(staging / "adapter_config.json")
        for f in sorted(staging.iterdir()):
            os.replace(f, adapter_dir / f.name)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(adapter_dir, exc) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _portable_base_name(config_path: Path) -> None:
    """PEFT writes the base's local directory (for the embedded base, a path inside our cache) into
    base_model_name_or_path, so the adapter does not name its base anywhere else; write the public name
    instead (the local path stays in harness.json)."""
    from harness.models import EMBEDDED, EMBEDDED_HUB_IDS, harness_home

    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    named = str(cfg.get("base_model_name_or_path") or "")
    models = harness_home() / "models"
    for name in EMBEDDED:
        if named.startswith(str(models / name)):
            cfg["base_model_name_or_path"] = EMBEDDED_HUB_IDS[name][0]
            config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_atomic(path: Path, text: str) -> None:
    import errno

    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise _disk_full(path, exc) from None
        raise


def get_lora_model(model: Any, spec: TrainSpec, init: Any) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter as the spec says."""
    from peft import LoraConfig, get_peft_model

    extra: dict[str, Any] = {}
    if init == "loftq":
        from peft import LoftQConfig

        extra["loftq_config"] = LoftQConfig(loftq_bits=4)
    lora = LoraConfig(
        # peft annotates lora_alpha as int (a float works: it only scales) and bias as a Literal
        # (TrainSpec checks it is one of them)
        r=spec.r, lora_alpha=spec.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=spec.lora_dropout, target_modules=list(spec.target_modules),
        bias=spec.bias,  # type: ignore[arg-type]
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora, init_lora_weights=init, task_type="CAUSAL_LM", **extra,
    )
    return get_peft_model(model, lora)


def _split(datasets: Any, rows: list[dict], spec: TrainSpec) -> tuple[Any, Any]:
    ds = datasets.Dataset.from_list(rows)
    if spec.eval_split <= 0:
        return ds, None
    n_eval = math.ceil(len(rows) * spec.eval_split)
    if n_eval >= len(rows):
        raise DatasetError(f"eval_split={spec.eval_split} leaves no training rows out of {len(rows)}; lower it or add data")
    parts = ds.train_test_split(test_size=n_eval, seed=spec.seed, shuffle=True)
    return parts["train"], parts["test"]


def _check_loftq_runs() -> None:
    """LoftQ quantises the base to 4 bits with bitsandbytes, which needs CUDA: refuse clearly elsewhere."""
    import importlib.util

    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    if missing:
        raise UsageError(
            f"init_lora_weights=loftq needs {' and '.join(missing)} (it quantises the base to 4-bit NF4 through "
            "bitsandbytes); use pissa (runs anywhere) or default here"
        )


def _snapshot_targets(model: Any, targets: Sequence[str]) -> dict[str, Any]:
    names = set(targets)
    return {f"{n}.weight": m.weight.detach().clone() for n, m in model.named_modules()
            if n.split(".")[-1] in names and hasattr(m, "weight")}


def _restore_targets(model: Any, saved: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def _note_parent_config(spec: TrainSpec, parent: Any, log: Callable[[str], None]) -> None:
    cfg = parent.config
    differ = [f"{k}={getattr(spec, k)!r} (parent {cfg.get(k)!r})" for k in ("r", "lora_alpha")
              if cfg.get(k) is not None and cfg.get(k) != getattr(spec, k)]
    if differ:
        log(f"  note: continuing the parent adapter keeps its own LoRA shape; ignored {', '.join(differ)}")


def _init_arg(name: str) -> Any:
    """PEFT's ``init_lora_weights`` value for a spec's name (validated by ``train.spec.validate``)."""
    return {"default": True, "true": True, "gaussian": "gaussian", "pissa": "pissa", "loftq": "loftq"}.get(
        str(name).lower(), name
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)
