"""Every scale of an adapter in one batch from one copy of its weights: a LoRA scale per row.

PEFT's mixed-adapter batches need one loaded copy per (adapter, scale) and, in every LoRA layer,
loop over those copies: six scales cost six gathers, six LoRA products and six scatters per layer
per decode step. But the scales of an adapter differ only in the number the LoRA product is
multiplied by. Here each adapter is loaded once, every LoRA layer's ``scaling[name]`` becomes a
``[rows, 1, 1]`` tensor shared by the layers of that (alpha, r) (PEFT's plain forward computes
``result + lora_B(lora_A(x)) * scaling``, so a tensor broadcasts per row), and before each forward the
tensor is set to each row's scale: 0 for rows of the base or of another adapter. The values are
PEFT's own ``set_scale`` formula, computed the same way per row, so in fp32 each row is bit for bit
what PEFT's plain forward at that scale gives (the engine's self-check verifies it on mixed rows).

Used only where that identity holds: plain LoRA ``Linear`` layers (no DoRA, no ``modules_to_save``)
in float32. In half precision the per-row tensor would round the scale before the product where
PEFT's Python float does not, so those run through PEFT's mixed batches instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

#: the attribute of the PEFT model under which its router is found (harness.generation.generate, harness.metrics)
ATTR = "_harness_row_scales"


def route_kwargs(model: Any, names: Sequence[str] | None) -> dict[str, Any]:
    """What a forward or ``generate`` call over rows ``names`` must be given to route them.

    With a row-scale router on ``model``: sets each row's scale now and returns ``{}``; otherwise
    PEFT's ``adapter_names=`` (or nothing when ``names`` is None).
    """
    if names is None:
        return {}
    router = getattr(model, ATTR, None)
    if router is not None:
        router.set_rows(names)
        return {}
    return {"adapter_names": list(names)}


def unsupported(peft_model: Any) -> str | None:
    """Why ``peft_model``'s LoRA layers cannot take a scale per row, or None when they can (the float32
    condition is the engine's, checked before anything loads)."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            if type(module) is not LoraLinear:
                return f"{name} is a {type(module).__name__} LoRA layer"
            if module.lora_variant:
                return f"{name} has a LoRA variant ({', '.join(sorted(module.lora_variant))})"
            if module.merged or module.disable_adapters or module.training:
                return f"{name} is merged, disabled or in training mode"
            drop = [d for d in module.lora_dropout.values() if not isinstance(d, torch.nn.Identity) and d.training]
            if drop:
                return f"{name} has LoRA dropout in training mode"
    return None


class RowScales:
    """The router: each loaded adapter's per-row scaling tensors, set from the rows' target names.

    Args:
        peft_model: the model with every adapter loaded once and all of them active.
        targets: target name (``a0_s050``) -> (loaded adapter name, scale). Names not in it (``__base__``)
            run the base model.
    """

    def __init__(self, peft_model: Any, targets: Mapping[str, tuple[str, float]]) -> None:
        import torch
        from peft.tuners.lora import LoraLayer

        self.torch = torch
        self.targets = dict(targets)
        self.device = next(peft_model.parameters()).device
        # (adapter, alpha, r, rslora) -> the one tensor every layer of that kind multiplies by; NaN until
        # the first set_rows, so a forward that was never routed gives NaN logits, not base answers
        self.slots: dict[tuple[str, float, int, bool], Any] = {}
        self.layers: list[tuple[Any, str]] = []
        self.patched: list[Any] = []
        for module in peft_model.modules():
            if not isinstance(module, LoraLayer):
                continue
            for adapter in list(module.scaling):
                key = (adapter, float(module.lora_alpha[adapter]), int(module.r[adapter]), bool(module.use_rslora.get(adapter, False)))
                slot = self.slots.get(key)
                if slot is None:
                    slot = self.slots[key] = self._unset()
                module.scaling[adapter] = slot
                self.layers.append((module, adapter))
            # PEFT's forward spends more time in Python than in the rank-r products on a CPU decode step;
            # this one computes the same expression (result + lora_B(lora_A(x)) * scaling, in the order
            # of the active adapters) with nothing else
            parts = [(module.lora_A[a], module.lora_B[a], module.scaling[a]) for a in module.active_adapters if a in module.lora_A]
            module.forward = functools.partial(_row_forward, module.base_layer, parts)  # type: ignore[attr-defined]
            self.patched.append(module)
        self.model = peft_model
        setattr(peft_model, ATTR, self)
        # ``model(..., adapter_names=names)`` keeps working (tests, perplexity, the decode loop): the
        # names are taken out before PEFT sees them, and the scales go back to NaN after the forward
        self.hooks = [peft_model.register_forward_pre_hook(self._pre, with_kwargs=True),
                      peft_model.register_forward_hook(self._post)]

    def _pre(self, module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        names = kwargs.pop("adapter_names", None)
        if names is not None:
            self.set_rows(names)
        return args, kwargs

    def _post(self, module: Any, args: Any, output: Any) -> None:
        self.clear()

    def clear(self) -> None:
        """NaN scales: a forward nobody routed gives NaN logits, never another row's answers."""
        for slot in self.slots.values():
            slot.set_(self._unset())

    def _unset(self) -> Any:
        return self.torch.full((1, 1, 1), float("nan"), dtype=self.torch.float32, device=self.device)

    def scale_of(self, name: str, adapter: str) -> float:
        """The scale row ``name`` runs ``adapter`` at (0 for the base and for another adapter's rows)."""
        owner = self.targets.get(name)
        return owner[1] if owner is not None and owner[0] == adapter else 0.0

    def set_rows(self, names: Sequence[str]) -> None:
        """Set every slot to the rows' scales, computed as ``LoraLayer.set_scale`` computes one scale."""
        torch = self.torch
        unknown = sorted({n for n in names if n not in self.targets and n != "__base__"})
        if unknown:
            raise ValueError(f"rows routed to {', '.join(unknown)}, which this model has not loaded")
        for (adapter, alpha, r, rslora), slot in self.slots.items():
            values = [self.scale_of(n, adapter) * alpha / (math.sqrt(r) if rslora else r) for n in names]
            slot.set_(torch.tensor(values, dtype=torch.float32, device=self.device).view(len(values), 1, 1))

    def close(self) -> None:
        """Give every layer a plain float scaling again and remove the router from the model."""
        for hook in self.hooks:
            hook.remove()
        for module in self.patched:
            del module.forward  # back to the class's own forward
        for module, adapter in self.layers:
            module.set_scale(adapter, 1.0)
        if getattr(self.model, ATTR, None) is self:
            delattr(self.model, ATTR)


def _row_forward(base_layer: Any, parts: Sequence[tuple[Any, Any, Any]], x: Any, *args: Any, **kwargs: Any) -> Any:
    """PEFT's ``lora.Linear.forward`` for an unmerged, enabled, variant-free layer in eval mode, where
    dropout is the identity and the input cast a no-op (float32 throughout)."""
    result = base_layer(x, *args, **kwargs)
    for lora_a, lora_b, scaling in parts:
        result = result + lora_b(lora_a(x)) * scaling
    return result
