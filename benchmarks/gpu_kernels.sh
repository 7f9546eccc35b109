#!/usr/bin/env bash
# The GPU checks and benchmarks of train/kernels, in one script, for one H100 or H200 (not yet run: the
# session that wrote it had no GPU). Run from the repository root; nothing here needs the network.
#
#   bash benchmarks/gpu_kernels.sh [RANDOM_INIT_DIR] 2>&1 | tee gpu_kernels.log
#
# RANDOM_INIT_DIR: a SmolLM2-135M config + tokenizer directory, for when the weights are not on the machine
# (step times do not depend on the weights' values). Record the output and the GPU name in the README's
# "Kernels" section.
set -euo pipefail
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET  # compiled kernels, not the interpreter
INIT=()
if [[ $# -ge 1 ]]; then INIT=(--random-init "$1"); fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

echo "== 1. correctness: compiled kernels vs the references (fp32, fp16, bf16) and apply_kernels on a GPU"
HARNESS_TEST_GPU=1 timeout 600 $PY -m pytest -q -m gpu tests/train/kernels/test_rms_norm.py tests/train/kernels/test_rope.py \
  tests/train/kernels/test_swiglu.py tests/train/kernels/test_lora_linear.py tests/train/kernels/test_linear_cross_entropy.py \
  tests/train/kernels/test_multi_scale_lora.py tests/train/kernels/test_apply.py

echo "== 2. per op, SmolLM2-135M shapes, bf16, 8 x 2048 tokens: each Triton kernel vs its reference and HF"
timeout 600 $PY benchmarks/kernel_ops.py --tokens 16384 --reps 20
timeout 300 $PY benchmarks/kernel_ops.py --tokens 16384 --reps 20 --dtype float32 --ops linear_cross_entropy,lora_linear

echo "== 3. training step: HF + PEFT vs --kernels (and Liger where installed), sequence 2048, r 16, all linear, bf16"
timeout 900 $PY benchmarks/train_step.py "${INIT[@]}" --kernels --seq-len 2048 --batch 8 --steps 10 --warmup 3
timeout 600 $PY benchmarks/train_step.py "${INIT[@]}" --kernels --seq-len 512 --batch 32 --steps 10 --warmup 3

echo "targets (issue 18): train step >= 1.5x HF+PEFT tokens/s at <= 0.6x its peak memory; >= 1.0x Liger at no more"
echo "memory; each Triton kernel at least its reference's speed"
