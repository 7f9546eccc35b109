"""The sweep engine: every (adapter, scale) of one base in one PEFT model, sharing generation batches.

Each (adapter, scale) is loaded once under its own adapter name (``a0_s050``: no dots, PEFT forbids
them), that name's scaling is set on every LoRA layer, and ``adapter_names=`` routes each row of a
batch to its adapter (PEFT's mixed-adapter batches; ``__base__`` rows run the base model). So the
scales of an adapter, the adapters of a base and the base itself share batches: the machine stays
full and the adapter is never merged. DoRA cannot be mixed (PEFT refuses ``adapter_names`` with
DoRA): each DoRA (adapter, scale) gets a group of its own.

Self-checks, run once per attached adapter and returned as gate rows for the run: scale 0 gives the
base model's logits and scale 1 the logits of the plainly loaded adapter (``PeftModel.from_pretrained``).
A failed self-check raises: the numbers of a broken scaling must never be stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.adapters import add_adapter, detach_adapter, load_adapter, set_scale
from harness.errors import GateFailure, SafetyError
from harness.models import LoadedBase, weights_fingerprint
from harness.store import GateRow

if TYPE_CHECKING:
    from harness.runner import Target

BASE_NAME = "__base__"
#: fp32 logits of the two paths are the same computation; a difference above this is a broken scaling
SELF_CHECK_ATOL = 1e-5
_PROBES = ("What is the capital of France?", "Send two red hoodies, size M.", "Hi")


def adapter_name(index: int, scale: float) -> str:
    """``a0_s050`` for adapter 0 at scale 0.5 (PEFT adapter names may not contain dots)."""
    return f"a{index}_s{round(scale * 100):03d}" if round(scale * 100) == scale * 100 else f"a{index}_s{scale:g}".replace(".", "p").replace("-", "m")


def is_dora(target: Target) -> bool:
    return bool(target.adapter is not None and target.adapter.config.get("use_dora"))


@dataclass
class Group:
    """Targets that share one model and its batches: ``names[target]`` routes each row."""

    model: Any
    mixed: bool
    names: dict[Target, str] = field(default_factory=dict)

    def route(self, targets: Sequence[Target]) -> list[str] | None:
        return [self.names[t] for t in targets] if self.mixed else None


def plan_groups(targets: Sequence[Target]) -> list[list[Target]]:
    """The mixable targets (base and non-DoRA adapters) together; each DoRA target alone."""
    mixable = [t for t in targets if not is_dora(t)]
    groups = [mixable] if mixable else []
    groups += [[t] for t in targets if is_dora(t)]
    return groups


@contextlib.contextmanager
def attached(base: LoadedBase, targets: Sequence[Target], checks: list[GateRow] | None = None) -> Iterator[Group]:
    """Attach every adapter target of one group; on exit detach and verify the base is unchanged.

    ``checks`` collects the self-check rows (one pair per adapter); None skips the self-checks.
    """
    adapters = [t for t in targets if t.adapter is not None]
    if not adapters:
        yield Group(base.model, mixed=False, names={t: BASE_NAME for t in targets})
        return
    if base.fingerprint is None:
        base.fingerprint = weights_fingerprint(base.model)
    index = {a.adapter_id: i for i, a in enumerate(dict.fromkeys(t.adapter for t in adapters))}  # type: ignore[union-attr]
    names = {t: (BASE_NAME if t.adapter is None else adapter_name(index[t.adapter.adapter_id], t.scale)) for t in targets}
    probes = _probe_reference(base, adapters) if checks is not None else None
    first = adapters[0]
    peft_model = load_adapter(base.model, first.adapter, adapter_name=names[first])  # type: ignore[arg-type]
    try:
        for t in adapters[1:]:
            add_adapter(peft_model, t.adapter, names[t])  # type: ignore[arg-type]
        for t in adapters:
            set_scale(peft_model, t.scale, names[t])
        mixed = not any(is_dora(t) for t in adapters)
        if not mixed:
            peft_model.set_adapter(names[first])
        group = Group(peft_model, mixed=mixed, names=names)
        if probes is not None:
            checks.extend(_self_check(base, group, adapters, probes))  # type: ignore[union-attr]
        yield group
    finally:
        base.model = detach_adapter(peft_model)
        # The base generates again after this (its own rows, or the next group's): verify that no
        # adapter left a trace in its weights before it does.
        _verify_base(base, [t.adapter for t in adapters])


def _encode(base: LoadedBase) -> tuple[Any, Any]:
    import torch

    from harness.generate import render_prompt

    tok = base.tokenizer
    enc = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in _PROBES]
    width = max(len(e) for e in enc)
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    device = next(base.model.parameters()).device
    return ids.to(device), mask.to(device)


def _probe_reference(base: LoadedBase, adapters: Sequence[Target]) -> dict[str, Any]:
    """Logits of the plain base and of each adapter loaded the plain PEFT way, before the engine attaches."""
    import torch
    from peft import PeftModel

    ids, mask = _encode(base)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        out[BASE_NAME] = base.model(input_ids=ids, attention_mask=mask).logits.float()
        for t in dict.fromkeys(t.adapter for t in adapters):
            # the directory passed the pre-flight (safetensors only, every tensor accounted for), so PEFT's
            # own loader reads exactly the checked file here
            plain = PeftModel.from_pretrained(base.model, str(t.path))  # type: ignore[union-attr]
            try:
                out[t.adapter_id] = plain(input_ids=ids, attention_mask=mask).logits.float()  # type: ignore[union-attr]
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


def _self_check(base: LoadedBase, group: Group, adapters: Sequence[Target], ref: dict[str, Any]) -> list[GateRow]:
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
        checks = [(1.0, ref[a.adapter_id], "scale 1 == the adapter loaded by PeftModel.from_pretrained")]
        # Scale 0 is the base only for plain LoRA: DoRA's magnitudes still rescale the weights, and a
        # modules_to_save copy (an lm_head, say) is not scaled at all.
        if not is_dora(t) and not a.config.get("modules_to_save"):
            checks.insert(0, (0.0, ref[BASE_NAME], "scale 0 == the base model"))
        for scale, want, what in checks:
            set_scale(model, scale, name)
            try:
                with torch.inference_mode():
                    kwargs = {"adapter_names": [name] * len(ids)} if group.mixed else {}
                    got = model(input_ids=ids, attention_mask=mask, **kwargs).logits.float()
            finally:
                set_scale(model, t.scale, name)
            diff = float((got - want).abs().max())
            ok = diff <= SELF_CHECK_ATOL
            msg = (f"self-check {a.path.name}: {what}: max |logit difference| {diff:.3g} (allowed {SELF_CHECK_ATOL:g}): "
                   + ("pass" if ok else "FAIL"))
            rows.append(GateRow(f"self-check scale {scale:g}", "max_abs_logit_diff", diff, SELF_CHECK_ATOL, None, ok, msg))
            if not ok:
                raise GateFailure(msg + "; the run-time scaling is broken, nothing from it was stored")
    return rows
