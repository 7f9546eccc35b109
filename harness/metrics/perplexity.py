"""Per-example negative log-likelihood and perplexity of a reference answer given its prompt.

For each (rendered prompt, reference) pair the model scores ``prompt + reference`` in one forward
pass; only the reference's tokens count. ``mean_nll`` is the mean of -log p(token) over those tokens
(nats) and ``perplexity = exp(mean_nll)``. This is the teacher-forced likelihood lm-evaluation-harness
uses for its loglikelihood requests; unlike a generation metric it needs no decoding and no scorer.

Batches are right-padded with an attention mask, so padding never changes a row's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class NLLResult:
    """Summed and mean NLL over the reference tokens; None when the reference has no tokens."""

    n_tokens: int
    total_nll: float | None
    mean_nll: float | None

    @property
    def perplexity(self) -> float | None:
        if self.mean_nll is None:
            return None
        # exp overflows past ~709 nats; an infinite perplexity is stored as NULL with a reason upstream.
        return math.exp(self.mean_nll) if self.mean_nll < 700 else None


def reference_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    references: Sequence[str],
    batch_size: int = 8,
    adapter_names: Sequence[str] | None = None,
) -> list[NLLResult]:
    """NLL of each reference continuing its prompt (texts already rendered; no special tokens added)."""
    import torch

    if len(prompts) != len(references):
        raise ValueError("prompts and references differ in length")
    device = next(model.parameters()).device
    limit = int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)
    encoded = []
    for p, r in zip(prompts, references):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"] if r else []
        ids = (p_ids + r_ids)[-limit:]  # keep the reference whole; cut the prompt from the left if needed
        encoded.append((ids, min(len(r_ids), len(ids) - 1)))
    out: list[NLLResult] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (ids, _) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        with torch.no_grad():
            route = {"adapter_names": list(adapter_names[start : start + batch_size])} if adapter_names else {}
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **route).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for i, (ids, n_ref) in enumerate(chunk):
            if n_ref <= 0:
                out.append(NLLResult(0, None, None))
                continue
            # Reference tokens are the last n_ref of the row; token t is predicted at position t-1.
            end = len(ids) - 1
            total = -float(token_lp[i, end - n_ref : end].sum())
            out.append(NLLResult(n_ref, total, total / n_ref))
    return out
