#!/usr/bin/env bash
# GPU checks, one short run on a machine with CUDA (about 5 minutes on an H100):
#   1. the CUDA-only tests (CPU and CUDA paths agree: KNN-Shapley, batched models, structural embedding);
#   2. bench/gpu_check.py: 100k-node structural disparity, TMC on 10,000 points to a standard-error target,
#      KNN-Shapley 100k x 1k (and 1M x 1k on the device), each next to the CPU where it fits the time;
#      Data-OOB on 10^6 rows: trees over every CPU core (scikit-learn's, CPU only) and logistic models on the GPU.
# Sets up .venv with the CUDA build of torch if it is not there. Usage: bash bench/gpu_check.sh [extra args]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet 'torch>=2.13,<2.15'
    .venv/bin/pip install --quiet -e '.[test]'
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
.venv/bin/pytest -q -p no:cacheprovider -k cuda tests/valuation
.venv/bin/python bench/gpu_check.py --device cuda:0 "$@"
