#!/usr/bin/env bash
# GPU check: every family's paper profile for a fixed number of images on one GPU with bf16-mixed; prints
# images/s, achieved TFLOP/s and the loss curve, and writes benchmarks/gpu_check.{md,json}.
# Usage: bash benchmarks/gpu_check.sh [extra arguments of benchmarks/gpu_check.py]
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory install
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
WANDB_MODE=disabled .venv/bin/python benchmarks/gpu_check.py --accelerator gpu --precision bf16-mixed "$@"
