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
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

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


def render_prompt(tokenizer: PreTrainedTokenizerBase, text: str, system: str | None = None, raw: bool = False) -> str:
    """Render ``text`` as a user turn through the tokenizer's chat template (or pass it through raw)."""
    if raw or not getattr(tokenizer, "chat_template", None):
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the earliest stop string (generation may overshoot by a token)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


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
    """
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
    chosen, why = choose_path(model, settings, path)
    if chosen == "fast":
        threads, how = decode_threads(model, max(1, batch_size))
        _announce(f"generate: fast path ({why}); {len(order)} prompts, batch {batch_size}; decoding on {how}", log)
        _generate_fast(model, tokenizer, encoded, order, results, settings, batch_size, progress, adapter_names,
                       threads=threads)
    else:
        _announce(f"generate: hf path ({why}); {len(order)} prompts, batch {batch_size}", log)
        _generate_hf(model, tokenizer, encoded, order, results, settings, batch_size, progress, adapter_names)
    return [r for r in results if r is not None]


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


def _core(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


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
    core = _core(model)
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


def _end_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = [t for t in {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)} if t is not None]
    ids: list[int] = []
    for t in eos:
        ids.extend(t if isinstance(t, list) else [t])
    return sorted(set(ids))


def _finish(tokenizer: PreTrainedTokenizerBase, row: Sequence[int], ends: set[int], n_prompt: int,
            settings: GenerationSettings, seconds: float) -> Generation:
    """One result from a row of new tokens (both paths: the same cut, counts and truncation rule)."""
    n_new = len(row)
    ended = False
    for j, tok in enumerate(row):
        if tok in ends:
            n_new, ended = j, True
            break
    text = str(tokenizer.decode(list(row[:n_new]), skip_special_tokens=True))
    cut = cut_at_stop(text, settings.stop)
    truncated = not ended and len(cut) == len(text) and n_new >= settings.max_new_tokens
    return Generation(cut, n_prompt, n_new, seconds, truncated=truncated)


def _error(n_prompt: int, exc: BaseException) -> Generation:
    return Generation(None, n_prompt, 0, 0.0, f"{type(exc).__name__}: {exc}")


#: what a failing forward raises for one bad row (an adapter name PEFT does not know, an index past a table)
_ROW_ERRORS = (RuntimeError, ValueError, IndexError)


# -- the reference path: model.generate on fixed batches ------------------------------------------------

def _generate_hf(model, tokenizer, encoded, order, results, settings, batch_size, progress, adapter_names) -> None:
    import torch

    device = next(model.parameters()).device
    eos_ids = _end_ids(model, tokenizer)
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

    def run(batch: list[int]) -> None:
        t0 = time.perf_counter()
        width = max(len(encoded[i]) for i in batch)
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=device)
        route = {"adapter_names": [adapter_names[i] for i in batch]} if adapter_names is not None else {}
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs, **route)
        share = (time.perf_counter() - t0) / len(batch)
        for row, i in zip(out[:, width:].tolist(), batch):
            results[i] = _finish(tokenizer, row, ends, len(encoded[i]), settings, share)

    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        try:
            run(batch)
        except _ROW_ERRORS as exc:
            if len(batch) == 1:
                results[batch[0]] = _error(len(encoded[batch[0]]), exc)
            else:
                for i in batch:
                    try:
                        run([i])
                    except _ROW_ERRORS as one:
                        results[i] = _error(len(encoded[i]), one)
        done += len(batch)
        if progress:
            progress(done)


# -- the fast path: continuous batching over the model's forward ------------------------------------------

def _slab_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class SlabLayer(DynamicLayer):
        """A DynamicLayer whose keys and values live in a preallocated ``[rows, heads, capacity, dim]``
        buffer: a step writes its column in place instead of concatenating the whole cache, and
        attention reads the filled prefix (a view, no copy)."""

        def __init__(self, k: Any, v: Any, n: int) -> None:
            super().__init__()
            self.kbuf, self.vbuf, self.n = k, v, n
            self.device = k.device
            self.is_initialized = True
            self.keys, self.values = k[:, :, :n], v[:, :, :n]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            import torch

            q = key_states.shape[-2]
            if self.n + q > self.kbuf.shape[-2]:  # not reached when the capacity was planned right
                grow = self.n + q + 32
                self.kbuf = torch.cat([self.kbuf, self.kbuf.new_zeros(*self.kbuf.shape[:2], grow - self.kbuf.shape[2], self.kbuf.shape[3])], 2)
                self.vbuf = torch.cat([self.vbuf, self.vbuf.new_zeros(*self.vbuf.shape[:2], grow - self.vbuf.shape[2], self.vbuf.shape[3])], 2)
            self.kbuf[:, :, self.n : self.n + q] = key_states
            self.vbuf[:, :, self.n : self.n + q] = value_states
            self.n += q
            self.keys, self.values = self.kbuf[:, :, : self.n], self.vbuf[:, :, : self.n]
            return self.keys, self.values

    return SlabLayer


@dataclass
class _Row:
    """One row of the fast loop: its prompt index, its new tokens, its real (unpadded) length in the cache."""

    index: int
    n_prompt: int
    new: list[int] = field(default_factory=list)
    length: int = 0
    seconds: float = 0.0
    done: bool = False


class _FastLoop:
    """The batch of the fast path: rows, their KV cache, attention mask, positions and pending tokens.

    Layout: the cache holds ``width`` columns; row r's real tokens sit in its last ``length_r`` columns
    (left padding, as model.generate lays a batch out) and its latest new token is pending (fed at
    the next step). A row that ends stays in the batch as a dead row until ``rebuild`` drops it; the
    rebuild also prefills the next prompts into the freed slots and drops columns that are padding in
    every row, so the width never exceeds the longest live row.
    """

    def __init__(self, model: Any, tokenizer: Any, encoded: Sequence[Sequence[int]], settings: GenerationSettings,
                 adapter_names: Sequence[str] | None) -> None:
        import torch
        from transformers import DynamicCache

        self.torch, self.DynamicCache, self.Slab = torch, DynamicCache, _slab_layer_class()
        self.model, self.tok, self.encoded, self.settings, self.adapter_names = model, tokenizer, encoded, settings, adapter_names
        core = _core(model)
        params = inspect.signature(core.forward).parameters
        self.config = core.config
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.logits_kw = "logits_to_keep" in params
        self.device = next(model.parameters()).device
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.width = 0
        self.mask: Any = None  # [rows, capacity]; a step reads the first width + 1 columns
        self.pending: Any = None  # [rows, 1]: the tokens the next step feeds

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, rows: Sequence[int]) -> list[int]:
        kwargs: dict[str, Any] = {self.cache_kw: cache, "use_cache": True}
        if self.logits_kw:
            kwargs["logits_to_keep"] = 1
        if self.adapter_names is not None:
            kwargs["adapter_names"] = [self.adapter_names[i] for i in rows]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        # the same float32 copy and argmax as model.generate's greedy step
        return self.torch.argmax(out.logits[:, -1].to(copy=True, dtype=self.torch.float32), dim=-1).tolist()

    def prefill(self, batch: Sequence[int]) -> tuple[Any, list[int]]:
        """Prefill prompts ``batch`` as one left-padded batch into a fresh cache: (cache, first new tokens)."""
        torch = self.torch
        width = max(len(self.encoded[i]) for i in batch)
        ids = torch.tensor([[self.pad] * (width - len(self.encoded[i])) + list(self.encoded[i]) for i in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(self.encoded[i])) + [1] * len(self.encoded[i]) for i in batch], device=self.device)
        # model.generate's positions: counted from each row's first real token, 0 on padding
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = self.DynamicCache(config=self.config)
        return cache, self._forward(ids, mask, positions, cache, batch)

    def step(self) -> list[int]:
        """One decode step for every row of the batch (dead rows ride along until the next rebuild)."""
        self.mask[:, self.width] = 1
        positions = self.torch.tensor([[r.length] for r in self.rows], device=self.device)
        nxt = self._forward(self.pending, self.mask[:, : self.width + 1], positions, self.cache, [r.index for r in self.rows])
        self.width += 1
        for r in self.rows:
            r.length += 1
        self.pending = self.torch.tensor(nxt, device=self.device).view(len(self.rows), 1)
        return nxt

    def rebuild(self, new_cache: Any, new_rows: list[_Row]) -> None:
        """Drop dead rows and all-padding columns, and append ``new_rows`` (prefilled into ``new_cache``)."""
        torch = self.torch
        keep = [k for k, r in enumerate(self.rows) if not r.done]
        kept = [self.rows[k] for k in keep]
        rows = kept + new_rows
        if not rows:
            self.rows, self.cache = [], None
            return
        old_w = max((r.length for r in kept), default=0)
        new_w = new_cache.layers[0].keys.shape[-2] if new_rows else 0
        width = max(old_w, new_w)
        capacity = width + self.settings.max_new_tokens + 1  # every row ends before the buffer would fill
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        source = new_cache if new_rows else self.cache
        layers = []
        for li in range(len(source.layers)):
            pair = []
            for attr in ("keys", "values"):
                old = getattr(self.cache.layers[li], attr) if kept else None
                new = getattr(new_cache.layers[li], attr) if new_rows else None
                like = old if old is not None else new
                assert like is not None  # rows is not empty
                buf = like.new_zeros(len(rows), like.shape[1], capacity, like.shape[3])
                if old is not None:
                    buf[: len(kept), :, width - old_w : width] = old.index_select(0, idx)[:, :, old.shape[2] - old_w :]
                if new is not None:
                    buf[len(kept) :, :, width - new_w : width] = new
                pair.append(buf)
            layers.append(self.Slab(pair[0], pair[1], width))
        source.layers = layers
        mask = torch.zeros(len(rows), capacity, dtype=torch.long, device=self.device)
        for k, r in enumerate(rows):
            mask[k, width - r.length : width] = 1
        pending = [int(self.pending[k, 0]) for k in keep] + [r.new[-1] for r in new_rows]
        self.cache, self.rows, self.width, self.mask = source, rows, width, mask
        self.pending = torch.tensor(pending, dtype=torch.long, device=self.device).view(len(rows), 1)


def _ended(row: _Row, tail: Sequence[int], tokenizer: Any, settings: GenerationSettings, ends: set[int]) -> bool:
    """Whether ``row`` has ended with its latest token: an end token, max_new_tokens, or a stop string.

    A stop string counts where model.generate's StopStringCriteria counts it: in the prompt's last
    tokens (``tail``) followed by the new ones, ending after the prompt (so "\n\n" ends an answer that
    starts with "\n" after a chat prompt ending in "\n"; the answer is then cut at nothing). Unlike that
    criterion, which matches token strings, this reads the decoded text, so a stop string inside one
    token ("a\n\nb") ends the row at that token instead of running on: the cut text is the same.
    """
    if row.new[-1] in ends or len(row.new) >= settings.max_new_tokens:
        return True
    if not settings.stop:
        return False
    text = tokenizer.decode(list(tail) + row.new, skip_special_tokens=False)
    start = len(tokenizer.decode(list(tail), skip_special_tokens=False)) if tail else 0
    return any(text.find(s, max(0, start - len(s) + 1)) >= 0 for s in settings.stop)


def decode_threads(model: Any, rows: int, reps: int = 12) -> tuple[int, str]:
    """The intra-op thread count the decode loop runs at, measured: a decode step is ~200 small matmuls
    (``rows`` x hidden), and on a shared CPU each one's thread barrier can cost more than the matmul
    (measured here: 16x576x1536 took 0.9 ms on 1 thread, 7-11 ms on 2 with other jobs on the cores).
    Times a decode-sized matmul of ``model`` on the current count and on 1; returns (count, reason)."""
    import torch

    now = torch.get_num_threads()
    if now <= 1 or os.environ.get("HARNESS_GENERATE_THREADS"):
        pinned = int(os.environ.get("HARNESS_GENERATE_THREADS") or now)
        return pinned, f"{pinned} thread(s)" + (" (HARNESS_GENERATE_THREADS)" if os.environ.get("HARNESS_GENERATE_THREADS") else "")
    linears = [m for m in _core(model).modules() if isinstance(m, torch.nn.Linear) and m.weight.dim() == 2]
    if not linears:
        return now, f"{now} threads"
    w = max(linears[: len(linears) // 2 or 1], key=lambda m: m.weight.numel()).weight.detach()
    x = torch.zeros(rows, w.shape[1], dtype=w.dtype, device=w.device)
    if w.device.type != "cpu":
        return now, f"{now} threads"

    def best(k: int) -> float:
        torch.set_num_threads(k)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, w)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 4]

    try:
        with torch.inference_mode():
            many, one = best(now), best(1)
            many = min(many, best(now))
    finally:
        torch.set_num_threads(now)
    pick = 1 if one < many else now
    return pick, f"{pick} thread(s): a {rows}x{w.shape[1]}x{w.shape[0]} matmul took {one * 1e3:.2f} ms on 1, {many * 1e3:.2f} ms on {now}"


def _generate_fast(model, tokenizer, encoded, order, results, settings, batch_size, progress, adapter_names,
                   alone: bool = False, threads: int | None = None) -> None:
    import torch

    pad = tokenizer.pad_token_id
    ends = set(_end_ids(model, tokenizer)) | ({pad} if pad is not None else set())
    loop = _FastLoop(model, tokenizer, encoded, settings, adapter_names)
    batch_size = max(1, batch_size)
    # rebuild (drop ended rows, refill) once this many rows have ended: a rebuild copies the cache, a
    # dead row costs one row of compute per step
    refill_at = max(1, batch_size // 4)
    queue = list(order)
    finished = 0
    # a stop string may begin in the prompt: this many prompt tokens are enough to hold its start
    reach = max((len(x.encode()) for x in settings.stop), default=0)
    tails = {i: list(encoded[i][-reach:]) if reach else [] for i in order}

    def close(r: _Row) -> None:
        nonlocal finished
        r.done = True
        results[r.index] = _finish(tokenizer, r.new, ends, r.n_prompt, settings, r.seconds)
        finished += 1

    def fail(i: int, exc: BaseException) -> None:
        nonlocal finished
        results[i] = _error(len(encoded[i]), exc)
        finished += 1

    def admit(batch: list[int]) -> tuple[Any, list[_Row]]:
        """Prefill ``batch``; when it fails, each prompt is tried alone, the failing ones become error
        rows and the others are prefilled together again."""
        t0 = time.perf_counter()
        try:
            cache, first = loop.prefill(batch)
        except _ROW_ERRORS as exc:
            if len(batch) == 1:
                fail(batch[0], exc)
                return None, []
            good = []
            for i in batch:
                try:
                    loop.prefill([i])
                    good.append(i)
                except _ROW_ERRORS as one:
                    fail(i, one)
            if not good:
                return None, []
            try:
                cache, first = loop.prefill(good)
            except _ROW_ERRORS as again:
                for i in good:
                    fail(i, again)
                return None, []
            batch = good
        share = (time.perf_counter() - t0) / len(batch)
        return cache, [_Row(i, len(encoded[i]), [t], len(encoded[i]), share) for i, t in zip(batch, first)]

    was = torch.get_num_threads()
    torch.set_num_threads(threads or was)
    try:
        with torch.inference_mode():
            while queue or any(not r.done for r in loop.rows):
                live = sum(not r.done for r in loop.rows)
                dead = len(loop.rows) - live
                if live == 0 or (dead >= refill_at and (queue or dead >= live)):
                    take, queue = queue[: batch_size - live], queue[batch_size - live :]
                    if threads and not alone and loop.rows:
                        # the load of a shared machine changes within a run: measure again at each refill
                        torch.set_num_threads(was)
                        threads = decode_threads(model, batch_size, reps=6)[0]
                        torch.set_num_threads(threads)
                    cache, new_rows = admit(take) if take else (None, [])
                    loop.rebuild(cache, new_rows)
                    for r in new_rows:  # the first token comes from the prefill and may end the row already
                        if _ended(r, tails[r.index], tokenizer, settings, ends):
                            close(r)
                    if progress and take:
                        progress(finished)
                    if not any(not r.done for r in loop.rows):
                        continue
                t0 = time.perf_counter()
                try:
                    toks = loop.step()
                except _ROW_ERRORS as exc:
                    # one row sank the step: each live row runs again alone, so only a bad one fails
                    for r in loop.rows:
                        if r.done:
                            continue
                        if alone:
                            fail(r.index, exc)
                        else:
                            _generate_fast(model, tokenizer, encoded, [r.index], results, settings, 1, None,
                                           adapter_names, alone=True, threads=threads)
                            finished += 1
                        r.done = True
                    loop.rows, loop.cache = [], None
                    if progress:
                        progress(finished)
                    continue
                share = (time.perf_counter() - t0) / max(1, sum(not r.done for r in loop.rows))
                closed = False
                for r, t in zip(loop.rows, toks):
                    if not r.done:
                        r.seconds += share
                        r.new.append(t)
                        if _ended(r, tails[r.index], tokenizer, settings, ends):
                            close(r)
                            closed = True
                if closed and progress:
                    progress(finished)
    finally:
        torch.set_num_threads(was)
