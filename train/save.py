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


#: what torch's C++ archive writer says when a write fails (it drops the errno): only taken for a full
#: disk when the file system is in fact (nearly) full
_WRITE_FAILED = ("iostream error", "unexpected pos", "PytorchStreamWriter failed", "file write failed")
_NEARLY_FULL = 4 * 2**20


def is_disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """A full disk, however the writer reports it: Python's ``OSError(ENOSPC)``; the plain ``Exception`` /
    ``SafetensorError`` of the Rust writers (tokenizers, safetensors), which say "No space left on device
    (os error 28)"; or torch's archive writer ("basic_ios::clear: iostream error", "unexpected pos"), which
    says neither, when the file system of ``path`` has under 4 MiB left."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc)
    if "No space left on device" in text or "os error 28" in text:
        return True
    return path is not None and any(w in text for w in _WRITE_FAILED) and _free_bytes(path) < _NEARLY_FULL


def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def free_space(path: Path) -> str:
    """Free space on the file system of ``path`` (or its nearest existing parent), for the message."""
    return f"{_free_bytes(path) / 2**20:.1f} MiB free"


def disk_full(path: Path, exc: BaseException, hint: str = "the previous adapter there, if any, is intact") -> StorageError:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0] if str(exc) else "ENOSPC"
    return StorageError(f"disk full while writing {path} ({why}; {free_space(path)}); {hint}. Free space and run again")


def _on_disk_full(path: Path, write: Callable[[], T]) -> T:
    try:
        return write()
    except Exception as exc:  # the Rust writers raise plain Exception; anything else is re-raised unchanged
        if is_disk_full(exc, path):
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
        portable_card(staging / "README.md", staging / "adapter_config.json")
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


def portable_card(card_path: Path, config_path: Path) -> None:
    """PEFT's model card names the base by ``base_model_name_or_path`` too: the public hub id where one is known
    (``portable_base_name``), else no base at all rather than a path of this machine (issue 31.5)."""
    if not card_path.is_file():
        return
    from huggingface_hub import ModelCard

    from harness.models.hub import hub_id_syntax

    named = str(json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path") or "")
    card = ModelCard.load(card_path)
    hub = named if hub_id_syntax(named) else None
    card.data.base_model = hub
    # PEFT also tags the card base_model:adapter:<name>: the same rule
    tags = [t for t in (card.data.tags or []) if not str(t).startswith("base_model:")]
    card.data.tags = [*tags, f"base_model:adapter:{hub}"] if hub else (tags or None)
    card.save(card_path)


def write_record_files(adapter_dir: Path, steps: Sequence[StepLogEntry], record: AdapterRecord) -> None:
    """The step log, then ``harness.json`` (the record last: an adapter with a record is a finished one)."""
    _on_disk_full(adapter_dir / STEP_LOG_FILE, lambda: write_step_logs(adapter_dir / STEP_LOG_FILE, steps))
    _on_disk_full(adapter_dir / "harness.json", lambda: write_adapter_record(adapter_dir, record))
