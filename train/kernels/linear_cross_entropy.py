"""LM head and cross-entropy, fused and chunked over tokens: the ``[N, V]`` logits are never all in memory.

For each chunk of tokens the logits ``h_c W^T`` (``[C, V]``, float32 as HF upcasts them) are computed with ``torch.matmul``
(cuBLAS on a GPU, as Liger's fused linear cross-entropy does), a Triton kernel makes one online pass over
the vocabulary for each row (log-sum-exp, the label's negative log-likelihood, the entropy and whether the
label is the top-1 token), and the chunk is freed. The backward recomputes each chunk's logits (as Apple's
Cut Cross-Entropy does; one extra matmul instead of keeping an ``[N, H]`` gradient from the forward), and
a second kernel turns them into ``grad * (softmax - onehot)`` in place. Per-token outputs let a caller
weight or reduce the loss as it likes (TRL's SFTTrainer sums and divides by ``num_items_in_batch``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

IGNORE_INDEX = -100


class TokenLoss(NamedTuple):
    """Per-token results, all ``[N]``; zero (False) where the label is ignored."""

    nll: torch.Tensor  # negative log-likelihood of the label, differentiable
    entropy: torch.Tensor  # of the next-token distribution, no gradient
    is_top1: torch.Tensor  # bool: the label is the most likely token


def reference_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   bias: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Full logits then cross-entropy, as HF's causal-LM loss does: the test oracle and the memory baseline.

    Args:
        hidden: ``[N, H]``.
        weight: ``[V, H]``, the LM head.
        labels: ``[N]`` token ids, ``ignore_index`` where unsupervised.
        bias: ``[V]`` or None.
        ignore_index: label value that is skipped.

    Returns:
        Scalar mean over the supervised tokens.
    """
    logits = _logits(hidden, weight, bias)
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=ignore_index)


def _chunk_ce_reference(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(lse, nll, entropy, is_top1)`` of a float32 ``[C, V]`` chunk, in PyTorch (the fallback per chunk)."""
    valid = labels != IGNORE_INDEX
    lse = torch.logsumexp(logits, -1)
    picked = logits.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    nll = torch.where(valid, lse - picked, 0.0)
    entropy = torch.where(valid, lse - (torch.softmax(logits, -1) * logits).sum(-1), 0.0)
    is_top1 = valid & (picked >= logits.max(-1).values)
    return lse, nll, entropy, is_top1


def _chunk_grad_reference(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad * (softmax - onehot)`` for a ``[C, V]`` chunk, zero on ignored rows, in place."""
    valid = labels != IGNORE_INDEX
    p = logits.sub_(lse[:, None]).exp_()
    rows = torch.arange(len(labels), device=labels.device)[valid]
    p[rows, labels[valid]] -= 1.0
    return p.mul_(torch.where(valid, grad, 0.0)[:, None])


@triton.jit
def _ce_fwd(Z, LABELS, LSE, NLL, ENT, TOP1, stride_z, C, V, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
            ACC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < C
    label = tl.load(LABELS + rows, mask=row_ok, other=-100)
    valid = label != -100
    z_rows = Z + rows.to(tl.int64)[:, None] * stride_z
    # per row: running max, sum of exp and sum of exp * logit (for the entropy), rescaled when the max grows
    m = tl.full((BLOCK_R,), float("-inf"), ACC)
    s = tl.zeros((BLOCK_R,), ACC)
    t = tl.zeros((BLOCK_R,), ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)[None, :]
        mask = row_ok[:, None] & (cols < V)
        z = tl.load(z_rows + cols, mask=mask, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        m_safe = tl.where(row_ok, m_new, 0.0)  # rows past the end stay at -inf; keep their arithmetic finite
        e = tl.where(mask, tl.exp(z - m_safe[:, None]), 0.0)
        rescale = tl.where(row_ok, tl.exp(m - m_safe), 0.0)
        s = s * rescale + tl.sum(e, axis=1)
        t = t * rescale + tl.sum(e * tl.where(mask, z, 0.0), axis=1)
        m = m_new
    s = tl.where(row_ok, s, 1.0)  # rows past the end: no log(0) or 0/0, even though they are never stored
    m = tl.where(row_ok, m, 0.0)
    lse = m + tl.log(s)
    picked = tl.load(Z + rows.to(tl.int64) * stride_z + tl.where(valid, label, 0), mask=row_ok, other=0.0).to(ACC)
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(NLL + rows, tl.where(valid, lse - picked, 0.0), mask=row_ok)
    tl.store(ENT + rows, tl.where(valid, lse - t / s, 0.0), mask=row_ok)
    tl.store(TOP1 + rows, (valid & (picked >= m)).to(tl.int8), mask=row_ok)


@triton.jit
def _ce_bwd(Z, LABELS, LSE, GRAD, stride_z, C, V, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < C
    label = tl.load(LABELS + rows, mask=row_ok, other=-100)
    valid = label != -100
    g = tl.where(valid, tl.load(GRAD + rows, mask=row_ok, other=0.0).to(ACC), 0.0)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    z_rows = Z + rows.to(tl.int64)[:, None] * stride_z
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)[None, :]
        mask = row_ok[:, None] & (cols < V)
        z = tl.load(z_rows + cols, mask=mask, other=0.0).to(ACC)
        d = tl.exp(z - lse[:, None]) - tl.where(cols == label[:, None], 1.0, 0.0)
        tl.store(z_rows + cols, (g[:, None] * d).to(Z.dtype.element_ty), mask=mask)


def _acc(dtype: torch.dtype) -> tl.dtype:
    # float64 stays float64 so that gradcheck can run on the Triton path itself
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(c: int, v: int) -> tuple[int, int]:
    """(rows, vocabulary entries) per program: up to 4K entries of a row per step, and rows stacked until a
    block holds about 4K (a small vocabulary then needs few programs)."""
    block_v = min(4096, triton.next_power_of_2(v))
    return max(1, min(triton.next_power_of_2(c), 4096 // block_v)), block_v


def chunk_ce_triton(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Launch the per-row online softmax kernel on a float32 ``[C, V]`` chunk; returns ``(lse, nll, entropy, is_top1)``."""
    c, v = logits.shape
    lse, nll, ent = (torch.empty(c, dtype=logits.dtype, device=logits.device) for _ in range(3))
    top1 = torch.empty(c, dtype=torch.int8, device=logits.device)
    block_r, block_v = _blocks(c, v)
    _ce_fwd[(triton.cdiv(c, block_r),)](logits, labels, lse, nll, ent, top1, logits.stride(0), c, v,
                                        BLOCK_R=block_r, BLOCK_V=block_v, ACC=_acc(logits.dtype))
    return lse, nll, ent, top1.bool()


def chunk_grad_triton(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Launch the gradient kernel: ``logits`` becomes ``grad * (softmax - onehot)`` in place."""
    c, v = logits.shape
    block_r, block_v = _blocks(c, v)
    _ce_bwd[(triton.cdiv(c, block_r),)](logits, labels, lse, grad.contiguous(), logits.stride(0), c, v,
                                        BLOCK_R=block_r, BLOCK_V=block_v, ACC=_acc(logits.dtype))
    return logits


def default_chunk_size(n_tokens: int, vocab: int) -> int:
    """Tokens per chunk: about 8M logits (32 MiB in float32) at a time, so memory stays flat in the vocabulary."""
    return max(1, min(n_tokens, (1 << 23) // max(vocab, 1)))


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    z = torch.nn.functional.linear(h, weight, bias)
    return z if z.dtype == torch.float64 else z.float()  # HF upcasts the logits to float32 for the loss


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Chunked LM head + cross-entropy. Saves ``hidden``, ``weight``, ``labels`` and ``lse [N]`` only."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                chunk_size: int, use_triton: bool):
        n = hidden.shape[0]
        ce = chunk_ce_triton if use_triton else _chunk_ce_reference
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        lse, nll, ent = (torch.empty(n, dtype=acc, device=hidden.device) for _ in range(3))
        top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        for i in range(0, n, chunk_size):
            sl = slice(i, i + chunk_size)
            lse[sl], nll[sl], ent[sl], top1[sl] = ce(_logits(hidden[sl], weight, bias), labels[sl])
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk_size, ctx.use_triton = chunk_size, use_triton
        ctx.mark_non_differentiable(ent, top1)
        return nll, ent, top1

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor, _grad_ent, _grad_top1):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        grad_of = chunk_grad_triton if ctx.use_triton else _chunk_grad_reference
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dh = torch.empty_like(hidden) if need_h else None
        acc = lse.dtype
        dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        db = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        for i in range(0, hidden.shape[0], ctx.chunk_size):
            sl = slice(i, i + ctx.chunk_size)
            d = grad_of(_logits(hidden[sl], weight, bias), labels[sl], lse[sl], grad_nll[sl].to(lse.dtype))
            d_low = d.to(hidden.dtype)  # the gradient of HF's `.float()` upcast: back to the activations' dtype
            if dh is not None:  # None exactly when not need_h
                dh[sl] = d_low @ weight
            if dw is not None:
                dw += (d_low.t() @ hidden[sl]).to(acc)
            if db is not None:
                db += d.sum(0)
        return (dh, None if dw is None else dw.to(weight.dtype), None if db is None else db.to(bias.dtype),
                None, None, None)


def linear_cross_entropy_per_token(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   bias: torch.Tensor | None = None, chunk_size: int | None = None,
                                   use_triton: bool = True) -> TokenLoss:
    """Per-token loss of ``hidden [N, H]`` through the LM head ``weight [V, H]`` against ``labels [N]``.

    ``use_triton`` picks the per-chunk kernel (Triton or PyTorch); both paths are chunked.
    """
    chunk = chunk_size or default_chunk_size(hidden.shape[0], weight.shape[0])
    nll, ent, top1 = LinearCrossEntropyFunction.apply(hidden, weight, bias, labels, chunk, use_triton)
    return TokenLoss(nll, ent, top1)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None, chunk_size: int | None = None,
                         use_triton: bool = True) -> torch.Tensor:
    """Mean cross-entropy over the supervised tokens (labels != -100), never holding all ``[N, V]`` logits.

    Args:
        hidden: ``[N, H]``.
        weight: ``[V, H]``.
        labels: ``[N]``.
        bias: ``[V]`` or None.
        chunk_size: tokens per chunk (default: ``default_chunk_size``).
        use_triton: the Triton per-chunk kernels, or their PyTorch equivalents.

    Returns:
        Scalar; 0 (not NaN) when no token is supervised.
    """
    nll = linear_cross_entropy_per_token(hidden, weight, labels, bias, chunk_size, use_triton).nll
    return nll.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)
