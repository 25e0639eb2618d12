#!/usr/bin/env bash
# The whole CUDA run in one command, on a machine with an NVIDIA GPU:
#
#   bash scripts/bench_cuda.sh                       # default model, default bench
#   MODEL=digits_cnn bash scripts/bench_cuda.sh --budget 0.3 --no-cold-start
#
# Which Python: $PYTHON if set; else the project's .venv if its torch has CUDA; else the
# current python3 if it has CUDA torch and onnxruntime-gpu (a GPU image with no package
# registry); else `make setup`. It says which one it uses. Then it builds the artifacts
# (parity checks ONNX Runtime on CUDA with the precision the archive serves), runs the CUDA
# tests, and writes reports/<model>/latency.{json,md,png} with the CPU and CUDA engines side
# by side, ONNX Runtime's CUDA graphs next to PyTorch's. Extra arguments go to the bench.
# Nothing is labelled CUDA unless it ran on the GPU: without one it stops with an error.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${MODEL:-simple_nn}"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU here (nvidia-smi finds none); run make bench for the CPU report" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

has_cuda() { "$1" -c 'import sys, torch, onnxruntime as o; sys.exit(0 if torch.cuda.is_available() and "CUDAExecutionProvider" in o.get_available_providers() else 1)' 2>/dev/null; }
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"; echo "using \$PYTHON: $PY"
elif [ -x .venv/bin/python ] && has_cuda .venv/bin/python; then
    PY=.venv/bin/python; echo "using the project's environment: $PY"
elif has_cuda "$(command -v python3)"; then
    PY="$(command -v python3)"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "using the current interpreter, $PY (CUDA torch and onnxruntime-gpu already installed; no setup run)"
else
    make setup
    PY=.venv/bin/python; echo "using the project's environment: $PY"
fi
if ! has_cuda "$PY"; then
    echo "error: $PY lacks a CUDA torch or onnxruntime-gpu's CUDA provider ($("$PY" -c 'import torch; print("torch", torch.__version__)'))." >&2
    echo "  install the CUDA build of the pinned torch, then rerun:" >&2
    echo "  $PY -m pip install --force-reinstall --no-deps torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130" >&2
    exit 1
fi

"$PY" -m pipeline all --model "$MODEL"
"$PY" -m pytest -q -m cuda tests
"$PY" -m pipeline bench --model "$MODEL" --device all --cuda-graph --served off "$@"
echo "reports: reports/$(basename "${MODEL%.py}")/latency.md"
