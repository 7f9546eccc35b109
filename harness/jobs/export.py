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


def export_scaled(info, scale: float, out: Path, card: str | None = None) -> Path:
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
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
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


def export_merged(info, scale: float, ref, out: Path, card: str | None = None) -> Path:
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
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        _swap_in(tmp, out)
    except OSError as exc:
        raise StorageError(f"cannot write {out}: {exc.strerror or exc}; nothing was replaced") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def base_hub_id(ref, given: str | None = None) -> str | None:
    """The base model's hub id for a model card: ``--base-id``, the embedded model's, the name given when it is
    one, or the base's own config (``_name_or_path``); None rather than a local path."""
    from harness.models.base import EMBEDDED_HUB_IDS
    from harness.models.hub import hub_id_syntax

    if given:
        return given
    known = EMBEDDED_HUB_IDS.get(str(ref.name))
    if known:
        return known[0]
    if hub_id_syntax(str(ref.name)):
        return str(ref.name)
    import json

    try:
        named = json.loads((ref.path / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return named if isinstance(named, str) and hub_id_syntax(named) else None


def stored_results(db: Path | None, adapter_id: str, scale: float) -> list[dict]:
    """Each suite's headline (and format leakage) of this adapter at this scale, from the newest run of the store
    that evaluated it there: suite, metric, mean over the scored examples, their count, the run id."""
    from harness.store import Store, default_db_path

    path = Path(db or default_db_path())
    if not path.exists():
        return []
    store = Store(path, read_only=True)
    rows = store.query(
        """
        WITH newest AS (SELECT g.run_id FROM generations g JOIN runs r USING (run_id)
                        WHERE g.adapter_id = ? AND abs(g.scale - ?) < 1e-9 ORDER BY r.started_at DESC LIMIT 1)
        SELECT v.suite_name, v.metric, avg(v.value) AS mean, count(v.value) AS n, any_value(v.run_id) AS run_id
        FROM v_scores v JOIN suites s ON s.suite_id = v.suite_id
        WHERE v.run_id = (SELECT run_id FROM newest) AND v.adapter_id = ? AND abs(v.scale - ?) < 1e-9
              AND (v.metric = s.headline OR v.metric = 'format_leakage') AND v.value IS NOT NULL
        GROUP BY v.suite_name, v.metric ORDER BY v.suite_name, v.metric
        """, [adapter_id, scale, adapter_id, scale])
    return rows


def model_card(info, scale: float, ref, results: list[dict], base_id: str | None, kind: str) -> str:
    """A model card (README.md) for the exported adapter: ``base_model`` the base's hub id (never a local path),
    ``model-index`` the store's results at this scale, validated by ``huggingface_hub``'s own card parser."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    name = f"{info.path.name}@{scale:g}"
    evals = [EvalResult(task_type="text-generation", dataset_type=r["suite_name"], dataset_name=r["suite_name"],
                        metric_type=r["metric"], metric_value=round(float(r["mean"]), 6)) for r in results]
    data = ModelCardData(base_model=base_id, library_name="peft" if kind == "scaled adapter" else "transformers",
                         model_name=name, tags=["lora", "peft", "adapter-harness"], eval_results=evals or None)
    body = [f"# {name}", "",
            f"The LoRA adapter `{info.path.name}` (id `{info.adapter_id[:12]}`) exported by `harness export` at scale "
            f"{scale:g} as a {kind}" + (f", for the base model `{base_id}`." if base_id else
                                        " (base model not named: pass --base-id ORG/NAME)."), ""]
    if results:
        body += ["Results at this scale, from the adapter-harness results store (the newest run that evaluated it):", "",
                 "| suite | metric | value | examples | run |", "| --- | --- | ---: | ---: | --- |"]
        body += [f"| {r['suite_name']} | {r['metric']} | {float(r['mean']):.4g} | {r['n']} | `{r['run_id']}` |" for r in results]
    else:
        body += ["No results of this adapter at this scale were found in the results store."]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(body) + "\n")
    parsed = ModelCard(card.content)  # the hub's own parser reads it back (model-index included)
    if len(getattr(parsed.data, "eval_results", None) or []) != len(evals):
        raise RuntimeError(f"the model card of {name} does not read back with its {len(evals)} results")
    return str(card.content)


def export(adapter: Path, scale: float, out: Path, *, merge: bool = False, base: str = DEFAULT_BASE,
           force: bool = False, db: Path | None = None, base_id: str | None = None) -> Path:
    """The export job: check the request, the adapter (pre-flight) and that it fits ``base`` (shapes read
    from the base's safetensors headers, no weights loaded), then write the scaled adapter or the merged
    model. An adapter that does not fit its base is refused (exit 3) before anything is written."""
    import math

    from harness.models.adapters import inspect_for_base

    if not math.isfinite(scale) or scale < 0:
        raise UsageError(f"--scale {scale!r}: a LoRA scale is a finite number >= 0")
    if out.exists() and not force:
        raise UsageError(f"--out {out} exists; pick a new directory or pass --force to replace it")
    (info,), ref = inspect_for_base([adapter], base)  # the recorded base, targets, shapes, a partial adapter: exit 3
    kind = "merged model" if merge else "scaled adapter"
    card = model_card(info, scale, ref, stored_results(db, info.adapter_id, scale), base_hub_id(ref, base_id), kind)
    return export_merged(info, scale, ref, out, card) if merge else export_scaled(info, scale, out, card)
