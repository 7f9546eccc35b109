"""RMSNorm kernel against HF's formula (the reference): fp32 and fp16, odd widths, every gradient."""

import pytest
import torch

from harness.train.kernels.rms_norm import RMSNormFunction, reference_rms_norm, rms_norm
from tests.train.kernels.kernel_support import DTYPES, compare, gpu, leaves, needs_cuda, require_triton

SHAPES = [(1, 1), (3, 37), (2, 5, 64), (129, 24)]  # one element, odd width, batch dims, rows past one block


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype):
    require_triton()
    torch.manual_seed(0)
    x, w = leaves(shape, shape[-1:], dtype=dtype)
    compare(lambda a, b: rms_norm(a, b, 1e-6), lambda a, b: reference_rms_norm(a, b, 1e-6), [x, w], dtype, ["x", "weight"])


def test_gradcheck_float64_on_the_triton_path():
    # the interpreter runs float64 kernels (the accumulators follow the input dtype), so this checks the
    # Triton backward itself, not a stand-in
    require_triton()
    torch.manual_seed(0)
    x, w = leaves((2, 3, 7), (7,), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: RMSNormFunction.apply(a, b, 1e-5), (x, w))


def test_reference_path_is_the_reference():
    x, w = torch.randn(4, 8), torch.randn(8)
    assert torch.equal(rms_norm(x, w, 1e-6, use_triton=False), reference_rms_norm(x, w, 1e-6))


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_on_gpu(dtype):
    torch.manual_seed(0)
    x, w = leaves((4, 2048, 576), (576,), dtype=dtype, device="cuda")
    compare(lambda a, b: rms_norm(a, b, 1e-5), lambda a, b: reference_rms_norm(a, b, 1e-5), [x, w], dtype, ["x", "weight"])
