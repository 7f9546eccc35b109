"""Likelihood without decoding: log-probabilities of continuations, and the drift of a scaled adapter from the base.

``loglikelihoods`` scores ``(context, continuation)`` pairs exactly as lm-evaluation-harness 0.4 does for its
``loglikelihood`` and ``multiple_choice`` requests (``HFLM``): a context's trailing whitespace moves to the
continuation, the pair is encoded whole and split at the context's own token count (so a word that merges
across the boundary is scored as the model sees it), an empty context is the BOS (else EOS) token, the
tokenizer adds its special tokens unless the text already opens with BOS, and the sum of the continuation's
token log-probabilities comes with ``is_greedy`` (every continuation token is the argmax). Rows are
right-padded with an attention mask, so padding changes no row, and ``adapter_names`` routes each row to
its (adapter, scale) in the sweep engine's shared batches.

``drift`` teacher-forces the base model's own answer through the base row and a scaled adapter's row in
one batch and returns, per example, the mean per-token KL(base || adapter@scale) over the answer's
tokens and the difference of the answer's mean NLL (adapter minus base): a measure of how far the
adapter moved the model on prompts it was not trained for, that needs no label at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class LogLikelihood:
    """The summed log-probability of a continuation (nats), whether greedy decoding would produce it, and
    its token count."""

    logprob: float
    is_greedy: bool
    n_tokens: int


def _encode(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    """lm-eval 0.4's ``HFLM.tok_encode``: the tokenizer's own special tokens, unless the text opens with BOS."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    bos_text = str(tok.decode([bos])) if bos is not None else ""
    if bos_text and text.startswith(bos_text):
        return list(tok.encode(text, add_special_tokens=False))
    return list(tok.encode(text))


def encode_pair(tok: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The (context, continuation) token ids of one request, as lm-eval 0.4 splits them."""
    if context == "":
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        cont = list(tok.encode(continuation, add_special_tokens=False))
        return ([prefix], cont) if not cont or prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if not context:  # a context of whitespace only: the continuation follows BOS, as after an empty context
            return encode_pair(tok, "", continuation)
    whole = _encode(tok, context + continuation)
    ctx = _encode(tok, context)
    return ctx, whole[len(ctx):]


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _limit(model: Any) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)


def _batches(order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[i:i + size]) for i in range(0, len(order), size)]


def loglikelihoods(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[tuple[str, str]],
                   batch_size: int = 16, adapter_names: Sequence[str] | None = None, *,
                   shared: bool = True) -> list[LogLikelihood]:
    """Score every ``(context, continuation)`` (see the module docstring); results in request order.

    ``shared``: the requests with the same context (the choices of one question) and the same route run the
    context once, with the model's KV cache expanded to each continuation; a single-token continuation costs no
    forward of its own. The numbers are those of one forward per request (a test holds them to 1e-4); requests
    whose context must be cut to fit the model take the plain path. A request whose continuation has no token
    cannot be scored (lm-eval asserts on it): ``ValueError``.
    """
    encoded = [encode_pair(tokenizer, c, x) for c, x in requests]
    for (_, cont), (c, x) in zip(encoded, requests):
        if not cont:
            raise ValueError(f"the continuation {x!r} of context {c[-40:]!r} has no token to score")
    limit = _limit(model)
    routes = list(adapter_names) if adapter_names is not None else None
    out: list[LogLikelihood | None] = [None] * len(encoded)
    plain = [i for i, (ctx, cont) in enumerate(encoded) if not shared or len(ctx) + len(cont) > limit]
    if plain:
        for i, r in zip(plain, _plain(model, tokenizer, [encoded[i] for i in plain], batch_size,
                                      [routes[i] for i in plain] if routes is not None else None, limit)):
            out[i] = r
    groups: dict[tuple[tuple[int, ...], str | None], list[int]] = {}
    for i, (ctx, _) in enumerate(encoded):
        if out[i] is None:
            groups.setdefault((tuple(ctx), routes[i] if routes is not None else None), []).append(i)
    keys = sorted(groups, key=lambda k: -len(k[0]))  # longest contexts first: padding stays small
    for start in range(0, len(keys), max(1, batch_size)):
        chunk = keys[start:start + max(1, batch_size)]
        for i, r in _shared(model, tokenizer, [(list(k[0]), k[1], [(j, encoded[j][1]) for j in groups[k]]) for k in chunk],
                            routes is not None):
            out[i] = r
    return [o for o in out if o is not None]


def _cache_arg(model: Any) -> str:
    """``cache`` (transformers >= 5.25 names the KV cache so) or ``past_key_values``, by the causal LM's signature."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _padded(seqs: Sequence[Sequence[int]], pad: int, left: bool) -> tuple[Any, Any]:
    """(input ids, attention mask) of ``seqs`` padded to the longest, on the left or the right."""
    import torch

    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, x in enumerate(seqs):
        at = slice(width - len(x), width) if left else slice(0, len(x))
        ids[j, at] = torch.tensor(list(x), dtype=torch.long)
        mask[j, at] = 1
    return ids, mask


def _plain(model: Any, tokenizer: Any, encoded: Sequence[tuple[list[int], list[int]]], batch_size: int,
           routes: Sequence[str] | None, limit: int) -> list[LogLikelihood]:
    """One forward per request, right-padded (lm-eval's own layout, with its left truncation)."""
    import torch

    rows = [((ctx + cont)[-(limit + 1):][:-1], cont) for ctx, cont in encoded]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[LogLikelihood | None] = [None] * len(rows)
    device = _device(model)
    for batch in _batches(order, max(1, batch_size)):
        ids, mask = _padded([rows[i][0] for i in batch], _pad_id(tokenizer), left=False)
        route = {"adapter_names": [routes[i] for i in batch]} if routes is not None else {}
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **route).logits
        for j, i in enumerate(batch):
            inp, cont = rows[i]
            lp = torch.log_softmax(logits[j, len(inp) - len(cont):len(inp)].float(), dim=-1)
            out[i] = _result(lp, cont)
    return [o for o in out if o is not None]


def _result(lp: Any, cont: Sequence[int]) -> LogLikelihood:
    import torch

    want = torch.tensor(list(cont), device=lp.device)
    greedy = bool((lp.argmax(dim=-1) == want).all())
    return LogLikelihood(float(lp.gather(-1, want.unsqueeze(-1)).sum()), greedy, len(cont))


def _shared(model: Any, tokenizer: Any, groups: Sequence[tuple[list[int], str | None, list[tuple[int, list[int]]]]],
            routed: bool) -> list[tuple[int, LogLikelihood]]:
    """Contexts once (left-padded, the last position's logits only, the KV cache kept), then every continuation's
    remaining tokens against its context's cache (expanded by index), in two forwards for the whole chunk."""
    import torch

    device = _device(model)
    pad = _pad_id(tokenizer)
    ids, mask = _padded([ctx for ctx, _, _ in groups], pad, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    route = {"adapter_names": [r for _, r, _ in groups]} if routed else {}
    with torch.inference_mode():
        first = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                      use_cache=True, logits_to_keep=1, **route)
    first_lp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)
    rows = [(g, i, cont) for g, (_, _, items) in enumerate(groups) for i, cont in items]
    longer = [(g, i, cont) for g, i, cont in rows if len(cont) > 1]
    rest: dict[int, Any] = {}
    if longer:
        cache = getattr(first, "cache", None) or first.past_key_values
        cache.reorder_cache(torch.tensor([g for g, _, _ in longer], device=device))
        ids2, mask2 = _padded([cont[:-1] for _, _, cont in longer], pad, left=False)
        n = ids2.shape[1]
        ctx_mask = mask[[g for g, _, _ in longer]]
        lengths = ctx_mask.sum(-1, keepdim=True)
        pos2 = lengths + torch.arange(n).unsqueeze(0)
        route2 = {"adapter_names": [groups[g][1] for g, _, _ in longer]} if routed else {}
        with torch.inference_mode():
            second = model(input_ids=ids2.to(device), attention_mask=torch.cat([ctx_mask, mask2], -1).to(device),
                           position_ids=pos2.to(device), use_cache=True, **{_cache_arg(model): cache}, **route2).logits
        for k, (_, i, cont) in enumerate(longer):
            rest[i] = torch.log_softmax(second[k, :len(cont) - 1].float(), dim=-1)
    out = []
    for g, i, cont in rows:
        lp = first_lp[g:g + 1]
        if i in rest:
            lp = torch.cat([lp, rest[i]], 0)
        out.append((i, _result(lp, cont)))
    return out


@dataclass(frozen=True)
class Drift:
    """One example at one (adapter, scale): mean per-token KL(base || adapter) over the base's answer (nats) and
    the answer's mean NLL under the adapter minus under the base; None (with ``reason``) when the base gave
    no answer to teacher-force."""

    kl: float | None
    nll_delta: float | None
    n_tokens: int
    reason: str | None = None


def drift(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[tuple[str, str, str, str]],
          base_route: str, batch_size: int = 16) -> list[Drift]:
    """``items``: (base prompt, adapter prompt, the base's answer, the adapter row's route). The base row and
    the adapter rows of an example run in one batch (on the same shared model, routed by ``adapter_names``), the base
    row once for all its scales; ``batch_size`` rows a forward; only the per-example figures are kept."""
    import torch

    device = _device(model)
    limit = _limit(model)
    pad = _pad_id(tokenizer)
    encoded = []
    for base_prompt, prompt, answer, route in items:
        ans = list(tokenizer.encode(answer, add_special_tokens=False)) if answer else []
        # an empty prompt: the answer follows BOS (else EOS), so its first token is predicted from something
        bos = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        pb = list(tokenizer.encode(base_prompt, add_special_tokens=False)) or bos
        pa = pb if prompt == base_prompt else (list(tokenizer.encode(prompt, add_special_tokens=False)) or bos)
        encoded.append(((pb + ans)[-limit:], (pa + ans)[-limit:], min(len(ans), limit - 1), route))
    results: dict[int, Drift] = {i: Drift(None, None, 0, "the base model's answer is empty: nothing to compare")
                                 for i, e in enumerate(encoded) if e[2] <= 0}
    # the scales of one example share its base row (computed once per chunk), and similar lengths share a chunk
    live = sorted((i for i, e in enumerate(encoded) if e[2] > 0), key=lambda i: (len(encoded[i][0]), encoded[i][0]))
    chunks: list[list[int]] = []
    rows_in = 0
    seen: set[tuple[int, ...]] = set()
    for i in live:
        new_base = tuple(encoded[i][0]) not in seen
        if chunks and rows_in + 1 + new_base <= max(2, batch_size):
            chunks[-1].append(i)
        else:
            chunks.append([i])
            rows_in, seen = 0, set()
            new_base = True
        rows_in += 1 + new_base
        seen.add(tuple(encoded[i][0]))
    for chunk in chunks:
        # left-padded, so every row's answer ends at the last position: the LM head runs over the answers' positions
        # only (logits_to_keep), not over every prompt token of every row
        bases = list(dict.fromkeys(tuple(encoded[i][0]) for i in chunk))
        seqs = [list(b) for b in bases] + [encoded[i][1] for i in chunk]
        routes = [base_route] * len(bases) + [encoded[i][3] for i in chunk]
        ids, mask = _padded(seqs, pad, left=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(encoded[i][2] for i in chunk) + 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                           adapter_names=routes, logits_to_keep=keep).logits
        base_lp: dict[tuple[tuple[int, ...], int], Any] = {}
        for n, i in enumerate(chunk):
            sb, _, n_ans, _ = encoded[i]
            b = bases.index(tuple(sb))
            # answer token t is predicted at position t - 1: the n_ans positions before the last
            if (tuple(sb), n_ans) not in base_lp:
                base_lp[(tuple(sb), n_ans)] = torch.log_softmax(logits[b, keep - 1 - n_ans:keep - 1].float(), dim=-1)
            lb = base_lp[(tuple(sb), n_ans)]
            la = torch.log_softmax(logits[len(bases) + n, keep - 1 - n_ans:keep - 1].float(), dim=-1)
            kl = (lb.exp() * (lb - la)).sum(-1).mean()
            want = torch.tensor(sb[len(sb) - n_ans:], device=lb.device).unsqueeze(-1)
            nll_b = -lb.gather(-1, want).mean()
            nll_a = -la.gather(-1, want).mean()
            results[i] = Drift(max(0.0, float(kl)), float(nll_a - nll_b), n_ans)
    out = [results[i] for i in range(len(encoded))]
    return out
