"""The fast generation path: our own greedy decode loop over the model's forward, continuous-batching
style (see harness.generation.generate for when it runs and the reference path it must equal).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.generation.rows import ROW_ERRORS, GenerationSettings, core_model, end_ids, error_row, finish_row

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
        core = core_model(model)
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


def decode_threads(model: Any = None, rows: int = 0) -> tuple[int, str]:
    """The intra-op thread count the decode loop runs at, and why: ``HARNESS_THREADS`` when set, else the
    process's own torch thread count, held for the whole run.

    Until 2026-12 this timed one decode-sized matmul on 1 and on N threads at every refill and switched to
    the faster; on a shared machine that single timing followed the neighbours' load from moment to moment
    (issue 34: one pass 9.0 s, the next 21.1 s, while lm-eval on a fixed count held 8.7-8.9 s), and it made
    the benchmark's 10.4x an artefact. A fixed count is never slower than itself; set HARNESS_THREADS=1 on a
    machine whose cores are shared with other jobs (thread barriers then cost more than they give).
    """
    import torch

    for var in ("HARNESS_THREADS", "HARNESS_GENERATE_THREADS"):  # the second: its name before 2026-12
        value = os.environ.get(var)
        if value:
            try:
                n = int(value)
            except ValueError:
                n = 0
            if n < 1:
                from harness.errors import UsageError

                raise UsageError(f"{var}={value!r}: a thread count is a whole number >= 1")
            return n, f"{n} thread(s) ({var})"
    n = torch.get_num_threads()
    return n, f"{n} thread(s): the process's torch thread count (HARNESS_THREADS=N to change)"


def generate_fast(model, tokenizer, encoded, order, results, settings, batch_size, progress, adapter_names,
                   alone: bool = False, threads: int | None = None) -> None:
    import torch

    pad = tokenizer.pad_token_id
    ends = set(end_ids(model, tokenizer)) | ({pad} if pad is not None else set())
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
        results[r.index] = finish_row(tokenizer, r.new, ends, r.n_prompt, settings, r.seconds)
        finished += 1

    def fail(i: int, exc: BaseException) -> None:
        nonlocal finished
        results[i] = error_row(len(encoded[i]), exc)
        finished += 1

    def admit(batch: list[int]) -> tuple[Any, list[_Row]]:
        """Prefill ``batch``; when it fails, each prompt is tried alone, the failing ones become error
        rows and the others are prefilled together again."""
        t0 = time.perf_counter()
        try:
            cache, first = loop.prefill(batch)
        except ROW_ERRORS as exc:
            if len(batch) == 1:
                fail(batch[0], exc)
                return None, []
            good = []
            for i in batch:
                try:
                    loop.prefill([i])
                    good.append(i)
                except ROW_ERRORS as one:
                    fail(i, one)
            if not good:
                return None, []
            try:
                cache, first = loop.prefill(good)
            except ROW_ERRORS as again:
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
                except ROW_ERRORS as exc:
                    # one row sank the step: each live row runs again alone, so only a bad one fails
                    for r in loop.rows:
                        if r.done:
                            continue
                        if alone:
                            fail(r.index, exc)
                        else:
                            generate_fast(model, tokenizer, encoded, [r.index], results, settings, 1, None,
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
