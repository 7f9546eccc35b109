"""The records that cross parts, typed and versioned: one frozen dataclass each, one reader, one writer.

- :class:`AdapterRecord`: an adapter's ``harness.json`` (written by training and by export; read by
  the adapter pre-flight, eval, gates, task-format and anomaly readers, export and the store's
  ``adapters.harness`` column, which holds the same JSON).
- :class:`CheckpointMarker`: ``harness-complete.json``, written into a checkpoint once every file
  of it is on disk (``train/checkpoints.py``).
- :class:`StepLogEntry`: one line of an adapter's ``step_logs.jsonl`` (its loss curve).
- :class:`Finding`: one anomaly finding ``{kind, severity, step, message}`` (DESIGN.md). Findings
  are kept inside an adapter record and in the store, so they carry the version of the record (or
  the store schema) that holds them; ``Finding.format_version`` names the layout of one finding.

Versions: every record file carries ``format_version``. A file written before versions existed has
none and is version 0 (its layout is version 1's): it is read and migrated. A version newer than
this harness knows is refused with :class:`RecordVersionError` (exit 3): a newer writer may have
changed what a field means, and a guess would give quietly wrong numbers. A record whose fields
have the wrong type is a :class:`RecordError` (exit 2) naming the file and the field: records come
with adapters and checkpoints, which are hostile input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import IncompatibleError, InputError
from harness.util.files import write_text_atomic

ADAPTER_RECORD_FILE = "harness.json"
MARKER_FILE = "harness-complete.json"
STEP_LOG_FILE = "step_logs.jsonl"

#: the newest layout of each record this harness reads and the one it writes
ADAPTER_RECORD_VERSION = 1
MARKER_VERSION = 1
STEP_LOG_VERSION = 1
FINDING_VERSION = 1

SEVERITIES = ("error", "warning", "info")
_UPGRADE = "upgrade adapter-harness (pip install -U adapter-harness) to read it"


class RecordError(InputError):
    """A record file that cannot be read: not JSON, not an object, or a field of the wrong type."""


class RecordVersionError(IncompatibleError):
    """A record written by a newer adapter-harness than this one (exit 3)."""


# --------------------------------------------------------------------------------------------
# Typed access to one JSON object, every problem naming the file and the field
# --------------------------------------------------------------------------------------------


class _Fields:
    def __init__(self, obj: object, where: str, fix: str, prefix: str = "") -> None:
        if not isinstance(obj, Mapping):
            name = f"field {prefix.rstrip('.')}" if prefix else "the record"
            raise RecordError(f"{where}: {name} is {_kind(obj)}, expected a JSON object; {fix}")
        self.obj, self.where, self.fix, self.prefix = obj, where, fix, prefix

    def _bad(self, key: str, value: object, expected: str) -> RecordError:
        return RecordError(f"{self.where}: field {self.prefix}{key} is {_kind(value)}, expected {expected}; {self.fix}")

    def _get(self, key: str, ok: Any, expected: str) -> Any:
        value = self.obj.get(key)
        if value is None:
            return None
        if not ok(value):
            raise self._bad(key, value, expected)
        return value

    def text(self, key: str) -> str | None:
        return self._get(key, lambda v: isinstance(v, str), "a string")

    def whole(self, key: str) -> int | None:
        return self._get(key, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")

    def number(self, key: str) -> float | None:
        v = self._get(key, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
        return None if v is None else float(v)

    def flag(self, key: str) -> bool | None:
        return self._get(key, lambda v: isinstance(v, bool), "true or false")

    def sub(self, key: str) -> _Fields | None:
        value = self.obj.get(key)
        return None if value is None else _Fields(value, self.where, self.fix, f"{self.prefix}{key}.")

    def mapping(self, key: str) -> dict[str, Any] | None:
        v = self._get(key, lambda v: isinstance(v, Mapping), "a JSON object")
        return None if v is None else dict(v)

    def items(self, key: str) -> list[Any]:
        return list(self._get(key, lambda v: isinstance(v, list), "a list") or [])


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}")


def _version(obj: Mapping[str, Any], where: str, what: str, supported: int, fix: str) -> int:
    """The record's format_version (0 when absent: written before records had one)."""
    v = obj.get("format_version", 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RecordError(f"{where}: format_version is {v!r}, expected a whole number >= 0; {fix}")
    if v > supported:
        raise RecordVersionError(
            f"{where}: {what} format_version {v} is newer than this adapter-harness reads (up to version "
            f"{supported}); {_UPGRADE}")
    return v


def _finite(value: Any) -> Any:
    """JSON-ready: non-finite floats become null (DuckDB sorts NaN above every number), paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _load_json(text: str, where: str, fix: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RecordError(f"{where}: not valid JSON ({exc}); {fix}") from None


def _read_text(path: Path, fix: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: cannot read it ({type(exc).__name__}: {exc}); {fix}") from None


# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One anomaly: what kind, how bad, at which logged step (None when it is about the whole run)."""

    kind: str
    severity: str  # "error" | "warning" | "info"
    step: int | None
    message: str

    format_version: ClassVar[int] = FINDING_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The writer: ``{kind, severity, step, message}``."""
        return {"kind": self.kind, "severity": self.severity, "step": self.step, "message": self.message}

    @classmethod
    def from_dict(cls, obj: object, where: str, fix: str = "fix the record or delete it") -> Finding:
        """The reader: one finding as a record or the store holds it."""
        f = _Fields(obj, where, fix, "finding.")
        severity = f.text("severity")
        if severity not in SEVERITIES:
            raise RecordError(f"{where}: finding.severity is {severity!r}, expected one of {', '.join(SEVERITIES)}; {fix}")
        step = f.obj.get("step")
        if isinstance(step, float) and step.is_integer():
            step = int(step)  # a store row read back through a DOUBLE
        elif step is not None:
            step = f.whole("step")
        return cls(f.text("kind") or "", severity, step, f.text("message") or "")


# --------------------------------------------------------------------------------------------
# harness.json
# --------------------------------------------------------------------------------------------

_ADAPTER_FIX = ("restore the adapter's harness.json as its training run wrote it, or delete it (the adapter is "
                "then treated as one from elsewhere: no base-identity check, lineage or task format from it)")


@dataclass(frozen=True)
class BaseModelRef:
    """The base model an adapter was trained on; ``model_id`` is the hash of its weights."""

    name: str | None = None
    model_id: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class ParentRef:
    """The adapter a continued fine-tune (or an export) started from: the one place lineage is read."""

    adapter_id: str
    path: str | None = None


@dataclass(frozen=True)
class TrainingData:
    """What the adapter was trained on: the hash of the mixed rows and how they were used."""

    hash: str | None = None
    n_examples: int | None = None
    n_train: int | None = None
    n_eval: int | None = None
    n_task: int | None = None
    n_truncated: int | None = None
    n_supervised_tokens: int | None = None
    #: the data file's resolved path, or "in-memory"
    source: str | None = None


@dataclass(frozen=True)
class TaskFormat:
    """The task's answer format (``json_keys``: the JSON keys of the training completions)."""

    kind: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class TrainMetrics:
    final_loss: float | None = None
    steps: int | None = None
    train_seconds: float | None = None
    n_trainable_parameters: int | None = None
    best_eval_loss: float | None = None
    best_step: int | None = None


@dataclass(frozen=True)
class ExportInfo:
    """An exported adapter or merged model: what it is and the scale baked in."""

    kind: str
    scale: float | None


@dataclass(frozen=True)
class AdapterRecord:
    """``harness.json``: the spec, the hashes of base model, data and parent adapter, package versions."""

    format_version: int = ADAPTER_RECORD_VERSION
    #: the TrainSpec as a mapping (``TrainSpec.to_dict()``; train/ owns its fields)
    spec: Mapping[str, Any] | None = None
    base_model: BaseModelRef | None = None
    data: TrainingData | None = None
    parent_adapter: ParentRef | None = None
    task_format: TaskFormat | None = None
    #: the spec's init name (default, gaussian, pissa, loftq), or "parent" for a continued adapter
    init_lora_weights: str | None = None
    resumed_from: str | None = None
    anomalies: tuple[Finding, ...] = ()
    stopped_by_anomaly: str | None = None
    precision: str | None = None
    gradient_checkpointing: bool | None = None
    #: the kernel path chosen ({name, reason}), None without kernels
    kernels: Mapping[str, Any] | None = None
    device: str | None = None
    packages: Mapping[str, str | None] = field(default_factory=dict)
    metrics: TrainMetrics | None = None
    export: ExportInfo | None = None

    @property
    def parent_adapter_id(self) -> str | None:
        return self.parent_adapter.adapter_id if self.parent_adapter else None

    @property
    def base_model_id(self) -> str | None:
        return self.base_model.model_id if self.base_model else None

    @property
    def task_keys(self) -> tuple[str, ...]:
        fmt = self.task_format
        return fmt.keys if fmt is not None and fmt.kind == "json_keys" else ()

    @property
    def max_grad_norm(self) -> float | None:
        """The spec's clipping threshold (0: off), None when the record has no spec or no number."""
        v = (self.spec or {}).get("max_grad_norm")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def seed(self) -> int | None:
        v = (self.spec or {}).get("seed")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def to_dict(self) -> dict[str, Any]:
        """The writer's layout (JSON-ready: non-finite numbers are null)."""
        d: dict[str, Any] = {
            "format_version": ADAPTER_RECORD_VERSION,
            "spec": dict(self.spec) if self.spec is not None else None,
            "base_model": _plain(self.base_model),
            "data": _plain(self.data),
            "parent_adapter": _plain(self.parent_adapter),
            "task_format": {"kind": self.task_format.kind, "keys": list(self.task_format.keys)} if self.task_format else None,
            "init_lora_weights": self.init_lora_weights,
            "resumed_from": self.resumed_from,
            "anomalies": [f.to_dict() for f in self.anomalies],
            "stopped_by_anomaly": self.stopped_by_anomaly,
            "precision": self.precision,
            "gradient_checkpointing": self.gradient_checkpointing,
            "kernels": dict(self.kernels) if self.kernels is not None else None,
            "device": self.device,
            "packages": dict(self.packages),
            "metrics": _plain(self.metrics),
        }
        if self.export is not None:
            d["export"] = _plain(self.export)
        return _finite(d)

    def to_json(self) -> str:
        """The text written to ``harness.json`` and to the store's ``adapters.harness`` column."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, obj: object, where: str) -> AdapterRecord:
        """The reader (versions 0 and 1; a newer one is refused)."""
        if not isinstance(obj, Mapping):
            raise RecordError(f"{where}: the record is {_kind(obj)}, expected a JSON object; {_ADAPTER_FIX}")
        _version(obj, where, "harness.json", ADAPTER_RECORD_VERSION, _ADAPTER_FIX)
        # version 0 (no format_version) has version 1's layout; the one difference to migrate is the
        # default init, which version 0 wrote as PEFT's value `true`
        f = _Fields(obj, where, _ADAPTER_FIX)
        init = obj.get("init_lora_weights")
        init = "default" if init is True else f.text("init_lora_weights")
        base, data, parent, fmt, metrics, export = (f.sub(k) for k in
                                                    ("base_model", "data", "parent_adapter", "task_format", "metrics", "export"))
        if parent is not None and not parent.text("adapter_id"):
            raise RecordError(f"{where}: field parent_adapter has no adapter_id; {_ADAPTER_FIX}")
        keys = fmt.items("keys") if fmt is not None else []
        if not all(isinstance(k, str) for k in keys):
            raise RecordError(f"{where}: field task_format.keys holds a non-string; {_ADAPTER_FIX}")
        packages = f.mapping("packages") or {}
        return cls(
            spec=f.mapping("spec"),
            base_model=BaseModelRef(base.text("name"), base.text("model_id"), base.text("path")) if base else None,
            data=TrainingData(data.text("hash"), data.whole("n_examples"), data.whole("n_train"), data.whole("n_eval"),
                              data.whole("n_task"), data.whole("n_truncated"), data.whole("n_supervised_tokens"),
                              data.text("source")) if data else None,
            parent_adapter=ParentRef(parent.text("adapter_id") or "", parent.text("path")) if parent else None,
            task_format=TaskFormat(fmt.text("kind") or "", tuple(keys)) if fmt else None,
            init_lora_weights=init,
            resumed_from=f.text("resumed_from"),
            anomalies=tuple(Finding.from_dict(a, where, _ADAPTER_FIX) for a in f.items("anomalies")),
            stopped_by_anomaly=f.text("stopped_by_anomaly"),
            precision=f.text("precision"),
            gradient_checkpointing=f.flag("gradient_checkpointing"),
            kernels=f.mapping("kernels"),
            device=f.text("device"),
            packages={str(k): (None if v is None else str(v)) for k, v in packages.items()},
            metrics=TrainMetrics(metrics.number("final_loss"), metrics.whole("steps"), metrics.number("train_seconds"),
                                 metrics.whole("n_trainable_parameters"), metrics.number("best_eval_loss"),
                                 metrics.whole("best_step")) if metrics else None,
            export=ExportInfo(export.text("kind") or "", export.number("scale")) if export else None,
        )


def _plain(obj: Any) -> dict[str, Any] | None:
    import dataclasses

    return None if obj is None else dataclasses.asdict(obj)


def parse_adapter_record(text: str, where: str) -> AdapterRecord:
    """An adapter record from its JSON text (a ``harness.json`` file or the store's ``adapters.harness``)."""
    return AdapterRecord.from_dict(_load_json(text, where, _ADAPTER_FIX), where)


def read_adapter_record(adapter_dir: Path | str) -> AdapterRecord | None:
    """The adapter's ``harness.json``, None when it has none (an adapter from elsewhere).

    Raises:
        RecordError: unreadable, not JSON, or a field of the wrong type (exit 2).
        RecordVersionError: written by a newer adapter-harness (exit 3).
    """
    path = Path(adapter_dir) / ADAPTER_RECORD_FILE
    if not path.is_file():
        return None
    return parse_adapter_record(_read_text(path, _ADAPTER_FIX), str(path))


def write_adapter_record(adapter_dir: Path | str, record: AdapterRecord) -> Path:
    """Write ``harness.json`` into ``adapter_dir`` atomically (OSError, ENOSPC included, propagates)."""
    return write_text_atomic(Path(adapter_dir) / ADAPTER_RECORD_FILE, record.to_json())


# --------------------------------------------------------------------------------------------
# Checkpoint marker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointMarker:
    """``harness-complete.json``: the checkpoint is whole, and which run wrote it (the resume check)."""

    step: int
    spec_hash: str
    data_hash: str
    base_model_id: str
    parent_adapter_id: str | None
    #: the spec as it was (to name the fields a refused resume changed)
    spec: Mapping[str, Any] = field(default_factory=dict)
    #: seconds since the epoch
    written_at: float | None = None
    format_version: int = MARKER_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _finite({"format_version": MARKER_VERSION, "step": self.step, "spec_hash": self.spec_hash,
                        "data_hash": self.data_hash, "base_model_id": self.base_model_id,
                        "parent_adapter_id": self.parent_adapter_id, "spec": dict(self.spec),
                        "written_at": self.written_at})


_MARKER_FIX = "the checkpoint's save was cut off or the marker was changed: resume from another checkpoint"


def read_marker(checkpoint: Path) -> CheckpointMarker:
    """The marker of ``checkpoint`` (versions 0 and 1).

    Raises:
        RecordError: missing, unreadable, or malformed (the checkpoint is not known to be complete).
        RecordVersionError: written by a newer adapter-harness (exit 3; the checkpoint may be fine).
    """
    path = Path(checkpoint) / MARKER_FILE
    obj = _load_json(_read_text(path, _MARKER_FIX), str(path), _MARKER_FIX)
    f = _Fields(obj, str(path), _MARKER_FIX)
    _version(f.obj, str(path), "checkpoint marker", MARKER_VERSION, _MARKER_FIX)
    step, spec_hash, data_hash, base_id = f.whole("step"), f.text("spec_hash"), f.text("data_hash"), f.text("base_model_id")
    if step is None or spec_hash is None or data_hash is None or base_id is None:
        raise RecordError(f"{path}: step, spec_hash, data_hash and base_model_id are all required; {_MARKER_FIX}")
    return CheckpointMarker(step, spec_hash, data_hash, base_id, f.text("parent_adapter_id"), f.mapping("spec") or {},
                            f.number("written_at"))


def write_marker_file(checkpoint: Path, marker: CheckpointMarker) -> Path:
    """Write ``harness-complete.json`` into ``checkpoint`` atomically (after its files are on disk)."""
    return write_text_atomic(Path(checkpoint) / MARKER_FILE, json.dumps(marker.to_dict(), indent=2, allow_nan=False))


# --------------------------------------------------------------------------------------------
# Step logs
# --------------------------------------------------------------------------------------------

_STEP_FIELDS = ("step", "epoch", "loss", "grad_norm", "learning_rate", "eval_loss")


@dataclass(frozen=True)
class StepLogEntry:
    """One logged step: a train row (``loss`` set) or an eval row (``eval_loss`` set).

    Values are kept as logged (a NaN loss stays NaN: the anomaly rules must see it).
    """

    step: int
    epoch: float | None = None
    loss: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    eval_loss: float | None = None
    #: the other numbers the trainer logged (mean_token_accuracy, eval_runtime, ...)
    extra: Mapping[str, float] = field(default_factory=dict)
    format_version: int = STEP_LOG_VERSION

    @classmethod
    def from_trainer(cls, log: Mapping[str, Any]) -> StepLogEntry:
        """From one entry of the Trainer's ``log_history`` (non-numbers are dropped)."""
        nums = {str(k): float(v) for k, v in log.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        step = int(nums.pop("step", 0.0))
        epoch, loss, grad_norm, lr, eval_loss = (nums.pop(k, None) for k in _STEP_FIELDS[1:])
        return cls(step, epoch, loss, grad_norm, lr, eval_loss, extra=nums)

    def to_dict(self) -> dict[str, Any]:
        """One line's object: format_version, the named fields that are set, then the extra numbers."""
        d: dict[str, Any] = {"format_version": STEP_LOG_VERSION, "step": self.step}
        d.update({k: getattr(self, k) for k in _STEP_FIELDS[1:] if getattr(self, k) is not None})
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d


_STEP_FIX = "restore the adapter's step_logs.jsonl as training wrote it, or delete it"


def read_step_logs(path: Path | str) -> list[StepLogEntry]:
    """Every entry of a ``step_logs.jsonl`` (version 0: the Trainer's log rows as they were; 1: with format_version).

    Raises:
        RecordError: a line that is not a JSON object or has a field of the wrong type.
        RecordVersionError: a line written by a newer adapter-harness (exit 3).
    """
    path = Path(path)
    out = []
    for i, line in enumerate(_read_text(path, _STEP_FIX).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {i}"
        f = _Fields(_load_json(line, where, _STEP_FIX), where, _STEP_FIX)
        _version(f.obj, where, "step log", STEP_LOG_VERSION, _STEP_FIX)
        for k in _STEP_FIELDS:
            f.number(k)  # type check: a number or absent
        step = f.number("step")
        if step is not None and not (math.isfinite(step) and step == int(step)):
            raise RecordError(f"{where}: field step is {step!r}, expected a whole number; {_STEP_FIX}")
        out.append(StepLogEntry.from_trainer({k: v for k, v in f.obj.items() if k != "format_version"}))
    return out


def write_step_logs(path: Path | str, entries: Iterable[StepLogEntry]) -> Path:
    """Write ``step_logs.jsonl`` atomically, one entry per line (NaN/Infinity kept as JSON's extension)."""
    return write_text_atomic(Path(path), "".join(json.dumps(e.to_dict()) + "\n" for e in entries))
