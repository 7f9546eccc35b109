"""Several LoRA adapters (or scales of one) over one batch in a single launch, BGMV-style (Punica, S-LoRA).

Row ``m`` of the batch uses adapter ``idx[m]`` of a stack: ``y[m] = base[m] + scaling[i] * B_i (A_i x[m])``;
``idx[m] = -1`` leaves the row at its base output (scale 0, the base model). A sweep loads one adapter
under several scales, so the stack holds ``(A, B)`` once per adapter and ``scaling`` once per scale.

Two kernels, as Punica splits them: *shrink* (``x A_i^T``, one program per row) and *expand*
(``base + s_i * xa B_i^T``, one program per row and output block). The backward reuses both with the
stacks transposed (``B_i^T`` shrinks ``dy``, ``A_i^T`` expands it); the stack gradients are summed per
adapter with ``torch.matmul``. Sweeps only run the forward; the backward is there for completeness.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def reference_multi_scale_lora(x: torch.Tensor, base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                               scaling: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """One masked LoRA product per adapter of the stack: the fallback and the test oracle.

    Args:
        x: ``[M, K]`` layer inputs.
        base: ``[M, N]`` base layer outputs.
        lora_a: ``[L, r, K]`` stack of A.
        lora_b: ``[L, N, r]`` stack of B.
        scaling: ``[L]`` (or ``[S]`` with ``lora_a``/``lora_b`` indexed the same way) multipliers.
        idx: ``[M]`` int, the stack entry of each row, ``-1`` for none.

    Returns:
        ``[M, N]``.
    """
    out = base
    for i in range(lora_a.shape[0]):
        rows = (idx == i).to(x.dtype)[:, None]
        out = out + rows * (((x @ lora_a[i].t()) @ lora_b[i].t()) * scaling[i].to(x.dtype))
    return out


@triton.jit
def _shrink(X, S, IDX, XA, K, R, sxm, sxk, ssl, ssr, ssk, BK: tl.constexpr, BR: tl.constexpr, ACC: tl.constexpr):
    m = tl.program_id(0)
    i = tl.load(IDX + m)
    rr = tl.arange(0, BR)
    xa = tl.zeros((BR,), dtype=ACC)
    if i >= 0:
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(X + m * sxm + rk * sxk, mask=rk < K, other=0.0).to(ACC)
            s = tl.load(S + i * ssl + rr[:, None] * ssr + rk[None, :] * ssk,
                        mask=(rr[:, None] < R) & (rk[None, :] < K), other=0.0).to(ACC)
            xa += tl.sum(s * x[None, :], axis=1)
    tl.store(XA + m * BR + rr, xa)


@triton.jit
def _expand(XA, E, SCALING, IDX, BASE, Y, N, R, sel, sen, ser, sbm, sbn, sym, syn,
            HAS_BASE: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, ACC: tl.constexpr):
    m = tl.program_id(0)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rr = tl.arange(0, BR)
    i = tl.load(IDX + m)
    acc = tl.zeros((BN,), dtype=ACC)
    if HAS_BASE:
        acc += tl.load(BASE + m * sbm + rn * sbn, mask=rn < N, other=0.0).to(ACC)
    if i >= 0:
        xa = tl.load(XA + m * BR + rr)
        e = tl.load(E + i * sel + rn[:, None] * sen + rr[None, :] * ser,
                    mask=(rn[:, None] < N) & (rr[None, :] < R), other=0.0).to(ACC)
        acc += tl.load(SCALING + i).to(ACC) * tl.sum(e * xa[None, :], axis=1)
    tl.store(Y + m * sym + rn * syn, acc.to(Y.dtype.element_ty), mask=rn < N)


def _acc(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def bgmv(x: torch.Tensor, shrink: torch.Tensor, expand: torch.Tensor, scaling: torch.Tensor, idx: torch.Tensor,
         base: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch shrink then expand: ``y[m] = base[m] + scaling[i] * expand_i (shrink_i x[m])``, ``i = idx[m]``.

    Args:
        x: ``[M, K]``.
        shrink: ``[L, r, K]`` (any strides).
        expand: ``[L, N, r]`` (any strides).
        scaling: ``[L]``.
        idx: ``[M]`` int32/int64, ``-1`` for no adapter.
        base: ``[M, N]`` or None (zeros).

    Returns:
        ``(y [M, N] in x's dtype, xa [M, r_pad] in the accumulation dtype)``.
    """
    m, k = x.shape
    r, n = shrink.shape[1], expand.shape[1]
    acc_t, acc = _acc(x.dtype)
    br = triton.next_power_of_2(max(r, 1))
    xa = torch.empty((m, br), dtype=acc_t, device=x.device)
    _shrink[(m,)](x, shrink, idx, xa, k, r, x.stride(0), x.stride(1), *shrink.stride(),
                  BK=min(128, triton.next_power_of_2(k)), BR=br, ACC=acc)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    bn = min(128, triton.next_power_of_2(n))
    b = base if base is not None else y
    _expand[(m, triton.cdiv(n, bn))](xa, expand, scaling, idx, b, y, n, r, *expand.stride(), b.stride(0), b.stride(1),
                                     y.stride(0), y.stride(1), HAS_BASE=base is not None, BN=bn, BR=br, ACC=acc)
    return y, xa


class MultiScaleLoRAFunction(torch.autograd.Function):
    """BGMV forward and backward; saves the inputs, recomputes nothing but ``x A_i^T`` for ``dB``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scaling: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        y, _ = bgmv(x, lora_a, lora_b, scaling, idx, base)
        ctx.save_for_backward(x, lora_a, lora_b, scaling, idx)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, lora_a, lora_b, scaling, idx = ctx.saved_tensors
        dy = dy.contiguous()
        dx = None
        if ctx.needs_input_grad[0]:
            # dx[m] = s_i A_i^T (B_i^T dy[m]): shrink by B^T, expand by A^T
            dx, _ = bgmv(dy, lora_b.transpose(1, 2), lora_a.transpose(1, 2), scaling, idx, None)
        da = db = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            da, db = torch.zeros_like(lora_a), torch.zeros_like(lora_b)
            for i in torch.unique(idx[idx >= 0]).tolist():
                rows = idx == i
                s = scaling[i].to(x.dtype)
                g = dy[rows] @ lora_b[i]  # [m_i, r]
                da[i] = s * (g.t() @ x[rows])
                db[i] = s * (dy[rows].t() @ (x[rows] @ lora_a[i].t()))
        return dx, dy, da, db, None, None


def multi_scale_lora(x: torch.Tensor, base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                     scaling: torch.Tensor, idx: torch.Tensor, use_triton: bool = True) -> torch.Tensor:
    """``base[m] + scaling[idx[m]] * B_idx (A_idx x[m])`` for every row, in one launch (see module docstring).

    Shapes as in ``reference_multi_scale_lora``; ``x`` may have leading batch dims (``[..., K]``, with ``base``
    ``[..., N]`` and ``idx`` one entry per row of the flattened batch).
    """
    shape = base.shape
    x2, b2 = x.reshape(-1, x.shape[-1]), base.reshape(-1, shape[-1])
    if not use_triton:
        return reference_multi_scale_lora(x2, b2, lora_a, lora_b, scaling, idx).view(shape)
    dt = x.dtype
    y = MultiScaleLoRAFunction.apply(x2, b2, lora_a.to(dt), lora_b.to(dt), scaling.to(dt), idx.to(torch.int64))
    return y.view(shape)
