"""RoPE kernel against HF's ``apply_rotary_pos_emb``: fp32 and fp16, odd head counts and head dims, GQA."""

import pytest
import torch

from harness.train.kernels.rope import RoPEFunction, reference_rope, rope
from tests.train.kernels.kernel_support import DTYPES, compare, gpu, leaves, needs_cuda, require_triton


def _cos_sin(batch, seq, dim, dtype, device="cpu"):
    # as Llama builds them: the same frequencies in both halves, per position
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    pos = torch.arange(seq, dtype=torch.float32)[None, :].expand(batch, -1) + torch.arange(batch)[:, None]
    emb = torch.cat([pos[..., None] * inv, pos[..., None] * inv], -1)
    return emb.cos().to(device, dtype), emb.sin().to(device, dtype)


# (batch, q heads, kv heads, seq, head dim): one token, odd heads and dims (half 3), GQA, cos batch 1
CASES = [(1, 1, 1, 1, 2), (2, 4, 2, 5, 6), (3, 3, 1, 7, 16), (2, 9, 3, 33, 64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype):
    require_triton()
    torch.manual_seed(0)
    b, hq, hk, s, d = case
    q, k = leaves((b, hq, s, d), (b, hk, s, d), dtype=dtype)
    cos, sin = _cos_sin(b, s, d, dtype)
    compare(lambda a, c: rope(a, c, cos, sin), lambda a, c: reference_rope(a, c, cos, sin), [q, k], dtype, ["q", "k"])


def test_broadcast_cos_and_a_transposed_input():
    # Llama hands over q as a transpose of the projection's view (not contiguous) and cos with batch 1
    require_triton()
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 8)  # [B, S, H, D], as the projection's output is viewed
    q = x.transpose(1, 2).requires_grad_()
    cos, sin = _cos_sin(1, 5, 8, torch.float32)
    got, want = rope(q, q, cos, sin)[0], reference_rope(q, q, cos, sin)[0]
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(q, x.transpose(1, 2))  # the input is not rotated in place


def test_gradcheck_float64_on_the_triton_path():
    require_triton()
    torch.manual_seed(0)
    q, k = leaves((1, 2, 3, 4), (1, 1, 3, 4), dtype=torch.float64)
    cos, sin = _cos_sin(1, 3, 4, torch.float64)
    assert torch.autograd.gradcheck(lambda a, c: RoPEFunction.apply(a, c, cos, sin), (q, k))


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_on_gpu(dtype):
    torch.manual_seed(0)
    q, k = leaves((4, 9, 2048, 64), (4, 3, 2048, 64), dtype=dtype, device="cuda")
    cos, sin = _cos_sin(4, 2048, 64, dtype, "cuda")
    compare(lambda a, c: rope(a, c, cos, sin), lambda a, c: reference_rope(a, c, cos, sin), [q, k], dtype, ["q", "k"])
