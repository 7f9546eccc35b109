"""SwiGLU kernel against ``silu(gate) * up``: fp32 and fp16, odd sizes, both gradients."""

import pytest
import torch

from harness.train.kernels.swiglu import SwiGLUFunction, reference_swiglu, swiglu
from tests.train.kernels.kernel_support import DTYPES, compare, gpu, leaves, needs_cuda, require_triton

SHAPES = [(1,), (3, 37), (2, 5, 129), (1031,)]  # one element, odd, batch dims, past one 1024 block


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype):
    require_triton()
    torch.manual_seed(0)
    g, u = leaves(shape, shape, dtype=dtype, scale=3.0)
    compare(swiglu, reference_swiglu, [g, u], dtype, ["gate", "up"])


def test_gradcheck_float64_on_the_triton_path():
    require_triton()
    torch.manual_seed(0)
    g, u = leaves((3, 5), (3, 5), dtype=torch.float64)
    assert torch.autograd.gradcheck(SwiGLUFunction.apply, (g, u))


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_on_gpu(dtype):
    torch.manual_seed(0)
    g, u = leaves((4, 2048, 1536), (4, 2048, 1536), dtype=dtype, device="cuda")
    compare(swiglu, reference_swiglu, [g, u], dtype, ["gate", "up"])
