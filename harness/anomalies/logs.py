"""Reading loss logs: trainer_state.json, checkpoint and output directories, CSV and JSONL, into a
:class:`StepLog` split into segments at restarts. :class:`Finding` is a record (``harness.records``),
re-exported here."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import InputError
from harness.records import STEP_LOG_FILE, Finding, RecordError, read_adapter_record, read_step_logs

__all__ = ["Finding", "Segment", "StepLog", "from_history", "max_grad_norm_of", "read_log"]

#: A new segment starts where the step goes back, or the epoch goes back by more than this.
EPOCH_RESTART_TOL = 0.01

#: Keys that mark an RL run (TRL GRPO/PPO/RLOO/online DPO); prefixes too.
# "entropy" is not among them: TRL's SFTTrainer logs it (with mean_token_accuracy) on every step.
RL_KEYS = frozenset({"reward", "reward_std", "kl", "clip_ratio", "frac_reward_zero_std"})
RL_PREFIXES = ("rewards/", "objective/", "policy/", "val/")

#: Keys of the final summary row of a finished Trainer run.
SUMMARY_KEYS = frozenset({"train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos"})


@dataclass
class Segment:
    """A stretch of the log with no restart: train rows and the eval rows logged among them."""

    train: list[dict[str, float]]
    eval: list[dict[str, float]]
    index: int = 0


@dataclass
class StepLog:
    """A parsed loss log. Rows keep only numeric values; missing keys are absent (not NaN)."""

    source: str
    rows: list[dict[str, float]]
    summary: dict[str, float] | None = None
    is_rl: bool = False
    note: str | None = None  # e.g. which checkpoint was read and why
    segments: list[Segment] = field(default_factory=list)
    #: The run's gradient clipping threshold when the log says (None: unknown; 0: clipping off).
    max_grad_norm: float | None = None
    #: How many held-out rows each eval loss is a mean over (None: unknown); the overfitting rule's noise.
    eval_size: int | None = None

    @property
    def train_rows(self) -> list[dict[str, float]]:
        return [r for s in self.segments for r in s.train]

    @property
    def eval_rows(self) -> list[dict[str, float]]:
        return [r for s in self.segments for r in s.eval]



# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

_BARE_NONFINITE = re.compile(r'"(?:[^"\\]|\\.)*"|(-?)\b(nan|inf(?:inity)?)\b', re.IGNORECASE)


def _loads_lenient(text: str) -> object:
    """json.loads that also takes bare nan / inf / -inf (any case) as NaN / Infinity."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        def fix(m: re.Match) -> str:
            if m.group(2) is None:  # a string literal: leave it alone
                return m.group(0)
            word = "NaN" if m.group(2).lower() == "nan" else "Infinity"
            return ("-" if m.group(1) and word == "Infinity" else "") + word
        fixed = _BARE_NONFINITE.sub(fix, text)
        if fixed == text:
            raise
        return json.loads(fixed)


def _num(value: object) -> float | None:
    """A log value as a float (NaN/inf kept), or None when it is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        try:
            return float(s)
        except ValueError:
            return None
    return None


def _clean_row(row: Mapping[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in row.items():
        x = _num(v)
        if x is not None:
            out[str(k)] = x
    return out


def _is_summary(row: Mapping[str, float]) -> bool:
    return "loss" not in row and "eval_loss" not in row and any(k in row for k in SUMMARY_KEYS)


def _is_rl_key(key: str) -> bool:
    return key in RL_KEYS or key.startswith(RL_PREFIXES)


def _is_train_row(row: Mapping[str, float], is_rl: bool) -> bool:
    if "loss" in row:
        return True
    return is_rl and any(_is_rl_key(k) for k in row)


def from_history(history: Iterable[Mapping[str, object]], source: str = "<log>", note: str | None = None,
                 max_grad_norm: float | None = None) -> StepLog:
    """Build a StepLog from a ``log_history``-like list of dicts (as the Trainer keeps it).

    ``max_grad_norm``: the run's clipping threshold (``TrainingArguments.max_grad_norm``) when known."""
    rows = [_clean_row(r) for r in history if isinstance(r, Mapping)]
    summary = None
    body: list[dict[str, float]] = []
    for r in rows:
        if _is_summary(r):
            summary = r
        else:
            body.append(r)
    is_rl = any(_is_rl_key(k) for r in body for k in r)
    log = StepLog(source=source, rows=body, summary=summary, is_rl=is_rl, note=note,
                  max_grad_norm=_clip_value(max_grad_norm))
    log.segments = _split_segments(body, is_rl)
    return log


def _split_segments(rows: Sequence[dict[str, float]], is_rl: bool) -> list[Segment]:
    segments: list[Segment] = [Segment([], [], 0)]
    last_step: float | None = None
    last_epoch: float | None = None
    for r in rows:
        is_train = _is_train_row(r, is_rl)
        is_eval = "eval_loss" in r
        if not (is_train or is_eval):
            continue
        step, epoch = r.get("step"), r.get("epoch")
        restart = False
        if is_train and segments[-1].train:
            if step is not None and last_step is not None and step < last_step:
                restart = True
            if epoch is not None and last_epoch is not None and epoch < last_epoch - EPOCH_RESTART_TOL:
                restart = True
        if restart:
            segments.append(Segment([], [], len(segments)))
        if is_train:
            segments[-1].train.append(r)
            if step is not None:
                last_step = step
            if epoch is not None:
                last_epoch = epoch
        if is_eval:
            segments[-1].eval.append(r)
    return [s for s in segments if s.train or s.eval]


def _clip_value(value: object) -> float | None:
    x = _num(value)
    if x is None or not math.isfinite(x):
        return None
    return max(0.0, x)


def max_grad_norm_of(state: object) -> float | None:
    """The clipping threshold a trainer_state-like JSON object carries, if any.

    The Trainer's own trainer_state.json does not store its arguments (they are in training_args.bin, a
    pickle, which is never read); logs written by other tools, or saved with their arguments, may have
    ``max_grad_norm`` at the top level or under ``training_args`` / ``args`` / ``spec`` (our harness.json).
    """
    if not isinstance(state, Mapping):
        return None
    if "max_grad_norm" in state:
        return _clip_value(state["max_grad_norm"])
    for key in ("training_args", "args", "spec"):
        sub = state.get(key)
        if isinstance(sub, Mapping) and "max_grad_norm" in sub:
            return _clip_value(sub["max_grad_norm"])
    return None


def _read_json_file(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the log ({exc.__class__.__name__}: {exc}); pass a readable trainer_state.json, checkpoint directory, CSV or JSONL") from None
    try:
        return _loads_lenient(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); pass the trainer_state.json the Trainer wrote, or a CSV/JSONL of step logs") from None


def _history_from_json(path: Path, data: object) -> list:
    if isinstance(data, list):
        history = data
    elif isinstance(data, dict):
        if "log_history" not in data:
            raise InputError(f"{path}: no 'log_history' key; pass a trainer_state.json (written in the output dir or each checkpoint-*/), or a CSV/JSONL of step logs")
        history = data["log_history"]
        if not isinstance(history, list):
            raise InputError(f"{path}: 'log_history' is {type(history).__name__}, expected a list of step logs")
    else:
        raise InputError(f"{path}: expected a JSON object with 'log_history' (a trainer_state.json), got {type(data).__name__}")
    return history


def _check_nonempty(path: Path, log: StepLog) -> StepLog:
    if not any(s.train or s.eval for s in log.segments):
        raise InputError(f"{path}: the log has no step with a loss, eval_loss or reward (empty log_history?); let the run log at least one step (logging_steps) and pass it again")
    return log


def _read_state_file(path: Path, note: str | None = None) -> StepLog:
    data = _read_json_file(path)
    history = _history_from_json(path, data)
    return _check_nonempty(path, from_history(history, source=str(path), note=note, max_grad_norm=max_grad_norm_of(data)))


def _read_jsonl(path: Path) -> StepLog:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the log ({exc.__class__.__name__}: {exc}); pass a readable JSONL file of step logs") from None
    history = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = _loads_lenient(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {i} is not valid JSON ({exc.msg}); each line must be one step log object such as {{\"step\": 10, \"loss\": 1.23}}") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}: line {i} is a {type(obj).__name__}, expected one step log object per line")
        history.append(obj)
    return _check_nonempty(path, from_history(history, source=str(path)))


def _read_csv(path: Path) -> StepLog:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise InputError(f"{path}: empty CSV; expected a header row (step, loss, grad_norm, learning_rate, epoch, eval_loss, ...) and one row per log")
            history = [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the CSV ({exc.__class__.__name__}: {exc}); pass a UTF-8 CSV with a header row") from None
    cols = {c.strip() for c in reader.fieldnames}
    if not ({"loss", "eval_loss"} & cols or any(_is_rl_key(c) for c in cols)):
        raise InputError(f"{path}: no 'loss', 'eval_loss' or reward column (columns: {', '.join(sorted(cols))}); name the loss column 'loss'")
    return _check_nonempty(path, from_history(history, source=str(path)))


def _checkpoint_number(p: Path) -> int:
    m = re.fullmatch(r"checkpoint-(\d+)", p.name)
    return int(m.group(1)) if m else -1


def _read_dir(path: Path) -> StepLog:
    state = path / "trainer_state.json"
    if state.is_file():
        return _read_state_file(state)
    ours = path / STEP_LOG_FILE  # an adapter trained by the harness keeps its loss curve beside it
    if ours.is_file():
        history = [{k: v for k, v in e.to_dict().items() if k != "format_version"} for e in read_step_logs(ours)]
        log = _check_nonempty(ours, from_history(history, source=str(ours), note=f"the training log of the adapter in {path}"))
        # its record's spec names the clipping threshold; a damaged record is refused where the adapter is
        # loaded, and the log is still usable without it (a newer record's version is refused here too)
        with contextlib.suppress(RecordError):
            record = read_adapter_record(path)
            log.max_grad_norm = _clip_value(record.max_grad_norm) if record is not None else None
            log.eval_size = record.data.n_eval if record is not None and record.data is not None else None
        return log
    checkpoints = sorted((p for p in path.glob("checkpoint-*") if p.is_dir() and _checkpoint_number(p) >= 0),
                         key=_checkpoint_number, reverse=True)
    if not checkpoints:
        raise InputError(f"{path}: no trainer_state.json and no checkpoint-*/ directory in it; pass the Trainer's output dir, a checkpoint dir or a trainer_state.json")
    skipped: list[str] = []
    for ckpt in checkpoints:
        try:
            log = _read_state_file(ckpt / "trainer_state.json")
        except InputError as exc:
            skipped.append(f"{ckpt.name} ({str(exc).split(': ', 1)[-1].split(';')[0]})")
            continue
        if skipped:
            log.note = f"read {ckpt.name}; skipped incomplete {', '.join(skipped)}"
        else:
            log.note = f"read {ckpt.name}, the latest checkpoint"
        return log
    raise InputError(f"{path}: none of the checkpoints has a usable trainer_state.json ({'; '.join(skipped)}); pass a trainer_state.json directly")


def read_log(path: str | Path) -> StepLog:
    """Read a trainer_state.json, a checkpoint dir, an output dir with checkpoint-*/, a CSV or a JSONL.

    Raises :class:`harness.errors.InputError` (exit code 2) with a one-line message naming the file
    and the fix when the input cannot be used.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory; pass a trainer_state.json, a checkpoint dir, an output dir with checkpoint-*/, a CSV or a JSONL")
    if p.is_dir():
        return _read_dir(p)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _read_csv(p)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(p)
    return _read_state_file(p)


