"""The export job: an adapter at a chosen scale, as a plain PEFT adapter (or a merged model).

The update of a LoRA layer is ``scaling * B(A(x))`` (plus B's bias with ``lora_bias``), so multiplying
every ``lora_B`` tensor by the scale gives, exactly, the model the sweep evaluated at that scale: for
plain LoRA, rsLoRA (the scaling is computed the same way on load) and DoRA (the scale multiplies
``B @ A`` inside the weight norm as well). PEFT's ``add_weighted_adapter`` is not used: in peft 0.21.2
it is wrong for rsLoRA and DoRA (peft#3761). ``modules_to_save`` copies are not scaled at run time
and are copied unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from harness.errors import StorageError, UsageError
from harness.models.base import DEFAULT_BASE
from harness.records import AdapterRecord, write_adapter_record


def _staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _swap_in(tmp: Path, out: Path) -> None:
    """Move the finished directory into place; an old one is removed only after the new one is complete."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _record(info, scale: float, kind: str) -> AdapterRecord:
    from harness.records import ExportInfo, ParentRef

    parent = info.record
    return AdapterRecord(
        parent_adapter=ParentRef(info.adapter_id, str(info.path)),
        export=ExportInfo(kind, scale),
        # what the parent knew about its base and its task carries over (identity and leakage checks)
        base_model=parent.base_model if parent is not None else None,
        task_format=parent.task_format if parent is not None else None,
    )


def export_scaled(info, scale: float, out: Path) -> Path:
    """Write ``info`` with every lora_B (and B bias) multiplied by ``scale`` to ``out``."""
    from safetensors.torch import load_file, save_file

    from harness.models.adapters import CONFIG, WEIGHTS

    tensors = load_file(str(info.path / WEIGHTS))
    scaled = {k: (v * scale if (".lora_B." in k or k.endswith(".lora_embedding_B")) else v).contiguous()
              for k, v in tensors.items()}
    tmp = _staging(out)
    try:
        save_file(scaled, str(tmp / WEIGHTS), metadata={"format": "pt"})
        shutil.copyfile(info.path / CONFIG, tmp / CONFIG)
        write_adapter_record(tmp, _record(info, scale, "scaled adapter"))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _swap_in(tmp, out)
    except OSError as exc:
        raise StorageError(f"cannot write {out}: {exc.strerror or exc}; nothing was replaced") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_merged(info, scale: float, ref, out: Path) -> Path:
    """Write the base ``ref`` (a resolved ``BaseModelRef``, checked against the adapter by ``export``) with the
    adapter's update at ``scale`` merged in, as a safetensors model directory."""
    from harness.models.adapters import load_adapter, set_scale
    from harness.models.base import load_base
    base = load_base(ref, device="cpu")
    model = base.model.float()
    peft_model = load_adapter(model, info)
    set_scale(peft_model, scale)
    merged = peft_model.merge_and_unload()
    tmp = _staging(out)
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        base.tokenizer.save_pretrained(str(tmp))
        write_adapter_record(tmp, _record(info, scale, "merged model"))
        _swap_in(tmp, out)
    except OSError as exc:
        raise StorageError(f"cannot write {out}: {exc.strerror or exc}; nothing was replaced") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def export(adapter: Path, scale: float, out: Path, *, merge: bool = False, base: str = DEFAULT_BASE,
           force: bool = False) -> Path:
    """The export job: check the request, the adapter (pre-flight) and that it fits ``base`` (shapes read
    from the base's safetensors headers, no weights loaded), then write the scaled adapter or the merged
    model. An adapter that does not fit its base is refused (exit 3) before anything is written."""
    import math

    from harness.models.adapters import inspect_adapter, precheck_adapter
    from harness.models.base import resolve_base

    if not math.isfinite(scale) or scale < 0:
        raise UsageError(f"--scale {scale!r}: a LoRA scale is a finite number >= 0")
    if out.exists() and not force:
        raise UsageError(f"--out {out} exists; pick a new directory or pass --force to replace it")
    precheck_adapter(adapter)  # a wrong path or config is named before the base is resolved
    ref = resolve_base(base)
    info = inspect_adapter(adapter, base=ref)  # the recorded base, targets, shapes, a partial adapter: exit 3
    return export_merged(info, scale, ref, out) if merge else export_scaled(info, scale, out)
