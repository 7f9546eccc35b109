"""BGMV multi-scale LoRA against one masked LoRA product per stack entry: fp32 and fp16, rows without an
adapter (-1), every row on one entry, leading batch dims; the output and every gradient."""

import pytest
import torch

from harness.train.kernels.lora_linear import reference_lora_linear
from harness.train.kernels.multi_scale_lora import MultiScaleLoRAFunction, multi_scale_lora, reference_multi_scale_lora
from tests.train.kernels.kernel_support import DTYPES, compare, gpu, leaves, needs_cuda, require_triton

# (rows, K, N, r, stack size, idx): one row, odd sizes with base rows, everyone on entry 2, past one block
CASES = [(1, 1, 1, 1, 1, [0]), (9, 37, 45, 5, 3, [0, 1, 2, -1, 2, 2, 0, 1, -1]), (4, 16, 8, 4, 3, [2, 2, 2, 2]),
         (6, 130, 129, 16, 2, [1, 0, -1, 1, 0, 1])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype):
    require_triton()
    torch.manual_seed(0)
    m, k, n, r, n_stack, idx = case
    x, base, a, b = leaves((m, k), (m, n), (n_stack, r, k), (n_stack, n, r), dtype=dtype, scale=0.5)
    scaling = torch.linspace(0.5, 2.0, n_stack).to(dtype)
    idx = torch.tensor(idx)
    compare(lambda *t: multi_scale_lora(*t, scaling, idx), lambda *t: reference_multi_scale_lora(*t, scaling, idx),
            [x, base, a, b], dtype, ["x", "base", "lora_A", "lora_B"])


def test_each_row_equals_its_own_lora_linear_and_scale_zero_is_the_base():
    # the sweep engine's self-checks: a row at scale s is that adapter at scale s; scale 0 is the base
    require_triton()
    torch.manual_seed(0)
    x, w = torch.randn(3, 2, 12), torch.randn(10, 12)
    a, b = torch.randn(1, 4, 12), torch.randn(1, 10, 4)
    base = x @ w.t()
    scales = torch.tensor([0.0, 1.0, 2.5])
    idx = torch.tensor([0, 0, 1, 1, 2, 2])  # entries of one adapter at three scales
    got = multi_scale_lora(x, base, a.expand(3, -1, -1), b.expand(3, -1, -1), scales, idx)
    for row, s in enumerate(scales.tolist()):
        want = reference_lora_linear(x[row], w, None, a[0], b[0], s)
        assert torch.allclose(got[row], want, atol=1e-5), s
    assert torch.equal(got[0], base[0])


def test_gradcheck_float64_on_the_triton_path():
    require_triton()
    torch.manual_seed(0)
    x, base, a, b = leaves((4, 3), (4, 5), (2, 2, 3), (2, 5, 2), dtype=torch.float64)
    scaling, idx = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([1, -1, 0, 1])
    # fast mode (one random projection of the Jacobian): the full one takes 10 s in the interpreter
    assert torch.autograd.gradcheck(lambda *t: MultiScaleLoRAFunction.apply(*t, scaling, idx), (x, base, a, b),
                                    fast_mode=True)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_reference_on_gpu(dtype):
    torch.manual_seed(0)
    x, base, a, b = leaves((4096, 576), (4096, 576), (8, 16, 576), (8, 576, 16), dtype=dtype, device="cuda", scale=0.1)
    scaling = torch.linspace(0, 2, 8, device="cuda", dtype=dtype)
    idx = torch.randint(-1, 8, (4096,), device="cuda")
    compare(lambda *t: multi_scale_lora(*t, scaling, idx), lambda *t: reference_multi_scale_lora(*t, scaling, idx),
            [x, base, a, b], dtype, ["x", "base", "lora_A", "lora_B"])
