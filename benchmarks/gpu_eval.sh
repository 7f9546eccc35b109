#!/usr/bin/env bash
# The GPU figures of the evaluation path (issues 13 and 17) in one script, for one H100 or H200 (not yet
# run on one: the session that wrote it had no GPU). A dry run on the CPU, small:
#   CUDA_DEVICE=cpu N_PROMPTS=8 LIMIT=2 BATCHES=16 bash benchmarks/gpu_eval.sh CONFIG_DIR
# Run from the repository root; nothing here needs the network.
#
#   bash benchmarks/gpu_eval.sh CONFIG_DIR 2>&1 | tee gpu_eval.log
#
# CONFIG_DIR: a SmolLM2-135M config + tokenizer directory (the weights are not read: the device machine
# has no network and the 538 MB weights do not travel; the time of a forward does not depend on their
# values). The script writes random weights and a random LoRA adapter (benchmarks/random_base.py) and
# times, in this order (about 10 minutes on a GPU):
#   1. the fast generation path against model.generate and bare batched forward passes (eval_speed.py);
#   2. the 6-scale sweep against merge-per-scale, and against the base model alone (sweep.py);
#   3. verifying a drafted answer in one forward against decoding it (draft_verify.py).
# Record the output and the GPU's name in the README's Benchmarks section.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: bash benchmarks/gpu_eval.sh CONFIG_DIR   (a model directory's config.json and tokenizer)" >&2
  exit 2
fi
# the project's venv where there is one, else the machine's python3 (a device machine's own packages;
# the repository root is on the benchmarks' sys.path, so the harness need not be installed there)
if [[ -z ${PY:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE=${CUDA_DEVICE:-cuda}
WORK=${WORK:-$(mktemp -d /tmp/gpu-eval.XXXXXX)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HARNESS_HOME="$WORK/home"   # nothing cached from an earlier run

if [[ $DEVICE == cuda* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
$PY benchmarks/random_base.py "$1" "$WORK"

echo "== 1. generation: fast path vs model.generate vs bare forward passes (random weights: every row runs to the end)"
timeout 420 $PY benchmarks/eval_speed.py --base "$WORK/base" --device "$DEVICE" --no-lmeval --n "${N_PROMPTS:-256}" --batch-size 64

echo "== 2. the sweep (base + 5 scales, shared batches) vs merge per scale, and vs the base model alone"
timeout 600 $PY benchmarks/sweep.py --base "$WORK/base" --adapter "$WORK/adapter" \
  --limit "${LIMIT:-32}" --batch-size 16

echo "== 3. drafting from the neighbouring scale: verify 32 tokens in one forward vs 32 decode steps"
timeout 300 $PY benchmarks/draft_verify.py --base "$WORK/base" --device "$DEVICE" --batch "${BATCHES:-16,96,256}" --threads 1

echo "targets: fast path >= 1.5x lm-eval's HF backend (lm-eval is not on the device machine: compare with"
echo "model.generate, which lm-eval's HFLM wraps) and >= 0.5x the bare forward's tokens/s (issue 17); the sweep"
echo "<= 0.4x merge-per-scale (issue 13) and <= 2x the base alone (issue 17)"
