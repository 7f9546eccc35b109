"""Chunked LM head + cross-entropy against full logits + ``F.cross_entropy`` (HF's loss): fp32 and fp16,
odd vocabularies, ignored labels, chunk sizes from one token to all of them, on both per-chunk paths."""

import pytest
import torch

from harness.train.kernels.linear_cross_entropy import (
    default_chunk_size,
    linear_cross_entropy,
    linear_cross_entropy_per_token,
    reference_linear_cross_entropy,
)
from tests.train.kernels.kernel_support import DTYPES, assert_close, compare, gpu, leaves, needs_cuda, require_triton

# (tokens, hidden, vocab, chunk): one token, odd sizes with a ragged last chunk, one chunk for all, many rows
CASES = [(1, 1, 2, None), (13, 24, 67, 4), (40, 16, 4099, None), (70, 8, 33, 1)]


def _labels(n, v, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.3] = -100
    if n > 1:
        labels[0] = -100
    labels[-1] = v - 1  # the last vocabulary entry, at the edge of the last block
    return labels


@pytest.mark.parametrize("use_triton", [True, False], ids=["triton", "torch-chunks"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_full_logits_cross_entropy(case, dtype, use_triton):
    if use_triton:
        require_triton()
    torch.manual_seed(0)
    n, h, v, chunk = case
    hidden, weight, bias = leaves((n, h), (v, h), (v,), dtype=dtype)
    labels = _labels(n, v)
    compare(lambda a, b, c: linear_cross_entropy(a, b, labels, c, chunk_size=chunk, use_triton=use_triton),
            lambda a, b, c: reference_linear_cross_entropy(a, b, labels, c), [hidden, weight, bias], dtype,
            ["hidden", "weight", "bias"])


def test_per_token_entropy_top1_and_weighted_gradients():
    require_triton()
    torch.manual_seed(0)
    hidden, weight = leaves((9, 8), (21, 8), dtype=torch.float32)
    labels = _labels(9, 21)
    tok = linear_cross_entropy_per_token(hidden, weight, labels, chunk_size=4)
    logits = (hidden @ weight.t()).float()
    valid = labels != -100
    logp = torch.log_softmax(logits, -1)
    want_nll = torch.where(valid, -logp.gather(1, labels.clamp(min=0)[:, None])[:, 0], 0.0)
    assert_close(tok.nll, want_nll, torch.float32, "nll")
    assert_close(tok.entropy, torch.where(valid, -(logp.exp() * logp).sum(-1), 0.0), torch.float32, "entropy")
    assert torch.equal(tok.is_top1, valid & (logits.argmax(-1) == labels))
    # a per-token weighting (as TRL's sum / num_items_in_batch, or DFT) reaches the gradients
    w = torch.rand(9)
    g = torch.autograd.grad((tok.nll * w).sum(), hidden)[0]
    assert_close(g, torch.autograd.grad((want_nll * w).sum(), hidden)[0], torch.float32, "weighted grad")


def test_no_supervised_token_gives_zero_not_nan():
    require_triton()
    hidden, weight = leaves((4, 8), (10, 8), dtype=torch.float32)
    loss = linear_cross_entropy(hidden, weight, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(hidden.grad) == 0


def test_default_chunk_bounds_the_logits_held_at_once():
    assert default_chunk_size(1024, 49152) * 49152 <= 1 << 23
    assert default_chunk_size(3, 10) == 3


def test_gradcheck_float64_on_the_triton_path():
    require_triton()
    torch.manual_seed(0)
    hidden, weight, bias = leaves((5, 3), (7, 3), (7,), dtype=torch.float64)
    labels = torch.tensor([1, -100, 3, 6, 0])
    assert torch.autograd.gradcheck(
        lambda a, b, c: linear_cross_entropy_per_token(a, b, labels, c, chunk_size=2).nll, (hidden, weight, bias))


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_on_gpu(dtype):
    torch.manual_seed(0)
    hidden, weight = leaves((4096, 576), (49152, 576), dtype=dtype, device="cuda", scale=0.05)
    labels = _labels(4096, 49152).cuda()
    compare(lambda a, b: linear_cross_entropy(a, b, labels), lambda a, b: reference_linear_cross_entropy(a, b, labels),
            [hidden, weight], dtype, ["hidden", "weight"])
