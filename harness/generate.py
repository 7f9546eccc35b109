"""Batched greedy generation: chat-template rendering, length-sorted left-padded batches, stop strings.

Knows nothing of suites or the store: it takes prompt texts and settings and returns texts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate. Greedy by default so results are reproducible and cacheable."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Canonical JSON: part of the cache key."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Generation:
    """One output: text (cut at the first stop string) or an error, with token counts."""

    text: str | None
    n_prompt_tokens: int
    n_new_tokens: int
    seconds: float
    error: str | None = None
    #: cut by max_new_tokens before an end token or a stop string: the answer may be incomplete
    truncated: bool = False


def render_prompt(tokenizer: "PreTrainedTokenizerBase", text: str, system: str | None = None, raw: bool = False) -> str:
    """Render ``text`` as a user turn through the tokenizer's chat template (or pass it through raw)."""
    if raw or not getattr(tokenizer, "chat_template", None):
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the earliest stop string (generation may overshoot by a token)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def _max_positions(model: "PreTrainedModel") -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)


def generate(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    prompts: Sequence[str],
    settings: GenerationSettings,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    adapter_names: Sequence[str] | None = None,
) -> list[Generation]:
    """Generate for rendered ``prompts``; results come back in input order.

    Prompts are sorted by token length so each batch pads little; padding is on the left so every
    row's continuation starts at the same column. A prompt too long for the model becomes an error
    row; a batch that fails is retried one prompt at a time so one bad prompt cannot sink the rest.

    Args:
        progress: called with the number of prompts finished after each batch.
        adapter_names: per prompt, the PEFT adapter that answers it (``__base__`` for the base model);
            rows of different adapters and scales share a batch (PEFT's mixed-adapter batches).
    """
    import torch

    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    results: list[Generation | None] = [None] * len(prompts)
    limit = _max_positions(model)
    order = []
    for i, ids in enumerate(encoded):
        if len(ids) + settings.max_new_tokens > limit:
            results[i] = Generation(
                None, len(ids), 0, 0.0,
                f"prompt is {len(ids)} tokens; with max_new_tokens={settings.max_new_tokens} it exceeds the "
                f"model's {limit} positions",
            )
        else:
            order.append(i)
    order.sort(key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    eos = [t for t in {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)} if t is not None]
    eos_ids: list[int] = []
    for t in eos:
        eos_ids.extend(t if isinstance(t, list) else [t])
    kwargs = dict(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(set(eos_ids)) or None,
    )
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        # Clear sampling knobs a model's generation_config may carry, so greedy means greedy.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if settings.stop:
        kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)

    def run(batch: list[int]) -> None:
        t0 = time.perf_counter()
        width = max(len(encoded[i]) for i in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=device)
        route = {"adapter_names": [adapter_names[i] for i in batch]} if adapter_names is not None else {}
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs, **route)
        new = out[:, width:]
        share = (time.perf_counter() - t0) / len(batch)
        for row, i in zip(new.tolist(), batch):
            n_new = len(row)
            ended = False
            for j, tok in enumerate(row):
                if tok in eos_ids or tok == pad:
                    n_new, ended = j, True
                    break
            text = tokenizer.decode(row[:n_new], skip_special_tokens=True)
            cut = cut_at_stop(text, settings.stop)
            truncated = not ended and len(cut) == len(text) and n_new >= settings.max_new_tokens
            results[i] = Generation(cut, len(encoded[i]), n_new, share, truncated=truncated)

    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        try:
            run(batch)
        except (RuntimeError, ValueError, IndexError) as exc:
            if len(batch) == 1:
                i = batch[0]
                results[i] = Generation(None, len(encoded[i]), 0, 0.0, f"{type(exc).__name__}: {exc}")
            else:
                for i in batch:
                    try:
                        run([i])
                    except (RuntimeError, ValueError, IndexError) as one:
                        results[i] = Generation(None, len(encoded[i]), 0, 0.0, f"{type(one).__name__}: {one}")
        done += len(batch)
        if progress:
            progress(done)
    return [r for r in results if r is not None]
