#!/usr/bin/env bash
# Every CUDA check of the real models in one prepared run, on a GPU machine:
#
#   bash scripts/gpu_real_models.sh                      # resnet50 vit_b16 bert_base gpt2
#   MODELS="resnet50 bert_base" SWEEP_BUDGET=40 bash scripts/gpu_real_models.sh
#
# For each model: build and verify the fp32 chain (parity on ONNX Runtime CUDA), build and gate
# the fp16 variant (parity against eager fp32 and the task metric, on CUDA), then the CUDA
# benchmark at batch 1, 8 and 64 with every engine (`--cuda-graph` adds the CUDA-graph ones),
# their setup times and cold starts; a text model (bert_base, gpt2) again at sequence lengths
# 128 and 512 (`--length`), without cold starts. Each step runs under its own timeout, so one slow
# compile cannot take the others' time; a step that fails is reported and the rest go on.
# Reports land in reports/<model>/ and, with the manifests and the log, in $OUT (a tarball).
# Python: $PYTHON, else python3 (a GPU image with CUDA torch and onnxruntime-gpu; see
# docs/benchmark.md, "On CUDA"). Without a GPU it stops with an error.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
MODELS="${MODELS:-resnet50 vit_b16 bert_base gpt2}"
OUT="${OUT:-gpu-run}"
SWEEP_BUDGET="${SWEEP_BUDGET:-60}"
ENGINES_FLAG=${ENGINES:+--engines "$ENGINES"}

if ! "$PY" -c 'import sys, torch, onnxruntime as o; sys.exit(0 if torch.cuda.is_available() and "CUDAExecutionProvider" in o.get_available_providers() else 1)'; then
    echo "error: $PY has no CUDA torch or no CUDA provider in onnxruntime; run make bench for the CPU report" >&2
    exit 1
fi
# A GPU image with no registry gets what it lacks as wheels (docs/benchmark.md, "On CUDA"): a
# package still missing is named now, before any GPU time goes on steps that would all fail.
"$PY" -m pipeline --help >/dev/null || exit 1
if ! "$PY" -c 'import transformers, tokenizers, onnxruntime.transformers.float16'; then
    echo "error: $PY lacks transformers, tokenizers or onnxruntime.transformers, which the real models and their fp16 variant need; install their wheels" >&2
    exit 1
fi
mkdir -p "$OUT"
log="$OUT/run.log"
step() {  # step SECONDS ARGS...: one command under its timeout, its outcome logged
    local limit="$1"; shift
    local began=$SECONDS
    timeout "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "$(date -u +%H:%M:%S) rc=$rc $((SECONDS - began))s: $*" | tee -a "$OUT/steps.txt"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee "$OUT/commit.txt"
for model in $MODELS; do
    step 240 "$PY" -m pipeline all --model "$model"
    step 180 "$PY" -m pipeline variants --model "$model" --fp16
    # shellcheck disable=SC2086  # ENGINES_FLAG is empty or two words
    step 420 "$PY" -m pipeline bench --model "$model" --device cuda --cuda-graph --served off \
        --batch-sizes 1,8,64 --sweep-budget "$SWEEP_BUDGET" --budget 0.3 --rounds 3 $ENGINES_FLAG
    case "$model" in
        bert_base | gpt2)
            for length in 128 512; do
                # shellcheck disable=SC2086
                step 300 "$PY" -m pipeline bench --model "$model" --device cuda --cuda-graph --served off --no-cold-start \
                    --length "seq=$length" --batch-sizes 1,8,64 --sweep-budget "$SWEEP_BUDGET" --budget 0.3 --rounds 3 $ENGINES_FLAG
            done
            ;;
    esac
done
tar czf "$OUT/reports.tgz" reports artifacts/*/manifest.json "$log" "$OUT/steps.txt" 2>/dev/null
echo "reports: $OUT/reports.tgz"
