"""Fused LoRA linear against PEFT's formula: fp32 and fp16, odd sizes, ranks 1..16, with and without a
base bias; gradients of x, A, B (and of W and the bias, which LoRA leaves frozen but the kernel supports)."""

import pytest
import torch

from harness.train.kernels.lora_linear import LoRALinearFunction, lora_linear, reference_lora_linear
from tests.train.kernels.kernel_support import DTYPES, compare, gpu, leaves, needs_cuda, require_triton

# (leading dims, in features K, out features N, rank r): one row, odd everything, past one tile in M/N/K
CASES = [((1,), 1, 1, 1), ((3, 7), 37, 45, 5), ((2, 33), 65, 70, 16), ((130,), 40, 24, 8)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, bias, dtype):
    require_triton()
    torch.manual_seed(0)
    lead, k, n, r = case
    x, w, a, b, bb = leaves((*lead, k), (n, k), (r, k), (n, r), (n,), dtype=dtype, scale=0.5)
    names = ["x", "weight", "lora_A", "lora_B"]
    if bias:
        compare(lambda *t: lora_linear(t[0], t[1], t[4], t[2], t[3], 1.7),
                lambda *t: reference_lora_linear(t[0], t[1], t[4], t[2], t[3], 1.7), [x, w, a, b, bb], dtype,
                [*names, "bias"])
    else:
        compare(lambda *t: lora_linear(t[0], t[1], None, t[2], t[3], 1.7),
                lambda *t: reference_lora_linear(t[0], t[1], None, t[2], t[3], 1.7), [x, w, a, b], dtype, names)


def test_frozen_base_gets_no_gradient_and_fp32_adapter_grads_stay_fp32():
    # the LoRA case: W frozen; A and B in float32 under float16 activations (PEFT's autocast_adapter_dtype)
    require_triton()
    torch.manual_seed(0)
    x = torch.randn(5, 16, dtype=torch.float16, requires_grad=True)
    w = torch.randn(8, 16, dtype=torch.float16)
    a, b = torch.randn(4, 16, requires_grad=True), torch.randn(8, 4, requires_grad=True)
    lora_linear(x, w, None, a, b, 0.5).sum().backward()
    assert w.grad is None and a.grad.dtype == torch.float32 and b.grad.dtype == torch.float32


def test_gradcheck_float64_on_the_triton_path():
    require_triton()
    torch.manual_seed(0)
    x, w, a, b, bb = leaves((2, 3, 5), (4, 5), (2, 5), (4, 2), (4,), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *t: LoRALinearFunction.apply(t[0], t[1], t[4], t[2], t[3], 0.5),
                                    (x, w, a, b, bb))


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_on_gpu(dtype):
    torch.manual_seed(0)
    x, w, a, b = leaves((4, 2048, 576), (1536, 576), (16, 576), (1536, 16), dtype=dtype, device="cuda", scale=0.1)
    compare(lambda *t: lora_linear(t[0], t[1], None, t[2], t[3], 2.0),
            lambda *t: reference_lora_linear(t[0], t[1], None, t[2], t[3], 2.0), [x, w, a, b], dtype,
            ["x", "weight", "lora_A", "lora_B"])
