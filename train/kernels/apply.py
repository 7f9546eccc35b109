"""``apply_kernels``: attach the fused kernels to one Llama-family model's module instances, and undo it.

Only the given model's modules change: each patched module gets a ``forward`` instance attribute (nothing
at class or module level), and the handle puts back exactly what was there. Modules are recognised by
class name and attributes, so this file needs no transformers or PEFT import (DESIGN.md: kernels import
torch and triton only); the attention forward takes ``eager_attention_forward`` and
``ALL_ATTENTION_FUNCTIONS`` from the namespace of the attention class's own module.

The LoRA patch also serves PEFT's mixed-adapter batches (``adapter_names=``, how the sweep engine runs
several scales of an adapter in one batch) with the ``multi_scale_lora`` kernel: one launch per layer
instead of one LoRA product per adapter name.

With TRL's SFTTrainer, apply after the trainer is built: TRL adds its own fused LM head to the model's
``forward`` when the trainer is made; applying after replaces it with ours (same outputs: per-token
log-probabilities, entropy, top-1 and the label mask), and ``undo`` gives TRL's back.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.train.kernels._path import KernelPath, choose_path
from harness.train.kernels.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy_per_token
from harness.train.kernels.lora_linear import lora_linear
from harness.train.kernels.multi_scale_lora import multi_scale_lora
from harness.train.kernels.rms_norm import rms_norm
from harness.train.kernels.rope import rope
from harness.train.kernels.swiglu import swiglu

#: A PEFT LoRA layer or a transformers module, read by attribute name (lora_A, base_layer, q_proj,
#: config, ...). torch types ``Module.__getattr__`` as ``Tensor | Module``, which fits none of them.
DuckModule = Any

logger = logging.getLogger("harness.train.kernels")

FAMILIES = ("Llama", "Qwen2", "Mistral")  # share RMSNorm, SwiGLU MLP, rotary attention and the causal-LM head
_SLIDING: dict[str, Callable[[Any], Any]] = {  # the one difference between the three attention forwards
    "Qwen2Attention": lambda attn: attn.sliding_window,
    "MistralAttention": lambda attn: getattr(attn.config, "sliding_window", None),
}


@dataclass
class FusedLMOutput:
    """What ``forward(..., labels=..., fused_lm_head=True)`` returns: the fields TRL's SFTTrainer reads.

    Per-token fields are ``[B, S-1]`` (``[B, S]`` with ``shift_labels``) and zero where the label is -100.
    """

    loss: torch.Tensor
    log_probs: torch.Tensor
    entropy: torch.Tensor
    is_top1: torch.Tensor
    label_mask: torch.Tensor
    aux_loss: torch.Tensor | None = None
    log_sum_sq_probs: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None


@dataclass
class KernelsHandle:
    """What ``apply_kernels`` did; ``undo()`` (or leaving a ``with`` block) restores every module exactly."""

    path: KernelPath
    patched: Counter = field(default_factory=Counter)  # op -> modules patched
    skipped: dict[str, str] = field(default_factory=dict)  # op -> why some modules kept their own forward
    runtime_fallbacks: dict[str, str] = field(default_factory=dict)  # reason -> first layer that hit it
    #: per patched module (by identity, so a module reached twice is saved once): the module, the op,
    #: whether it had its own ``forward`` instance attribute before, that attribute, and ours
    _saved: dict[int, tuple[torch.nn.Module, str, bool, Any, Any]] = field(default_factory=dict, repr=False)
    #: op -> modules whose forward another library replaced while ours was attached (they ran unfused)
    replaced: Counter = field(default_factory=Counter)
    log: Callable[[str], None] = field(default=logger.info, repr=False)

    def _patch(self, module: torch.nn.Module, op: str, forward: Callable[..., Any]) -> None:
        key = id(module)
        if key in self._saved:  # reached twice (a shared module): patch again, but keep the first original
            first, first_op, had, old, _ = self._saved[key]
            self._saved[key] = (first, first_op, had, old, forward)
        else:
            self._saved[key] = (module, op, "forward" in module.__dict__, module.__dict__.get("forward"), forward)
        module.forward = forward
        self.patched[op] += 1

    def check_attached(self) -> Counter:
        """The ops (with module counts) whose patched forward is no longer in place: another library
        (transformers' hub-kernel ``kernelize`` on ``model.train()``, say) replaced it, so those modules
        ran without our kernel. Empty while every patch holds."""
        lost: Counter = Counter()
        for module, op, _, _, ours in self._saved.values():
            if module.__dict__.get("forward") is not ours:
                lost[op] += 1
        return lost

    def _note_fallback(self, reason: str, where: str) -> None:
        # a call the fused path cannot serve (a mixed-adapter batch, a disabled or merged adapter) runs
        # PEFT's own forward; say so once per reason instead of silently or on every call
        if reason not in self.runtime_fallbacks:
            self.runtime_fallbacks[reason] = where
            self.log(f"kernels: {where} ran PEFT's own forward: {reason} (logged once)")

    def undo(self) -> None:
        """Put back every ``forward`` attribute as it was before ``apply_kernels``.

        Restoring does not assume our attribute is still there (another library may have removed or
        replaced it meanwhile: that is counted in ``replaced`` and logged once); a module is restored once.
        """
        lost = self.check_attached()
        if lost:
            self.replaced.update(lost)
            what = ", ".join(f"{op} x{n}" for op, n in lost.items())
            self.log(f"kernels: another library replaced the patched forward of {what} during the run; "
                     "those modules ran without the fused kernels")
        while self._saved:
            _, (module, _, had, old, _) = self._saved.popitem()
            if had:
                module.forward = old
            else:
                module.__dict__.pop("forward", None)

    def __enter__(self) -> KernelsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def summary(self) -> str:
        done = ", ".join(f"{op} x{n}" for op, n in self.patched.items()) or "nothing"
        why = "".join(f"; {op} not fused: {reason}" for op, reason in self.skipped.items())
        return f"kernels: {self.path.name} path ({self.path.reason}); patched {done}{why}"


def _family_class(module: torch.nn.Module, suffix: str) -> bool:
    return type(module).__name__ in {f + suffix for f in FAMILIES}


def _is_lora_linear(module: torch.nn.Module) -> bool:
    return (type(module).__name__ == "Linear" and type(module).__module__.startswith("peft.")
            and hasattr(module, "lora_A") and hasattr(module, "base_layer"))


def _lora_blocker(layer: DuckModule, name: str) -> str | None:
    """Why the fused path cannot compute adapter ``name`` of ``layer`` exactly, or None."""
    if name not in layer.lora_A:
        return f"adapter {name!r} has no LoRA weights here"
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return "lora_dropout > 0 (the fused path is dropout 0)"
    if getattr(layer, "use_dora", {}).get(name):
        return "DoRA"
    if getattr(layer, "lora_bias", {}).get(name):
        return "a LoRA bias (lora_bias)"
    base = layer.base_layer
    if not isinstance(base, torch.nn.Linear):
        return f"base layer is {type(base).__name__}, not nn.Linear (quantised?)"
    return None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def _mixed_batch(layer: DuckModule, x: torch.Tensor, adapter_names: list[str], use_triton: bool) -> torch.Tensor | str:
    """PEFT's mixed-adapter batch (one adapter name per sequence, "__base__" for none) in one BGMV launch;
    or why it cannot be (then PEFT's own per-adapter loop runs)."""
    names = sorted({n for n in adapter_names if n != "__base__"})
    if len(adapter_names) != x.shape[0]:
        return "adapter_names does not give one name per sequence"
    for name in names:
        reason = _lora_blocker(layer, name)
        if reason:
            return reason
    if len({layer.lora_A[n].weight.shape for n in names}) > 1:
        return "adapters of different ranks in one batch"
    base = layer.base_layer
    dt = _compute_dtype(x)
    x = x.to(dt)
    base_out = torch.nn.functional.linear(x, base.weight.to(dt), None if base.bias is None else base.bias.to(dt))
    if not names:
        return base_out
    # stacked per call: the sweep engine changes scaling and adapters between batches
    lora_a = torch.stack([layer.lora_A[n].weight for n in names])
    lora_b = torch.stack([layer.lora_B[n].weight for n in names])
    scaling = torch.tensor([float(layer.scaling[n]) for n in names], device=x.device)
    pos = {n: i for i, n in enumerate(names)}
    per_seq = torch.tensor([pos.get(n, -1) for n in adapter_names], device=x.device)
    rows = per_seq.repeat_interleave(x[0].numel() // x.shape[-1]) if x.dim() > 2 else per_seq
    return multi_scale_lora(x, base_out, lora_a, lora_b, scaling, rows, use_triton=use_triton)


def _lora_forward(layer: DuckModule, handle: KernelsHandle, use_triton: bool, where: str) -> Callable[..., Any]:
    original = layer.forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        reason = None
        if not args and set(kwargs) == {"adapter_names"} and not layer.disable_adapters and not layer.merged:
            out = _mixed_batch(layer, x, kwargs["adapter_names"], use_triton)
            if isinstance(out, torch.Tensor):
                return out
            reason = f"mixed-adapter batch: {out}"
        elif args or kwargs:
            reason = f"extra forward arguments ({', '.join(kwargs) or 'positional'})"
        elif layer.disable_adapters:
            reason = "adapters disabled"
        elif layer.merged:
            reason = "adapter merged into the base weights"
        elif len(layer.active_adapters) != 1:
            reason = f"{len(layer.active_adapters)} active adapters"
        else:
            reason = _lora_blocker(layer, layer.active_adapters[0])
        if reason:
            handle._note_fallback(reason, where)
            return original(x, *args, **kwargs)
        name = layer.active_adapters[0]
        base = layer.base_layer
        dt = _compute_dtype(x)
        # scaling is read on every call: a sweep or rsLoRA changes it after the patch
        return lora_linear(x.to(dt), base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight,
                           layer.scaling[name], use_triton=use_triton)

    return forward


def _attention_forward(attn: DuckModule, use_triton: bool) -> Callable[..., Any]:
    """The family's attention forward (transformers 5.x) with the rotary step replaced by ours."""
    ns = sys.modules[type(attn).__module__]
    sliding = _SLIDING.get(type(attn).__name__)

    def forward(hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, cache: Any = None, past_key_values: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        cache = cache if cache is not None else past_key_values
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, attn.head_dim)
        q = attn.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        k = attn.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        v = attn.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if position_embeddings is None:  # transformers 5 passes them to every attention layer
            raise TypeError("position_embeddings is required: the rotary step needs (cos, sin)")
        cos, sin = position_embeddings
        q, k = rope(q, k, cos, sin, use_triton=use_triton)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx, kwargs=kwargs)
        interface = ns.ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                             ns.eager_attention_forward)
        extra = {"sliding_window": sliding(attn)} if sliding else {}
        out, weights = interface(attn, q, k, v, attention_mask, dropout=0.0 if not attn.training else attn.attention_dropout,
                                 scaling=attn.scaling, **extra, **kwargs)
        return attn.o_proj(out.reshape(*input_shape, -1).contiguous()), weights

    return forward


def _attention_blocker(attn: torch.nn.Module) -> str | None:
    ns = sys.modules.get(type(attn).__module__)
    if ns is None or not hasattr(ns, "ALL_ATTENTION_FUNCTIONS") or not hasattr(ns, "eager_attention_forward"):
        return f"{type(attn).__name__}'s module has no attention interface (transformers < 5?)"
    source = inspect.getsource(type(attn).forward)
    # the replacement forward copies transformers 5's; refuse a class whose forward no longer looks like it
    if "apply_rotary_pos_emb(query_states, key_states, cos, sin)" not in source or "_norm(" in source:
        return f"{type(attn).__name__}.forward differs from the Llama form this patch copies"
    return None


def _causal_lm_blocker(lm: DuckModule) -> str | None:
    cfg = lm.config
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            return f"config.{attr} is set"
    if not hasattr(lm, "get_output_embeddings") or not hasattr(lm, lm.base_model_prefix):
        return "no LM head or backbone found"
    return None


def _causal_lm_forward(lm: DuckModule, use_triton: bool) -> Callable[..., Any]:
    original = lm.forward
    ns = sys.modules[type(lm).__module__]

    def forward(*args: Any, labels: torch.Tensor | None = None, shift_labels: torch.Tensor | None = None,
                num_items_in_batch: Any = None, fused_lm_head: bool = False, **kwargs: Any) -> Any:
        if labels is None and shift_labels is None:
            # no loss to compute (generation, scoring): the model's own forward, logits and all
            return original(*args, **kwargs)
        kwargs.pop("logits_to_keep", None)
        outputs = getattr(lm, lm.base_model_prefix)(*args, **kwargs)
        hidden = outputs.last_hidden_state
        if shift_labels is None:
            assert labels is not None  # both None returned above
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shift_labels
        head = lm.get_output_embeddings()
        targets = targets.to(head.weight.device)
        mask = targets != IGNORE_INDEX
        dt = _compute_dtype(hidden)
        bias = None if head.bias is None else head.bias.to(dt)
        # only supervised positions go through the head, as TRL's fused head does
        tok = linear_cross_entropy_per_token(hidden[mask].to(head.weight.device, dt), head.weight.to(dt), targets[mask],
                                             bias, use_triton=use_triton)
        full = [x.new_zeros(mask.shape).masked_scatter(mask, x) for x in tok]
        loss = full[0].sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        if fused_lm_head:
            return FusedLMOutput(loss=loss, log_probs=-full[0], entropy=full[1], is_top1=full[2], label_mask=mask)
        # no logits: that is the point; the cache field is left out (its name changed across transformers 5.x)
        return ns.CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=outputs.hidden_states,
                                         attentions=outputs.attentions)

    return forward


def apply_kernels(model: torch.nn.Module, rms_norm: bool = True, rope: bool = True, swiglu: bool = True,
                  lora: bool = True, cross_entropy: bool = True, path: str | None = None,
                  log: Callable[[str], None] | None = None) -> KernelsHandle:
    """Patch the forwards of ``model``'s Llama-family modules (a PEFT model or a plain one) with the kernels.

    Args:
        model: a ``LlamaForCausalLM``/``Qwen2ForCausalLM``/``MistralForCausalLM``, bare or inside PEFT.
        rms_norm, rope, swiglu, lora, cross_entropy: which ops to attach.
        path: "triton", "reference" or "auto"; None reads ``HARNESS_KERNELS`` (see ``choose_path``).
        log: where the one summary line (and any once-per-reason fallback line) goes; default the
            ``harness.train.kernels`` logger at INFO.

    Returns:
        A handle; ``handle.undo()`` restores the model exactly.
    """
    param = next(model.parameters(), None)
    device = param.device.type if param is not None else "cpu"
    chosen = choose_path(device, path)
    use_triton = chosen.name == "triton"
    handle = KernelsHandle(chosen, log=log or logger.info)
    named = list(model.named_modules())
    try:
        for name, module in named:
            if rms_norm and _family_class(module, "RMSNorm"):
                handle._patch(module, "rms_norm", lambda x, m=module: _rms(m, x, use_triton))
            elif swiglu and _family_class(module, "MLP"):
                if getattr(module.config, "hidden_act", None) in ("silu", "swish"):
                    handle._patch(module, "swiglu", lambda x, m=module: m.down_proj(
                        _swiglu(m.gate_proj(x), m.up_proj(x), use_triton)))
                else:
                    handle.skipped["swiglu"] = f"hidden_act={module.config.hidden_act!r}, not silu"
            elif rope and _family_class(module, "Attention"):
                reason = _attention_blocker(module)
                if reason:
                    handle.skipped["rope"] = reason
                else:
                    handle._patch(module, "rope", _attention_forward(module, use_triton))
            elif cross_entropy and _family_class(module, "ForCausalLM"):
                reason = _causal_lm_blocker(module)
                if reason:
                    handle.skipped["cross_entropy"] = reason
                else:
                    handle._patch(module, "cross_entropy", _causal_lm_forward(module, use_triton))
            elif lora and _is_lora_linear(module):
                names = list(module.active_adapters)
                reason = _lora_blocker(module, names[0]) if len(names) == 1 else f"{len(names)} active adapters"
                if reason:
                    handle.skipped["lora"] = f"{reason} (e.g. {name})"
                else:
                    handle._patch(module, "lora", _lora_forward(module, handle, use_triton, name))
    except BaseException:
        handle.undo()
        raise
    handle.log(handle.summary())
    return handle


def _rms(module: DuckModule, x: torch.Tensor, use_triton: bool) -> torch.Tensor:
    return rms_norm(x, module.weight, module.variance_epsilon, use_triton=use_triton)


def _swiglu(gate: torch.Tensor, up: torch.Tensor, use_triton: bool) -> torch.Tensor:
    return swiglu(gate, up, use_triton=use_triton)
