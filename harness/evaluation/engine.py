"""The sweep engine: every (adapter, scale) of one base in one PEFT model, sharing generation batches.

Each (adapter, scale) is a target with its own row name (``a0_s050``), and ``adapter_names=`` routes
each row of a batch (``__base__`` rows run the base model): the scales of an adapter, the adapters
of a base and the base itself share batches, and the adapter is never merged. Two routings:

- ``rows`` (default where exact: plain LoRA in float32): each adapter is loaded once and every LoRA
  layer multiplies its product by a per-row scale (harness.models.rowscale). Six scales cost what one does.
- ``peft``: each (adapter, scale) is loaded under its own name with that scaling set, and PEFT's
  mixed-adapter batches route the rows (half precision, ``modules_to_save``; ``HARNESS_SWEEP_ROUTING=peft``
  forces it). DoRA cannot be mixed at all (PEFT refuses ``adapter_names`` with DoRA): each DoRA
  (adapter, scale) gets a group of its own.

Self-checks, run once per attached adapter and returned as gate rows for the run: scale 0 gives the
base model's logits and scale 1 the logits of the plainly loaded adapter (``PeftModel.from_pretrained``),
under ``rows`` with the probes at both scales in one batch. A failed self-check raises: the numbers
of a broken scaling must never be stored.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.errors import GateFailure, SafetyError, UsageError
from harness.models import rowscale
from harness.models.adapters import add_adapter, detach_adapter, load_adapter, set_scale
from harness.models.base import LoadedBase, weights_fingerprint
from harness.store import GateRow

if TYPE_CHECKING:
    from harness.evaluation.targets import Target

BASE_NAME = "__base__"
#: fp32 logits of the two paths are the same computation; a difference above this is a broken scaling
SELF_CHECK_ATOL = 1e-5
_PROBES = ("What is the capital of France?", "Send two red hoodies, size M.", "Hi")


def adapter_name(index: int, scale: float) -> str:
    """``a0_s050`` for adapter 0 at scale 0.5 (PEFT adapter names may not contain dots)."""
    return f"a{index}_s{round(scale * 100):03d}" if round(scale * 100) == scale * 100 else f"a{index}_s{scale:g}".replace(".", "p").replace("-", "m")


def is_dora(target: Target) -> bool:
    return bool(target.adapter is not None and target.adapter.config.get("use_dora"))


#: ``rows`` (one copy per adapter, a scale per row: harness.models.rowscale) or ``peft`` (one copy per
#: (adapter, scale), PEFT's mixed batches); unset: rows wherever it is exact
ROUTING_ENV = "HARNESS_SWEEP_ROUTING"


@dataclass
class Group:
    """Targets that share one model and its batches: ``names[target]`` routes each row.

    ``how`` says which routing runs and why (logged by the runner).
    """

    model: Any
    mixed: bool
    names: dict[Target, str] = field(default_factory=dict)
    how: str = ""

    def route(self, targets: Sequence[Target]) -> list[str] | None:
        return [self.names[t] for t in targets] if self.mixed else None


#: the module types PEFT's mixed-adapter batches accept in ``modules_to_save`` (peft.utils.other)
_MIXABLE_SAVED = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d")


def runs_alone(target: Target, model: Any = None) -> bool:
    """A target that cannot share a batch with others: DoRA (PEFT refuses ``adapter_names`` with it), or a
    ``modules_to_save`` module of a type PEFT cannot mix (a norm layer: PEFT raises at generation time)."""
    if is_dora(target):
        return True
    saved = (target.adapter.config.get("modules_to_save") or []) if target.adapter is not None else []
    if not saved or model is None:
        return False
    saved = [saved] if isinstance(saved, str) else saved
    return any(type(getattr(m, "original_module", m)).__name__ not in _MIXABLE_SAVED for n, m in model.named_modules()
               if any(n == s or n.endswith("." + str(s)) for s in saved))


def plan_groups(targets: Sequence[Target], model: Any = None) -> list[list[Target]]:
    """The mixable targets (base and most adapters) together; each target that ``runs_alone`` alone
    (``model``, the base, tells the module types of ``modules_to_save``)."""
    alone = [t for t in targets if runs_alone(t, model)]
    mixable = [t for t in targets if t not in alone]
    groups = [mixable] if mixable else []
    groups += [[t] for t in alone]
    return groups


def _row_scale_refusal(base: LoadedBase, adapters: Sequence[Target]) -> str | None:
    """Why this group's adapters cannot take a scale per row (before anything loads), or None."""
    import torch

    asked = os.environ.get(ROUTING_ENV) or None
    if asked not in (None, "rows", "peft"):
        raise UsageError(f"{ROUTING_ENV}={asked!r}: use rows or peft (or leave it unset)")
    if asked == "peft":
        return f"{ROUTING_ENV}=peft"
    if base.dtype != torch.float32:
        return f"{str(base.dtype).removeprefix('torch.')} weights (a scale per row is exact in float32 only)"
    for t in adapters:
        a = t.adapter
        assert a is not None
        if is_dora(t) or a.config.get("modules_to_save"):
            return f"{a.path.name} has {'DoRA' if is_dora(t) else 'modules_to_save'}"
    return None


@contextlib.contextmanager
def attached(base: LoadedBase, targets: Sequence[Target], checks: list[GateRow] | None = None) -> Iterator[Group]:
    """Attach every adapter target of one group; on exit detach and verify the base is unchanged.

    ``checks`` collects the self-check rows (one pair per adapter); None skips the self-checks.
    """
    adapters = [t for t in targets if t.adapter is not None]
    if not adapters:
        yield Group(base.model, mixed=False, names={t: BASE_NAME for t in targets}, how="the base model alone")
        return
    if base.fingerprint is None:
        base.fingerprint = weights_fingerprint(base.model)
    infos = list(dict.fromkeys(t.adapter for t in adapters))
    index = {a.adapter_id: i for i, a in enumerate(infos)}  # type: ignore[union-attr]
    names = {t: (BASE_NAME if t.adapter is None else adapter_name(index[t.adapter.adapter_id], t.scale)) for t in targets}
    probes = _probe_reference(base, adapters) if checks is not None else None
    refusal = _row_scale_refusal(base, adapters)
    peft_model = None
    router = None
    try:
        if refusal is None:
            # each adapter once, all active; a scale per row (harness.models.rowscale)
            peft_model = load_adapter(base.model, infos[0], adapter_name=f"a{0}")  # type: ignore[arg-type]
            for i, info in enumerate(infos[1:], start=1):
                add_adapter(peft_model, info, f"a{i}")  # type: ignore[arg-type]
            refusal = rowscale.unsupported(peft_model)
            if refusal is not None:
                base.model = detach_adapter(peft_model)
                peft_model = None
        if refusal is None:
            assert peft_model is not None
            peft_model.base_model.set_adapter([f"a{i}" for i in range(len(infos))], inference_mode=True)  # type: ignore[operator]
            router = rowscale.RowScales(peft_model, {names[t]: (f"a{index[t.adapter.adapter_id]}", t.scale)  # type: ignore[union-attr]
                                                     for t in adapters})
            group = Group(peft_model, mixed=True, names=names,
                          how=f"{len(infos)} adapter(s) loaded once, a LoRA scale per row")
        else:
            first = adapters[0]
            peft_model = load_adapter(base.model, first.adapter, adapter_name=names[first])  # type: ignore[arg-type]
            for t in adapters[1:]:
                add_adapter(peft_model, t.adapter, names[t])  # type: ignore[arg-type]
            for t in adapters:
                set_scale(peft_model, t.scale, names[t])
            mixed = not any(runs_alone(t, peft_model.base_model.model) for t in adapters)
            if not mixed:
                peft_model.set_adapter(names[first])
            group = Group(peft_model, mixed=mixed, names=names,
                          how=f"one copy per (adapter, scale), PEFT's mixed batches: {refusal}" if mixed else refusal)
        if probes is not None:
            checks.extend(_self_check(base, group, adapters, probes, router))  # type: ignore[union-attr]
        yield group
    finally:
        if router is not None:
            router.close()
        if peft_model is not None:
            base.model = detach_adapter(peft_model)
        # The base generates again after this (its own rows, or the next group's): verify that no
        # adapter left a trace in its weights before it does.
        _verify_base(base, [t.adapter for t in adapters])


def _encode(base: LoadedBase) -> tuple[Any, Any]:
    import torch

    from harness.generation.generate import render_prompt

    tok = base.tokenizer
    enc = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in _PROBES]
    width = max(len(e) for e in enc)
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    device = next(base.model.parameters()).device
    return ids.to(device), mask.to(device)


def _probe_reference(base: LoadedBase, adapters: Sequence[Target]) -> dict[str, Any]:
    """Logits of the plain base and of each adapter loaded alone (a plain PEFT forward at scale 1), before the
    engine attaches its shared batches."""
    import torch

    ids, mask = _encode(base)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        out[BASE_NAME] = base.model(input_ids=ids, attention_mask=mask).logits.float()
        for t in dict.fromkeys(t.adapter for t in adapters if t.adapter is not None):
            # the checked load (config, targets, shapes against the base, a partial load refused) before PEFT
            # touches the base: a hostile or mismatched adapter is refused with its exit code here, and
            # load_adapter undoes its own attach when it refuses
            plain = load_adapter(base.model, t)
            try:
                out[t.adapter_id] = plain(input_ids=ids, attention_mask=mask).logits.float()
            finally:
                base.model = detach_adapter(plain)
                _verify_base(base, [t])
    return out


def _verify_base(base: LoadedBase, adapters: Sequence[Any]) -> None:
    if weights_fingerprint(base.model) != base.fingerprint:
        raise SafetyError(
            f"{', '.join(str(getattr(a, 'path', a)) for a in adapters)}: the base model's weights changed while "
            "attached; stopped before the base generated again (no row from the changed model is stored). "
            "Reload and report the adapter file"
        )


def _self_check(base: LoadedBase, group: Group, adapters: Sequence[Target], ref: dict[str, Any],
                router: rowscale.RowScales | None = None) -> list[GateRow]:
    import torch

    ids, mask = _encode(base)
    rows: list[GateRow] = []
    model = group.model
    seen: set[str] = set()
    for t in adapters:
        a = t.adapter
        if a is None or a.adapter_id in seen:
            continue
        seen.add(a.adapter_id)
        name = group.names[t]
        checks = [(1.0, ref[a.adapter_id], "scale 1 == the adapter loaded alone (a plain PEFT forward)")]
        # Scale 0 is the base only for plain LoRA: DoRA's magnitudes still rescale the weights, and a
        # modules_to_save copy (an lm_head, say) is not scaled at all.
        if not is_dora(t) and not a.config.get("modules_to_save"):
            checks.insert(0, (0.0, ref[BASE_NAME], "scale 0 == the base model"))
        if router is not None:
            diffs = _mixed_row_diffs(model, router, router.targets[name][0], ids, mask, [(s, w) for s, w, _ in checks])
        else:
            diffs = []
            for scale, want, _ in checks:
                set_scale(model, scale, name)
                try:
                    with torch.inference_mode():
                        kwargs = {"adapter_names": [name] * len(ids)} if group.mixed else {}
                        got = model(input_ids=ids, attention_mask=mask, **kwargs).logits.float()
                finally:
                    set_scale(model, t.scale, name)
                diffs.append(float((got - want).abs().max()))
        for (scale, _, what), diff in zip(checks, diffs):
            ok = diff <= SELF_CHECK_ATOL
            msg = (f"self-check {a.path.name}: {what}: max |logit difference| {diff:.3g} (allowed {SELF_CHECK_ATOL:g}): "
                   + ("pass" if ok else "FAIL"))
            rows.append(GateRow(f"self-check scale {scale:g}", "max_abs_logit_diff", diff, SELF_CHECK_ATOL, None, ok, msg))
            if not ok:
                raise GateFailure(msg + "; the run-time scaling is broken, nothing from it was stored")
    return rows


def _mixed_row_diffs(model: Any, router: rowscale.RowScales, loaded: str, ids: Any, mask: Any,
                     checks: Sequence[tuple[float, Any]]) -> list[float]:
    """Per check scale, the max logit difference of its rows when the probes run at every checked scale
    in one batch (rotated so each probe meets each scale): the per-row routing itself is checked."""
    import torch

    temp = [f"__check{k}__" for k in range(len(checks))]
    for k, (scale, _) in enumerate(checks):
        router.targets[temp[k]] = (loaded, scale)
    diffs = [0.0] * len(checks)
    try:
        for shift in range(len(checks)):
            pick = [(row + shift) % len(checks) for row in range(len(ids))]
            with torch.inference_mode():
                got = model(input_ids=ids, attention_mask=mask, adapter_names=[temp[k] for k in pick]).logits.float()
            for row, k in enumerate(pick):
                d = float((got[row] - checks[k][1][row]).abs().max())
                diffs[k] = d if (d != d or d > diffs[k]) else diffs[k]  # a NaN (an unrouted row) must fail, not vanish in max()
    finally:
        for name in temp:
            router.targets.pop(name, None)
    return diffs
