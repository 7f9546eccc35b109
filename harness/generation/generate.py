"""Batched greedy generation: chat-template rendering, length-sorted left-padded batches, stop strings.

Knows nothing of suites or the store: it takes prompt texts and settings and returns texts.

Two paths, chosen once per call and logged (``HARNESS_GENERATE=fast|hf`` or ``path=`` forces one):

- ``fast`` (the default for greedy decoding): our own decode loop over the model's forward with a KV
  cache, continuous-batching style. A row leaves the batch as soon as it ends (end token, stop string,
  max_new_tokens) and the queue refills the freed slots, so no step is spent on a finished row; each
  step writes one column into a preallocated cache instead of concatenating the whole cache (that
  concatenation was a sixth of decode time); stop strings are checked on the decoded text, once per
  step for the live rows. ``adapter_names`` follow their rows as rows leave and join.
- ``hf``: ``model.generate`` on fixed batches, the reference: sampling, and any model whose cache or
  forward the fast loop does not know, run here.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from harness.generation.fastdecode import decode_threads, generate_fast
from harness.generation.rows import (
    ROW_ERRORS,
    Generation,
    GenerationSettings,
    core_model,
    cut_at_stop,
    end_ids,
    error_row,
    finish_row,
)
from harness.models.rowscale import route_kwargs

__all__ = ["Generation", "GenerationSettings", "choose_path", "cut_at_stop", "generate", "render_prompt"]

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def render_prompt(tokenizer: PreTrainedTokenizerBase, text: str, system: str | None = None, raw: bool = False,
                  chat_template: str | None = None) -> str:
    """Render ``text`` as a user turn through the tokenizer's chat template (or ``chat_template``: an adapter's own,
    saved beside it by TRL or Unsloth), or pass it through raw. Transformers renders templates in Jinja's sandbox."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if raw or not template:
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, chat_template=template))


def _max_positions(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    settings: GenerationSettings,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    adapter_names: Sequence[str] | None = None,
    *,
    path: str | None = None,
    log: Callable[[str], None] | None = None,
    on_result: Callable[[int, Generation], None] | None = None,
) -> list[Generation]:
    """Generate for rendered ``prompts``; results come back in input order.

    Prompts are sorted by token length so each batch pads little; padding is on the left so every
    row's continuation starts at the same column. A prompt too long for the model becomes an error
    row; a batch that fails is retried one prompt at a time so one bad prompt cannot sink the rest.

    Args:
        progress: called with the number of prompts finished so far (after each batch, or as rows end).
        adapter_names: per prompt, the PEFT adapter that answers it (``__base__`` for the base model);
            rows of different adapters and scales share a batch (PEFT's mixed-adapter batches).
        path: ``"fast"`` (own decode loop, the default where it applies) or ``"hf"`` (``model.generate``);
            None reads ``HARNESS_GENERATE``. A forced ``fast`` that cannot apply raises ValueError.
        log: receives the one line that says which path runs and why (also sent to this module's logger).
        on_result: called with (prompt index, result) as each result is final, so callers can store rows
            while the rest generate.
    """
    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    results = _Results(len(prompts), on_result)
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
    chosen, why = choose_path(model, settings, path)
    if chosen == "fast":
        threads, how = decode_threads(model, max(1, batch_size))
        _announce(f"generate: fast path ({why}); {len(order)} prompts, batch {batch_size}; decoding on {how}", log)
        generate_fast(model, tokenizer, encoded, order, results, settings, batch_size, progress, adapter_names,
                       threads=threads)
    else:
        _announce(f"generate: hf path ({why}); {len(order)} prompts, batch {batch_size}", log)
        _generate_hf(model, tokenizer, encoded, order, results, settings, batch_size, progress, adapter_names)
    return [r for r in results if r is not None]


class _Results(list):
    """The results by prompt index; each one set is final and is reported to ``on_result`` at once."""

    def __init__(self, n: int, on_result: Callable[[int, Generation], None] | None) -> None:
        super().__init__([None] * n)
        self.on_result = on_result

    def __setitem__(self, i: Any, value: Any) -> None:
        super().__setitem__(i, value)
        if self.on_result is not None and value is not None:
            self.on_result(i, value)


# -- which path ---------------------------------------------------------------------------------------

PATHS = ("fast", "hf")
_logger = logging.getLogger(__name__)
_announced: set[str] = set()


def _announce(line: str, log: Callable[[str], None] | None) -> None:
    if log is not None:
        log(line)
    # once per distinct choice per process: a run calls generate() once per chunk of examples
    key = line.split(";")[0]
    if key not in _announced:
        _announced.add(key)
        (_logger.warning if "falls back" in line else _logger.info)(line)


def choose_path(model: Any, settings: GenerationSettings, path: str | None = None) -> tuple[str, str]:
    """The generation path for this model and these settings, with the reason (for the log line)."""
    asked = path or os.environ.get("HARNESS_GENERATE") or None
    if asked is not None and asked not in PATHS:
        raise ValueError(f"HARNESS_GENERATE / path={asked!r}: must be one of {', '.join(PATHS)}")
    if asked == "hf":
        return "hf", "asked for" if path else "HARNESS_GENERATE=hf"
    problem = _fast_unsupported(model, settings)
    if problem is None:
        return "fast", "asked for" if asked else "default"
    if asked == "fast":
        raise ValueError(f"the fast generation path cannot run here: {problem}; use path='hf' / HARNESS_GENERATE=hf")
    return "hf", f"falls back: {problem}"


def _fast_unsupported(model: Any, settings: GenerationSettings) -> str | None:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if settings.do_sample:
        return "sampling (the fast loop is greedy only)"
    if settings.max_new_tokens < 1:
        return "max_new_tokens < 1"
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return "a prompt-learning PEFT adapter"
    core = core_model(model)
    if getattr(core.config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    params = inspect.signature(core.forward).parameters
    missing = [p for p in ("attention_mask", "position_ids", "use_cache") if p not in params]
    if missing or not ({"cache", "past_key_values"} & set(params)):
        return f"{type(core).__name__}.forward lacks {', '.join(missing) or 'a cache argument'}"
    try:
        layers = DynamicCache(config=core.config).layers
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return f"no DynamicCache for this config ({type(exc).__name__}: {exc})"
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers}) or ["none"]
        return f"cache layers {', '.join(kinds)} (the fast loop handles full-attention DynamicLayer only)"
    return None


# -- the reference path: model.generate on fixed batches ------------------------------------------------

def _generate_hf(model, tokenizer, encoded, order, results, settings, batch_size, progress, adapter_names) -> None:
    import torch

    device = next(model.parameters()).device
    eos_ids = end_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    ends = set(eos_ids) | ({pad} if pad is not None else set())
    kwargs = dict(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        pad_token_id=pad,
        eos_token_id=eos_ids or None,
    )
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        # Clear sampling knobs a model's generation_config may carry, so greedy means greedy.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if settings.stop:
        kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)

    def run(batch: list[int]) -> list[tuple[int, Generation]]:
        t0 = time.perf_counter()
        width = max(len(encoded[i]) for i in batch)
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=device)
        # PEFT's adapter_names, or the scales set now for a row-scale router (harness.models.rowscale)
        route = route_kwargs(model, [adapter_names[i] for i in batch] if adapter_names is not None else None)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs, **route)
        share = (time.perf_counter() - t0) / len(batch)
        return [(i, finish_row(tokenizer, row, ends, len(encoded[i]), settings, share)) for row, i in zip(out[:, width:].tolist(), batch)]

    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        # results are set outside the try: an on_result callback's own error is not a generation error
        got: list[tuple[int, Generation]] = []
        try:
            got = run(batch)
        except ROW_ERRORS as exc:
            if len(batch) == 1:
                got = [(batch[0], error_row(len(encoded[batch[0]]), exc))]
            else:
                for i in batch:
                    try:
                        got += run([i])
                    except ROW_ERRORS as one:
                        got.append((i, error_row(len(encoded[i]), one)))
        for i, g in got:
            results[i] = g
        done += len(batch)
        if progress:
            progress(done)
