"""``TrainSpec``: every LoRA and optimiser knob of a training run, parsed and validated once.

Defaults follow common practice for LoRA on small models (DOMAIN.md): r=16, alpha=2r, no dropout
(the fastest path), adapters on every projection, learning rate 2e-4, linear decay, 5% warmup,
gradient clipping at 1.0, seed 3407. Precision and gradient checkpointing default to "auto": chosen
from the device at run time, never from a library default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import InputError
from harness.models.base import DEFAULT_BASE

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INIT_VARIANTS = ("default", "gaussian", "pissa", "loftq")


@dataclass(frozen=True)
class TrainSpec:
    base: str = DEFAULT_BASE
    data: str | None = None
    # column mapping for data as it is: {prompt: ticket, completion: answer} (as a suite's data.fields);
    # written in a spec as data: {path: tickets.jsonl, fields: {prompt: ticket, completion: answer}}
    data_fields: Mapping[str, str] = field(default_factory=dict)
    # LoRA
    r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: str = "default"  # default | gaussian | pissa | loftq (loftq needs bitsandbytes + CUDA)
    # optimiser and schedule
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    warmup_steps: int | None = None  # a fixed warmup step count; when set it replaces warmup_ratio
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # numerics and memory
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: str | bool = "auto"
    max_seq_length: int = 512
    seed: int = 3407
    # fused kernels (train/kernels): Triton on a GPU (or in Triton's CPU interpreter), else the PyTorch
    # reference path; which one runs is logged. Same losses as without, within float rounding.
    kernels: bool = False
    # data mixed in to limit forgetting, as shares of the mixed set: {"general": 0.2} (the base model's
    # own answers to built-in general prompts, or general_data when given), {"parent": 0.3} (the
    # parent adapter's training data, with --from-adapter)
    mix: Mapping[str, float] = field(default_factory=dict)
    general_data: str | None = None  # your own general dataset for mix.general instead of replay
    logging_steps: int = 1
    # stop training when the live anomaly detectors find an error (NaN, divergence, no learning...)
    stop_on_anomaly: bool = True
    # held-out share of the rows for an eval loss every eval_steps (default: logging_steps)
    eval_split: float = 0.0
    eval_steps: int | None = None
    early_stopping_patience: int | None = None  # stop after this many evals without a lower eval_loss
    save_steps: int | None = None  # write a resumable checkpoint every N steps (None: only on SIGTERM)

    def __post_init__(self) -> None:
        # 8 and 8.0 are one alpha: keep float fields float so records and resume hashes agree
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["mix"] = dict(self.mix)
        d["data_fields"] = dict(self.data_fields)
        return d


def validate(spec: TrainSpec) -> tuple[list[str], list[str]]:
    """Return (errors, warnings) for ``spec``; each names the field and the fix."""
    errors, warnings = [], []
    if spec.r <= 0:
        errors.append(f"r={spec.r}: the LoRA rank must be a positive integer (usual: 8, 16, 32, 64)")
    if not (spec.lora_alpha > 0 and math.isfinite(spec.lora_alpha)):
        errors.append(f"lora_alpha={spec.lora_alpha}: must be positive (a negative alpha flips the update); usual: r or 2·r")
    elif spec.r > 0 and not (0.5 * spec.r <= spec.lora_alpha <= 4 * spec.r):
        warnings.append(f"lora_alpha={spec.lora_alpha} is far from r..2r (r={spec.r}): the update is scaled by {spec.lora_alpha / spec.r:g}")
    if not 0 <= spec.lora_dropout < 1:
        errors.append(f"lora_dropout={spec.lora_dropout}: must be in [0, 1); usual 0 or 0.05-0.2")
    if not spec.learning_rate > 0:
        errors.append(f"learning_rate={spec.learning_rate}: must be positive (LoRA usual: 5e-5 to 2e-4)")
    if spec.max_grad_norm <= 0 and spec.learning_rate > 1e-4:
        warnings.append(f"no gradient clipping with learning_rate={spec.learning_rate}: gradients can explode; set max_grad_norm 0.3-1.0")
    if spec.per_device_train_batch_size <= 0 or spec.gradient_accumulation_steps <= 0:
        errors.append("per_device_train_batch_size and gradient_accumulation_steps must be positive")
    if spec.precision not in ("auto", "fp32", "bf16", "fp16"):
        errors.append(f"precision={spec.precision!r}: use auto, fp32, bf16 or fp16")
    if spec.bias not in ("none", "all", "lora_only"):
        errors.append(f"bias={spec.bias!r}: use none, all or lora_only")
    if not spec.target_modules:
        errors.append("target_modules is empty: name the projections to adapt (default: all of q,k,v,o,gate,up,down)")
    if spec.max_seq_length <= 0:
        errors.append("max_seq_length must be positive")
    if str(spec.init_lora_weights).lower() not in (*INIT_VARIANTS, "true"):
        errors.append(f"init_lora_weights={spec.init_lora_weights!r}: use one of {', '.join(INIT_VARIANTS)}")
    if spec.warmup_steps is not None and spec.warmup_steps < 0:
        errors.append(f"warmup_steps={spec.warmup_steps}: must be >= 0 (usual: 5-10% of steps, or a count such as 20)")
    if not 0 <= spec.warmup_ratio < 1:
        errors.append(f"warmup_ratio={spec.warmup_ratio}: must be in [0, 1) (usual 0.05-0.1); or set warmup_steps")
    if not 0 <= spec.eval_split < 1:
        errors.append(f"eval_split={spec.eval_split}: the held-out share must be in [0, 1) (usual 0.05-0.2)")
    for name in ("eval_steps", "save_steps", "early_stopping_patience"):
        value = getattr(spec, name)
        if value is not None and value <= 0:
            errors.append(f"{name}={value}: must be a positive integer (or unset)")
    if spec.early_stopping_patience is not None and spec.eval_split <= 0:
        errors.append("early_stopping_patience needs an eval loss: set eval_split (e.g. 0.1) too")
    if spec.eval_steps is not None and spec.eval_split <= 0:
        warnings.append(f"eval_steps={spec.eval_steps} has no effect without eval_split > 0")
    if spec.precision == "fp16":
        warnings.append("precision=fp16 overflows easily (loss 0.0 or NaN, DOMAIN.md); prefer bf16 where the GPU has it")
    for name, share in spec.mix.items():
        if name not in ("general", "parent"):
            errors.append(f"mix.{name}: unknown; use general (replay or general_data) or parent (the parent adapter's data)")
        elif not isinstance(share, (int, float)) or not 0 < share < 1:
            errors.append(f"mix.{name}={share}: a share of the mixed set must be between 0 and 1 (usual 0.1-0.3)")
    if sum(v for v in spec.mix.values() if isinstance(v, (int, float))) >= 1:
        errors.append(f"mix shares add up to {sum(spec.mix.values()):g}: they must leave room for the task data (< 1)")
    if spec.kernels and (spec.lora_dropout > 0 or spec.use_dora or spec.bias != "none"):
        warnings.append("kernels: the fused LoRA path needs lora_dropout 0, no DoRA and bias none; "
                        "the LoRA layers keep PEFT's forward (the other kernels still apply)")
    if spec.general_data and "general" not in spec.mix:
        warnings.append("general_data is set but mix.general is not: the general data is not used")
    return errors, warnings


_FIELD_TYPES = {f.name: {"int": int, "float": float, "bool": bool, "str": str}.get(str(f.type))
                for f in dataclasses.fields(TrainSpec)}
_OPTIONAL_INT = {"warmup_steps", "eval_steps", "early_stopping_patience", "save_steps"}


def coerce_value(key: str, value: Any, where: str = "spec") -> Any:
    """Type a value from YAML or a ``key=value`` flag by its field: YAML reads ``1e-4`` as a string,
    and a flag value is always one."""
    known = {f.name for f in dataclasses.fields(TrainSpec)}
    if key not in known:
        raise InputError(f"{where}: unknown field {key!r}; known: {', '.join(sorted(known))}")
    if key == "mix" and isinstance(value, str):
        value = yaml.safe_load(value) or {}
    if key == "mix" and not isinstance(value, Mapping):
        raise InputError(f"{where}: mix={value!r} must be a mapping such as {{general: 0.2}}")
    if isinstance(value, str) and key not in ("target_modules", "mix"):
        text = value.strip()
        parsed = yaml.safe_load(text) if text else None
        if key in _OPTIONAL_INT and parsed in (None, "none", "None", "null"):
            return None
        value = parsed if parsed is not None else text
    if key == "target_modules":
        # a string would reach PEFT as a regex over module names: always a tuple of names here
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else tuple(value)
    kind = int if key in _OPTIONAL_INT else _FIELD_TYPES.get(key)
    if value is None or kind is None or (isinstance(value, bool) and kind is bool):
        return value
    try:
        if kind is float and not isinstance(value, bool):
            return float(value)
        if kind is int and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
    except (TypeError, ValueError):
        pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind in (int, float) or (kind is bool and not isinstance(value, bool)):
        raise InputError(f"{where}: {key}={value!r} is not a valid {kind.__name__}")
    return value


#: what a training row's columns can be mapped to (the shapes normalize_row accepts)
DATA_TARGETS = ("prompt", "completion", "instruction", "input", "output", "messages")


def check_fields(fields: Any, where: str) -> dict[str, str]:
    """Validate a data.fields mapping (shape name -> column name)."""
    if isinstance(fields, str):
        import yaml

        fields = yaml.safe_load(fields)
    if not isinstance(fields, Mapping):
        raise InputError(f"{where}: data.fields must map {'/'.join(DATA_TARGETS)} to column names, e.g. "
                         "{prompt: ticket, completion: answer}")
    bad = sorted(str(k) for k in fields if k not in DATA_TARGETS)
    if bad:
        raise InputError(f"{where}: data.fields: unknown key(s) {', '.join(bad)}; use {', '.join(DATA_TARGETS)}")
    return {str(k): str(v) for k, v in fields.items()}


def _split_data(raw: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """``data: {path: ..., fields: {prompt: ticket, completion: answer}}`` (the form suites use) as
    ``data`` and ``data_fields``; a plain ``data`` path is left as it is."""
    if not isinstance(raw.get("data"), Mapping):
        return raw
    d = dict(raw["data"])
    extra = sorted(set(d) - {"path", "fields"})
    if extra or "path" not in d:
        raise InputError(f"{path or 'spec'}: data must be a path or {{path: FILE, fields: {{prompt: COLUMN, completion: COLUMN}}}}"
                         + (f"; unknown key(s) {', '.join(extra)}" if extra else "; path is missing"))
    out = {**raw, "data": str(d["path"]) if d["path"] is not None else None}
    if d.get("fields") is not None:
        out["data_fields"] = d["fields"]
    return out


def load_spec(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainSpec:
    """Read a YAML spec (optional), apply overrides, validate; all errors are reported together."""
    raw: dict[str, Any] = {}
    if path is not None:
        from harness.util.yamlsafe import load_yaml_file

        raw = load_yaml_file(Path(path), "training spec") or {}
        if not isinstance(raw, dict):
            raise InputError(f"{path}: a training spec must be a YAML mapping of field: value")
    # Split `data: {path, fields}` in the file and in the overrides before merging them: `--data F` (an
    # override of the path alone) keeps the spec's column mapping, as a next round's file usually
    # has the first round's columns.
    raw = {**_split_data(raw, path), **_split_data(dict(overrides or {}), path)}
    if "data_fields" in raw:
        raw["data_fields"] = check_fields(raw["data_fields"], str(path or "spec"))
    known = {f.name for f in dataclasses.fields(TrainSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{path or 'spec'}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    raw = {k: coerce_value(k, v, str(path or "spec")) for k, v in raw.items()}
    try:
        spec = TrainSpec(**raw)
    except TypeError as exc:
        raise InputError(f"{path or 'spec'}: {exc}") from None
    errors, _ = validate(spec)
    if errors:
        # one line: the CLI prints an error as a single line
        raise InputError(f"{len(errors)} problem(s) in training spec {path or ''}: " + "; ".join(errors))
    return spec
