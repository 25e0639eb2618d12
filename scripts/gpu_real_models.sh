#!/usr/bin/env bash
# Every CUDA check of the real models in one prepared run on a GPU machine, inside one time limit:
#
#   bash scripts/gpu_real_models.sh                      # resnet50 bert_base vit_b16 gpt2 in 480 s
#   MODELS="resnet50 bert_base" LIMIT_S=300 bash scripts/gpu_real_models.sh
#   DEVICE=cpu MODELS=tests/fixtures/vit_images.py bash scripts/gpu_real_models.sh   # the same steps on the CPU
#
# 1. Build, every model at once (the CPU cores shared among them): `pipeline all` (parity checks
#    ONNX Runtime on CUDA), then the fp16 variant, gated on CUDA against eager fp32 and the task
#    metric.
# 2. Benchmark, one model at a time, since timings must not share the GPU: batch 1, 8 and 64 with
#    every engine (`--cuda-graph` adds the CUDA-graph ones), their setup times and cold starts.
#    Then, with the time left, the text models (bert_base, gpt2) at sequence lengths 128 and 512.
# Models go in the order given; the default puts first the two the targets name. Each bench gets
# `--time-limit` of its share of what is left less MARGIN_S (for the step under way at its end),
# so it writes its report whatever it had to leave out; every step also runs under `timeout`, and one that
# fails is logged while the rest go on. After each step the reports so far are copied to $OUT, so
# a run cut short keeps what finished. DEVICE=cpu rehearses the steps (no fp16 variant: it is
# CUDA only), to check a machine's packages before GPU time is spent; its reports say cpu.
# Python: $PYTHON, else python3 (a GPU image with CUDA torch and onnxruntime-gpu; see
# docs/benchmark.md, "On CUDA").
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
MODELS="${MODELS:-resnet50 bert_base vit_b16 gpt2}"
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-gpu-run}"
ROOT="${ROOT:-.}"  # the project folder the artifacts and reports go to
LIMIT_S="${LIMIT_S:-480}"
MARGIN_S="${MARGIN_S:-60}"
SWEEP_BUDGET="${SWEEP_BUDGET:-60}"
BENCH_ARGS=(--root "$ROOT" --device "$DEVICE" --served off --batch-sizes 1,8,64 --sweep-budget "$SWEEP_BUDGET" --budget 0.3 --rounds 3)
[ "$DEVICE" = cuda ] && BENCH_ARGS+=(--cuda-graph)
[ -n "${ENGINES:-}" ] && BENCH_ARGS+=(--engines "$ENGINES")

case "$DEVICE" in
    cuda)
        if ! "$PY" -c 'import sys, torch, onnxruntime as o; sys.exit(0 if torch.cuda.is_available() and "CUDAExecutionProvider" in o.get_available_providers() else 1)'; then
            echo "error: $PY has no CUDA torch or no CUDA provider in onnxruntime; run make bench for the CPU report, or DEVICE=cpu to rehearse" >&2
            exit 1
        fi
        ;;
    cpu) echo "DEVICE=cpu: a rehearsal on the CPU; no fp16 variant, and every report says cpu" ;;
    *) echo "error: DEVICE is cuda or cpu, not $DEVICE" >&2; exit 2 ;;
esac
# A GPU image with no registry gets what it lacks as wheels (docs/benchmark.md, "On CUDA"): a
# package still missing is named now, before any GPU time goes on steps that would all fail.
"$PY" -m pipeline --help >/dev/null || exit 1
if ! "$PY" -c 'import transformers, tokenizers, onnxruntime.transformers.float16'; then
    echo "error: $PY lacks transformers, tokenizers or onnxruntime.transformers, which the real models and their fp16 variant need; install their wheels" >&2
    exit 1
fi

mkdir -p "$OUT/logs" "$OUT/reports"
began=$SECONDS
left() { echo $((LIMIT_S - (SECONDS - began))); }
name() { basename "${1%.py}"; }
text() { case "$(name "$1")" in bert_base | gpt2) return 0 ;; *) return 1 ;; esac; }
# The benches share what is left: weight 2 for each model's bench, 1 for each sequence length, so
# the first model cannot spend the others' time; what one leaves unused goes to those after it.
weight=0
for model in $MODELS; do weight=$((weight + 2)); if text "$model"; then weight=$((weight + 2)); fi; done
limit() { local s=$((($(left) - MARGIN_S) * $1 / weight)); echo $((s > 10 ? s : 10)); }  # a bench's --time-limit, at weight $1
# step LOG CAP ARGS...: one command under timeout (its cap, or the time left), logged; skipped with too little time left.
step() {
    local log="$1" cap="$2"; shift 2
    local remaining start rc
    remaining=$(left)
    if [ "$remaining" -lt 20 ]; then
        echo "$(date -u +%H:%M:%S) skipped, ${remaining}s left: $*" | tee -a "$OUT/steps.txt"
        return 0
    fi
    start=$SECONDS
    timeout "$((cap < remaining ? cap : remaining))" "$@" >>"$OUT/logs/$log" 2>&1
    rc=$?
    echo "$(date -u +%H:%M:%S) rc=$rc $((SECONDS - start))s: $*" | tee -a "$OUT/steps.txt"
}
keep() {  # the reports and manifests so far, into $OUT (plain files: what is there when the run ends comes back)
    for model in $MODELS; do
        [ -d "$ROOT/reports/$(name "$model")" ] && cp -r "$ROOT/reports/$(name "$model")" "$OUT/reports/"
        [ -f "$ROOT/artifacts/$(name "$model")/manifest.json" ] && cp "$ROOT/artifacts/$(name "$model")/manifest.json" "$OUT/reports/$(name "$model")/"
    done
    return 0
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU (DEVICE=$DEVICE)"; } | tee "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee "$OUT/commit.txt"
count=$(wc -w <<<"$MODELS")
threads=$(($(nproc) / count > 0 ? $(nproc) / count : 1))
for model in $MODELS; do
    OMP_NUM_THREADS=$threads step "$(name "$model")-all.log" 300 "$PY" -m pipeline all --model "$model" --root "$ROOT" &
done
wait
keep
if [ "$DEVICE" = cuda ]; then
    for model in $MODELS; do
        OMP_NUM_THREADS=$threads step "$(name "$model")-fp16.log" 200 "$PY" -m pipeline variants --model "$model" --root "$ROOT" --fp16 &
    done
    wait
    keep
fi
for model in $MODELS; do
    step "$(name "$model")-bench.log" 600 "$PY" -m pipeline bench --model "$model" "${BENCH_ARGS[@]}" --time-limit "$(limit 2)"
    weight=$((weight - 2))
    keep
done
for model in $MODELS; do
    text "$model" || continue
    for length in 128 512; do
        step "$(name "$model")-seq$length.log" 300 "$PY" -m pipeline bench --model "$model" "${BENCH_ARGS[@]}" \
            --no-cold-start --length "seq=$length" --time-limit "$(limit 1)"
        weight=$((weight - 1))
        keep
    done
done
echo "done in $((SECONDS - began))s of ${LIMIT_S}s; reports in $OUT/reports, each step in $OUT/steps.txt"
