"""Resumable checkpoints: a completion marker per checkpoint, the newest marked one to resume from,
and a SIGTERM handler that makes the Trainer save and stop cleanly.

The HF Trainer's saves are not atomic, and its ``get_last_checkpoint`` picks the highest-numbered
directory even when a kill left it half-written (FAULTS.md 31). So after every save we fsync the
checkpoint's files and then write ``harness-complete.json`` (a ``harness.records.CheckpointMarker``:
temporary name, fsync, rename); only a checkpoint with that marker is resumed from. The marker also holds the hashes of the spec, data,
base model and parent adapter, so a resume with anything changed is refused (FAULTS.md 33).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.records import MARKER_FILE, CheckpointMarker, RecordError, read_marker, write_marker_file

MARKER = MARKER_FILE
QUARANTINE = "quarantine"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Fields that change how often things are logged or saved, not the trajectory: a resume may change them.
_RESUME_FREE_FIELDS = frozenset({"data", "logging_steps", "save_steps"})


@dataclass(frozen=True)
class RunIdentity:
    """What must be equal for a checkpoint to be resumed: spec, data, base model and parent adapter."""

    spec: Mapping[str, Any]
    data_hash: str
    base_model_id: str
    parent_adapter_id: str | None

    @property
    def spec_hash(self) -> str:
        kept = {k: v for k, v in self.spec.items() if k not in _RESUME_FREE_FIELDS}
        return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()

    def to_marker(self, step: int) -> CheckpointMarker:
        return CheckpointMarker(step, self.spec_hash, self.data_hash, self.base_model_id, self.parent_adapter_id,
                                dict(self.spec), time.time())


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def write_marker(checkpoint: Path, identity: RunIdentity, step: int) -> Path:
    """Mark ``checkpoint`` complete: fsync its files, then write the marker atomically."""
    _fsync_tree(checkpoint)
    return write_marker_file(checkpoint, identity.to_marker(step))


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, dir)`` of every ``checkpoint-N`` under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found, reverse=True)


def find_resumable(root: Path, identity: RunIdentity, log: Callable[[str], None] = print) -> Path:
    """The newest checkpoint under ``root`` with a marker; partial ones are moved to ``root/quarantine``.

    Raises:
        InputError: no marked checkpoint, or the marked one was written for another spec, data set,
            base model or parent adapter.
        RecordVersionError: the newest marker was written by a newer adapter-harness (exit 3; nothing is moved).
    """
    marked: tuple[Path, CheckpointMarker] | None = None
    for _, path in checkpoints(root):
        if (path / MARKER).is_file():
            try:
                data: CheckpointMarker | None = read_marker(path)
            except RecordError:
                data = None  # unreadable or malformed: not known to be complete
            if data is not None and marked is None:
                marked = (path, data)
                continue
            if data is not None:
                continue  # an older complete checkpoint: keep it
        # no marker (or an unreadable one): a save that was cut off
        dest = root / QUARANTINE / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.rename(dest)
        log(f"  moved partial checkpoint {path.name} (no {MARKER}) aside to {dest}")
    if marked is None:
        raise InputError(
            f"--resume: no complete checkpoint under {root} (none has {MARKER}); run again without --resume to start over"
        )
    path, data = marked
    _check_same_run(path, data, identity)
    check_checkpoint_files(path)
    return path


def check_checkpoint_files(path: Path) -> None:
    """Check a checkpoint as hostile input before the Trainer reads it (FAULTS.md 13, 16).

    Its adapter must be safetensors and pass the adapter pre-flight; its optimizer, scheduler and RNG
    files are pickles, which the Trainer reads with ``weights_only=True``: they are opened here the
    same way first, so a file replaced by a code-carrying pickle is refused with its name (exit 4)
    instead of surfacing as a bare UnpicklingError that suggests ``weights_only=False``.
    """
    import pickle

    import torch
    from transformers.trainer_pt_utils import safe_globals

    from harness.errors import SafetyError
    from harness.models.adapters import WEIGHTS, inspect_adapter

    if not (path / WEIGHTS).is_file():
        pickles = sorted(p.name for p in path.glob("adapter_model.*") if p.suffix != ".safetensors")
        raise SafetyError(
            f"checkpoint {path} has no {WEIGHTS}" + (f", only {', '.join(pickles)} (a pickle)" if pickles else "")
            + "; refused: the harness resumes only from safetensors checkpoints. Fix: move it aside and resume from "
            "an earlier checkpoint, or start again without --resume"
        )
    inspect_adapter(path)
    for f in sorted(path.iterdir()):
        if f.suffix not in (".pt", ".pth", ".bin") or f.name == "training_args.bin":
            continue  # training_args.bin is never loaded on resume
        try:
            # exactly the Trainer's loader: weights_only, with the numpy types its RNG state needs allowlisted
            with safe_globals():
                torch.load(f, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
            raise SafetyError(
                f"checkpoint file {f} is not a plain tensor file ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "refused (it may carry code). Fix: move the checkpoint aside and resume from an earlier one, or "
                "start again without --resume"
            ) from None


def _check_same_run(path: Path, data: CheckpointMarker, identity: RunIdentity) -> None:
    problems = []
    if data.spec_hash != identity.spec_hash:
        old = data.spec
        changed = sorted(k for k in set(old) | set(identity.spec)
                         if k not in _RESUME_FREE_FIELDS and old.get(k) != identity.spec.get(k))
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {identity.spec.get(k)!r}" for k in changed) or "spec hash differs"
        problems.append(f"the spec changed ({diff})")
    if data.data_hash != identity.data_hash:
        problems.append("the training data changed (hash differs)")
    if data.base_model_id != identity.base_model_id:
        problems.append("the base model changed")
    if data.parent_adapter_id != identity.parent_adapter_id:
        problems.append("the parent adapter changed")
    if problems:
        raise InputError(
            f"--resume refused: checkpoint {path} was written by a different run: {'; '.join(problems)}. "
            "Restore the original spec and data, or start a new run in another --out directory"
        )


class SaveAndStop:
    """A SIGTERM (or any caller) asks for a clean stop: after the current step the Trainer saves a
    checkpoint (which gets its marker) and stops.

    A signal handler must not touch the Trainer mid-step, so it only sets a flag; the callback turns
    the flag into ``control.should_save`` and ``control.should_training_stop`` at the step's end.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: Any = None

    def request(self, signum: int | None = None, frame: Any = None) -> None:
        self.requested = True
        if signum is not None:
            self.signal_name = signal.Signals(signum).name
            # a second signal ends the process at once
            signal.signal(signum, self._previous if self._previous is not None else signal.SIG_DFL)

    def install(self, signum: int = signal.SIGTERM) -> None:
        self._previous = signal.signal(signum, self.request)

    def uninstall(self, signum: int = signal.SIGTERM) -> None:
        if self._previous is not None:
            signal.signal(signum, self._previous)
            self._previous = None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        owner = self

        class _SaveAndStop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if owner.requested:
                    control.should_save = True
                    control.should_training_stop = True
                return control

        return _SaveAndStop()


def marker_callback(identity: RunIdentity, log: Callable[[str], None]) -> Any:
    """A TrainerCallback that writes the completion marker once the Trainer has saved a checkpoint."""
    from transformers import TrainerCallback

    class _Marker(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if args.should_save:  # the main process
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    write_marker(ckpt, identity, state.global_step)
                    log(f"    checkpoint {ckpt} saved")
            return control

    return _Marker()
