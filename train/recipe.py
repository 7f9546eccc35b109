"""Train one LoRA adapter with TRL's ``SFTTrainer`` and PEFT, and write it with its full record.

The recipe reads top to bottom, one named step each (as torchtune's recipes do): check the setup,
load the model, load the data, find the resume point, build the LoRA model, configure the trainer,
train, save the weights, give the base back, then record. The building blocks live beside it:
``train/data.py`` (rows, mixing), ``train/lora.py`` (the adapter), ``train/sft.py`` (precision,
trainer arguments, callbacks), ``train/checkpoints.py`` (markers, resume) and ``train/save.py``
(atomic files).

The adapter directory holds PEFT's own files (``adapter_config.json``, ``adapter_model.safetensors``)
plus ``harness.json`` (a ``harness.records.AdapterRecord``: the spec, hashes of base model, data and
parent adapter, package versions, final metrics) and ``step_logs.jsonl`` (the loss curve).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import DatasetError, InputError, TrainingStopped, UsageError
from harness.records import (
    AdapterRecord,
    BaseModelRef,
    Finding,
    ParentRef,
    StepLogEntry,
    TaskFormat,
    TrainingData,
    TrainMetrics,
)
from harness.train.checkpoints import MARKER, RunIdentity, SaveAndStop, checkpoints, find_resumable
from harness.train.data import (
    TokenCheck,
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
from harness.train.lora import LoraModel, build_lora, check_loftq_runs, give_base_back, init_arg, init_name
from harness.train.save import disk_full, is_disk_full, save_weights, write_record_files
from harness.train.sft import (
    Precision,
    best_eval,
    default_eval_steps,
    our_callbacks,
    planned_steps,
    resolve_precision,
    sft_config,
)
from harness.train.spec import TrainSpec, validate

if TYPE_CHECKING:
    from harness.models.adapters import AdapterInfo
    from harness.models.base import LoadedBase


@dataclass
class TrainResult:
    """What a training call produced. ``interrupted``: stopped early on request (SIGTERM) after saving
    ``checkpoint``; no final adapter was written then (``adapter_id`` is None)."""

    adapter_dir: Path
    adapter_id: str | None
    n_steps: int
    final_loss: float | None
    seconds: float
    step_logs: list[StepLogEntry]
    n_examples: int
    n_truncated: int
    findings: list[Finding] = field(default_factory=list)
    stop_reason: str | None = None  # set when the live anomaly check stopped the run
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    checkpoint: Path | None = None
    parent_adapter_id: str | None = None
    base_model_id: str | None = None


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

    Raises:
        TrainingStopped: the live anomaly check stopped the run (its result rides on the error).
    """
    from harness.util import distributed

    t0 = time.perf_counter()
    out_dir, ckpt_root = Path(out_dir), Path(out_dir) / "checkpoints"
    main = distributed.is_main()
    if not main:
        log = _silent  # the main process speaks for the run
    parent, warnings = check_setup(spec, from_adapter)
    base = load_model(spec, base)
    precision = resolve_precision(spec, base.device)
    warnings = [*warnings, *precision.warnings]
    for w in warnings:
        log(f"  warning: {w}")
    data = load_data(spec, base, examples, parent, log)
    identity = RunIdentity(spec.to_dict(), data.hash, base.ref.model_id, parent.adapter_id if parent else None)
    resume_from = find_resume_point(ckpt_root, identity, resume and main, log)
    lora = build_lora(spec, base, parent, precision.precision, ckpt_root, resume_from is not None, main, log)
    trainer, anomaly = configure_trainer(spec, lora, data, base, precision, ckpt_root, identity, stopper, callbacks, log)
    describe_run(spec, lora, parent, data, precision, base, log)
    kernels = None
    try:
        kernels = attach_kernels(spec, lora, log)
        outcome = train(trainer, resume_from, stopper, anomaly, ckpt_root)
        if outcome.completed:
            save(trainer, lora, parent, out_dir, main)
    finally:
        if kernels is not None:
            kernels.undo()
        give_base_back(base, lora)  # the caller's base model, without the LoRA layers, in inference mode
    result = TrainResult(
        adapter_dir=out_dir, adapter_id=None, n_steps=trainer.state.global_step, final_loss=outcome.final_loss,
        seconds=time.perf_counter() - t0, step_logs=outcome.steps, n_examples=len(data.rows),
        n_truncated=data.check.n_truncated, findings=list(anomaly.findings), stop_reason=anomaly.stop_reason,
        warnings=warnings, interrupted=outcome.interrupted, checkpoint=outcome.checkpoint,
        parent_adapter_id=identity.parent_adapter_id, base_model_id=base.ref.model_id,
    )
    if outcome.interrupted:
        return result
    if anomaly.stop_reason:
        log(f"  stopped early by the anomaly check: {anomaly.stop_reason}")
        raise stopped_by_anomaly(result, ckpt_root)
    if main:
        record = build_record(spec, base, data, parent, lora, precision, resume_from, anomaly, kernels, trainer,
                              outcome, time.perf_counter() - t0)
        write_record_files(out_dir, outcome.steps, record)
    result.adapter_id = adapter_written(out_dir)
    return result


# -- the steps, in the order the recipe takes them ---------------------------------------------------


def check_setup(spec: TrainSpec, from_adapter: Path | str | None) -> tuple[AdapterInfo | None, list[str]]:
    """Everything cheap before the model loads: the spec, LoftQ's needs, the parent adapter's files.

    Returns the parent adapter (None for a fresh one) and the spec's warnings.
    """
    from harness.models.adapters import inspect_adapter

    errors, warnings = validate(spec)
    if errors:
        raise InputError("training spec: " + "; ".join(errors))
    if init_arg(spec.init_lora_weights) == "loftq" and from_adapter is None:
        check_loftq_runs()
    parent = inspect_adapter(from_adapter) if from_adapter is not None else None
    return parent, list(warnings)


def load_model(spec: TrainSpec, base: LoadedBase | None) -> LoadedBase:
    """The caller's loaded base, or the spec's base on this process's device."""
    from harness.models.base import load_base, resolve_base
    from harness.util import distributed

    return base if base is not None else load_base(resolve_base(spec.base), device=distributed.device(None))


@dataclass(frozen=True)
class TrainingRows:
    """The mixed rows and what the recipe needs of them."""

    rows: list[dict]
    hash: str
    n_task: int
    check: TokenCheck
    train_ds: Any
    eval_ds: Any


def load_data(spec: TrainSpec, base: LoadedBase, examples: Sequence[dict[str, Any]] | None,
              parent: AdapterInfo | None, log: Callable[[str], None]) -> TrainingRows:
    """The task rows with the spec's mixes, checked for supervision after truncation, split for eval.

    Under a launcher the main process's rows are every rank's (replay rows are generated once).
    """
    import datasets

    from harness.util import distributed

    if distributed.is_distributed():
        prepared = distributed.broadcast(prepare_rows(spec, base, examples, log, parent) if distributed.is_main() else None)
        assert prepared is not None  # the main process's, which is never None
        rows, rows_hash, n_task = prepared
    else:
        rows, rows_hash, n_task = prepare_rows(spec, base, examples, log, parent)
    check = check_supervision(base.tokenizer, rows, spec.max_seq_length, _row_labels(spec, examples, n_task, len(rows)))
    if check.n_truncated:
        log(f"  warning: {check.n_truncated} of {check.n_examples} examples truncated to max_seq_length={spec.max_seq_length}")
    datasets.disable_progress_bars()
    train_ds, eval_ds = _split(datasets, rows, spec)
    return TrainingRows(rows, rows_hash, n_task, check, train_ds, eval_ds)


def _row_labels(spec: TrainSpec, examples: Sequence[dict[str, Any]] | None, n_task: int, n_rows: int) -> list[str]:
    """Where each prepared row came from, in the prepared (mixed) order: ``FILE row N`` for the task data, 1-based
    as every data error names rows; the mixed-in rows by their mix. ``mix_in``'s shuffle depends only on the
    number of rows and the seed, so shuffling the labels the same way lines them up."""
    from harness.train.data import mix_in

    where = str(spec.data) if examples is None else "examples"
    task = [f"{where} row {i + 1}" for i in range(n_task)]
    extra = [f"mixed-in row {j + 1} ({', '.join(spec.mix)})" for j in range(n_rows - n_task)]
    return [str(x) for x in mix_in(task, extra, spec.seed)] if extra else task  # type: ignore[arg-type]


def find_resume_point(ckpt_root: Path, identity: RunIdentity, look: bool, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to resume from (the main process looks; partial checkpoints are moved aside);
    every rank gets the main process's pick."""
    from harness.util import distributed

    resume_from = distributed.broadcast(find_resumable(ckpt_root, identity, log) if look else None)
    if resume_from is not None:
        log(f"  resuming from {resume_from}")
    return resume_from


def configure_trainer(spec: TrainSpec, lora: LoraModel, data: TrainingRows, base: LoadedBase, precision: Precision,
                      ckpt_root: Path, identity: RunIdentity, stopper: SaveAndStop | None, callbacks: Sequence[Any],
                      log: Callable[[str], None]) -> tuple[Any, Any]:
    """The SFTTrainer with our callbacks, and the live anomaly check among them."""
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    from harness.train.callbacks import AnomalyCallback

    n_train = len(data.train_ds)
    if data.eval_ds is not None:
        eval_steps = spec.eval_steps or default_eval_steps(spec, n_train)
        log(f"  eval loss on {len(data.eval_ds)} held-out examples every {eval_steps} steps "
            f"(about {max(1, planned_steps(spec, n_train) // eval_steps)} evaluations; set eval_steps to change)")
    args = sft_config(spec, precision, ckpt_root, n_train, data.eval_ds is not None, base.device == "cpu")
    anomaly = AnomalyCallback(stop_on_error=spec.stop_on_anomaly, eval_size=len(data.eval_ds) if data.eval_ds is not None else None)
    trainer = SFTTrainer(
        model=lora.peft_model, args=args, train_dataset=data.train_ds, eval_dataset=data.eval_ds,
        processing_class=base.tokenizer, callbacks=[*our_callbacks(spec, identity, stopper, anomaly, log), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # our StepPrinter prints a shorter line per step
    return trainer, anomaly


def describe_run(spec: TrainSpec, lora: LoraModel, parent: AdapterInfo | None, data: TrainingRows,
                 precision: Precision, base: LoadedBase, log: Callable[[str], None]) -> None:
    what = f"continuing adapter {parent.adapter_id[:12]}" if parent else f"training {lora.n_trainable:,} LoRA parameters"
    init = spec.init_lora_weights if parent is None else "parent"
    log(f"  {what} on {len(data.train_ds)} examples ({precision.precision}, {base.device}, init {init})")


def attach_kernels(spec: TrainSpec, lora: LoraModel, log: Callable[[str], None]) -> Any:
    """Our fused kernels on the model, when the spec asks (after the trainer is built: TRL attaches its
    own fused LM head then, and ours replaces it). Returns the handle that undoes them, or None."""
    if not spec.kernels:
        return None
    from harness.train.kernels import KernelPathError, apply_kernels

    try:
        return apply_kernels(lora.peft_model, log=lambda m: log("  " + m))
    except KernelPathError as exc:
        raise UsageError(f"kernels: {exc}") from None


@dataclass(frozen=True)
class Outcome:
    """How ``trainer.train`` ended: ``completed`` (save the adapter), ``interrupted`` (on request, after
    saving ``checkpoint``), or neither (the anomaly check stopped it)."""

    steps: list[StepLogEntry]
    final_loss: float | None
    completed: bool
    interrupted: bool
    checkpoint: Path | None


def train(trainer: Any, resume_from: Path | None, stopper: SaveAndStop | None, anomaly: Any, ckpt_root: Path) -> Outcome:
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except Exception as exc:  # a checkpoint save (weights, optimizer, tokenizer files) on a full disk: exit 5
        if not is_disk_full(exc, ckpt_root):
            raise
        good = [path for _, path in checkpoints(ckpt_root) if (path / MARKER).is_file()]
        keep = f"the newest complete checkpoint, {good[0]}, is intact: rerun with --resume" if good else \
            "no complete checkpoint was written yet"
        raise disk_full(ckpt_root, exc, keep) from None
    steps = [StepLogEntry.from_trainer(s) for s in trainer.state.log_history if "loss" in s or "eval_loss" in s]
    final = next((s.loss for s in reversed(steps) if s.loss is not None), None)
    interrupted = stopper is not None and stopper.requested
    return Outcome(steps, final if final is None or math.isfinite(final) else None,
                   completed=not interrupted and not anomaly.stop_reason, interrupted=interrupted,
                   checkpoint=ckpt_root / f"checkpoint-{trainer.state.global_step}" if interrupted else None)


def save(trainer: Any, lora: LoraModel, parent: AdapterInfo | None, out_dir: Path, main: bool) -> None:
    """PEFT's files into ``out_dir`` (PiSSA converted to plain LoRA; FSDP shards gathered by every rank)."""
    from harness.util import distributed

    convert: dict[str, Any] = {}
    if lora.pissa_init_dir is not None:
        convert["path_initial_model_for_weight_conversion"] = str(lora.pissa_init_dir)
    if distributed.is_distributed() and getattr(trainer, "is_fsdp_enabled", False):
        # FSDP shards the weights: every rank takes part in gathering the full state for the save
        convert["state_dict"] = trainer.accelerator.get_state_dict(trainer.model)
    if main:
        save_weights(lora.peft_model, out_dir, convert)


def stopped_by_anomaly(result: TrainResult, ckpt_root: Path) -> TrainingStopped:
    good = [path for _, path in checkpoints(ckpt_root) if (path / MARKER).is_file()]
    keep = f"; the newest complete checkpoint is {good[0]}" if good else ""
    return TrainingStopped(
        f"training stopped at step {result.n_steps} by the anomaly check: {result.stop_reason} "
        f"No adapter was written to {result.adapter_dir}{keep}. `harness anomalies` on the step log explains more; "
        "set stop_on_anomaly: false to train through it", result,
    )


def build_record(spec: TrainSpec, base: LoadedBase, data: TrainingRows, parent: AdapterInfo | None, lora: LoraModel,
                 precision: Precision, resume_from: Path | None, anomaly: Any, kernels: Any, trainer: Any,
                 outcome: Outcome, seconds: float) -> AdapterRecord:
    """The adapter's ``harness.json``."""
    from harness.util.provenance import package_versions

    state = trainer.state
    tracked = state.best_metric is not None  # the Trainer tracks the best eval only with early stopping
    best_loss, best_step = (state.best_metric, state.best_global_step) if tracked else best_eval(outcome.steps)
    return AdapterRecord(
        spec=spec.to_dict(),
        base_model=BaseModelRef(str(base.ref.name), base.ref.model_id, str(base.ref.path)),
        data=TrainingData(
            hash=data.hash, n_examples=len(data.rows), n_train=len(data.train_ds),
            n_eval=len(data.eval_ds) if data.eval_ds is not None else 0, n_task=data.n_task,
            n_truncated=data.check.n_truncated, n_supervised_tokens=data.check.n_supervised_tokens,
            source=str(Path(spec.data).resolve()) if spec.data else "in-memory"),
        parent_adapter=ParentRef(parent.adapter_id, str(parent.path)) if parent else None,
        # the answers' format (the JSON keys of the task completions), for leakage checks of this task
        task_format=_task_format(data.rows),
        init_lora_weights="parent" if parent else init_name(lora.init),
        resumed_from=str(resume_from) if resume_from else None,
        anomalies=tuple(anomaly.findings),
        stopped_by_anomaly=anomaly.stop_reason,
        precision=precision.precision,
        gradient_checkpointing=precision.gradient_checkpointing,
        kernels=kernels.path._asdict() if kernels is not None else None,
        device=str(base.device),
        packages=package_versions(),
        metrics=TrainMetrics(final_loss=outcome.final_loss, steps=state.global_step, train_seconds=seconds,
                             n_trainable_parameters=lora.n_trainable, best_eval_loss=best_loss, best_step=best_step),
    )


def adapter_written(out_dir: Path) -> str:
    """The written adapter's id, read back from its files (on every rank, once the main process wrote them)."""
    from harness.models.adapters import inspect_adapter
    from harness.util import distributed

    distributed.barrier()  # the other ranks wait for the main process's files (nothing without a launcher)
    return inspect_adapter(out_dir).adapter_id


# -- data -----------------------------------------------------------------------------------------


def prepare_rows(
    spec: TrainSpec,
    base: LoadedBase,
    examples: Sequence[dict[str, Any]] | None,
    log: Callable[[str], None],
    parent: AdapterInfo | None = None,
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


def _parent_rows(parent: AdapterInfo | None) -> list[dict]:
    """The parent adapter's training data, from the path its harness.json records, read through the
    column mapping (``data.fields``) its recorded spec used."""
    if parent is None:
        raise UsageError("mix.parent needs --from-adapter: it mixes in the data the parent adapter was trained on")
    data = parent.record.data if parent.record is not None else None
    source = data.source if data is not None else None
    if not source or source == "in-memory" or not Path(source).exists():
        raise DatasetError(
            f"{parent.path}: its harness.json does not name a readable training data file ({source!r}); "
            "mix its data in yourself (concatenate it into --data) or drop mix.parent"
        )
    fields = dict((parent.record.spec or {}).get("data_fields") or {}) if parent.record is not None else {}
    return [normalize_row(r, f"{source} row {i + 1}") for i, r in enumerate(map_fields(load_rows(source), fields, source))]


def _split(datasets: Any, rows: list[dict], spec: TrainSpec) -> tuple[Any, Any]:
    ds = datasets.Dataset.from_list(rows)
    if spec.eval_split <= 0:
        return ds, None
    n_eval = math.ceil(len(rows) * spec.eval_split)
    if n_eval >= len(rows):
        raise DatasetError(f"eval_split={spec.eval_split} leaves no training rows out of {len(rows)}; lower it or add data")
    parts = ds.train_test_split(test_size=n_eval, seed=spec.seed, shuffle=True)
    return parts["train"], parts["test"]


def _task_format(rows: list[dict]) -> TaskFormat | None:
    from harness.suites.taskformat import record

    return record([str(r["completion"][-1]["content"]) for r in rows])


def _silent(message: str) -> None:
    pass
