#!/usr/bin/env bash
# The whole CUDA benchmark in one command, on a machine with an NVIDIA GPU:
#
#   bash scripts/bench_cuda.sh            # default model
#   MODEL=digits_cnn bash scripts/bench_cuda.sh
#
# It sets up the environment (a CUDA build of torch; onnxruntime-gpu reuses torch's
# CUDA 13 and cuDNN 9 libraries), builds the artifacts, runs the CUDA tests, and
# writes reports/<model>/latency.{json,md,png} with the CPU and CUDA engines side by
# side (ONNX Runtime with IO binding, and with CUDA graphs). Nothing is labelled CUDA
# unless it ran on the GPU: without one it stops with an error.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${MODEL:-simple_nn}"
PY="${VENV:-.venv}/bin/python"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU here (nvidia-smi finds none); run make bench for the CPU report" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

make setup
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: the installed torch has no CUDA support ($("$PY" -c 'import torch; print(torch.__version__)'))." >&2
    echo "  install the CUDA build of the pinned version, then rerun:" >&2
    echo "  $PY -m pip install --force-reinstall --no-deps torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130" >&2
    exit 1
fi

make export MODEL="$MODEL"
"$PY" -m pytest -q -m cuda tests
"$PY" -m pipeline bench --model "$MODEL" --device all --cuda-graph "$@"
echo "reports: reports/$(basename "${MODEL%.py}")/latency.md"
