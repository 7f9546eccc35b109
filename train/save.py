"""Writing a trained adapter: PEFT's files moved in with one rename each, then its step log and its
record (``harness.records``), each atomically, so a crash or a full disk never leaves a half-written
adapter where a good one was (FAULTS.md 32)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import StorageError
from harness.records import STEP_LOG_FILE, AdapterRecord, StepLogEntry, write_adapter_record, write_step_logs

T = TypeVar("T")


def disk_full(path: Path, exc: OSError) -> StorageError:
    free = shutil.disk_usage(path if path.exists() else path.parent).free
    return StorageError(f"disk full while writing {path} ({exc.strerror}; {free / 2**20:.0f} MiB free); the previous "
                        "adapter there, if any, is intact. Free space and run again")


def _on_disk_full(path: Path, write: Callable[[], T]) -> T:
    try:
        return write()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full(path, exc) from None
        raise


def save_weights(peft_model: Any, adapter_dir: Path, convert: dict[str, Any]) -> None:
    """Save PEFT's files beside the adapter (``.saving``) and move them in with one rename each.

    ``convert``: extra ``save_pretrained`` arguments (the PiSSA conversion, an FSDP-gathered state dict).
    """
    adapter_dir.mkdir(parents=True, exist_ok=True)
    staging = adapter_dir / ".saving"
    shutil.rmtree(staging, ignore_errors=True)

    def save() -> None:
        peft_model.save_pretrained(str(staging), safe_serialization=True, **convert)
        portable_base_name(staging / "adapter_config.json")
        for f in sorted(staging.iterdir()):
            os.replace(f, adapter_dir / f.name)

    try:
        _on_disk_full(adapter_dir, save)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def portable_base_name(config_path: Path) -> None:
    """PEFT writes the base's local directory (for the embedded base, a path inside our cache) into
    base_model_name_or_path, so the adapter does not name its base anywhere else; write the public name
    instead (the local path stays in harness.json)."""
    from harness.models.base import EMBEDDED, EMBEDDED_HUB_IDS, harness_home

    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    named = str(cfg.get("base_model_name_or_path") or "")
    models = harness_home() / "models"
    for name in EMBEDDED:
        if named.startswith(str(models / name)):
            cfg["base_model_name_or_path"] = EMBEDDED_HUB_IDS[name][0]
            config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_record_files(adapter_dir: Path, steps: Sequence[StepLogEntry], record: AdapterRecord) -> None:
    """The step log, then ``harness.json`` (the record last: an adapter with a record is a finished one)."""
    _on_disk_full(adapter_dir / STEP_LOG_FILE, lambda: write_step_logs(adapter_dir / STEP_LOG_FILE, steps))
    _on_disk_full(adapter_dir / "harness.json", lambda: write_adapter_record(adapter_dir, record))
