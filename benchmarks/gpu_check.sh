#!/usr/bin/env bash
# The GPU figures of gtpo in one run (< 10 minutes on one H200): engine tests on CUDA, generation throughput
# (engine vs HFSampler vs model.generate vs transformers' continuous batching), the training update (packed,
# against a plain HF loop, and 64 x 8k tokens for peak memory), and a
# short end-to-end run. Run from the repository root (see ../shared/GPU.md for the environment):
#   bash benchmarks/gpu_check.sh                       # on the GPU machine; results under $OUT (or /tmp)
#   DEVICE=cpu ARCH=small QUICK=1 bash benchmarks/gpu_check.sh   # a dry run of the script on a CPU
# Every part has its own time limit and the script goes on after a failure; the summary comes last.
set -u
OUT=${OUT:-/tmp/gtpo_gpu_check}
mkdir -p "$OUT"
ARCH=${ARCH:-qwen2.5-1.5b}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
PEAK=""
[ "$DEVICE" = cuda ] && PEAK="--peak-tflops ${PEAK_TFLOPS:-790}"  # H200 dense bf16, measured
status=()

part() {  # part NAME SECONDS COMMAND...: run with a time limit, keep its log, note its exit status
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  status+=("$name: exit $rc in $((SECONDS - start))s")
}

if [ "$QUICK" = 1 ]; then
  ROWS="8 16"; PROMPT=32; NEW=16; TRAIN_STEPS=1; UPDATE_ARGS="--dry-run"
else
  ROWS="64 256"; PROMPT=256; NEW=128; TRAIN_STEPS=4; UPDATE_ARGS="--memory-check"
fi

$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" | tee "$OUT/versions.txt"

# Most wanted first (the engine's and the update's GPU figures); the limits add up to under 10 minutes.
part generation 180 $PY benchmarks/generation.py --arch "$ARCH" --device "$DEVICE" --rows $ROWS \
  --prompt $PROMPT --new $NEW --json "$OUT/generation.json"
part update 200 $PY benchmarks/model_throughput.py --arch "$ARCH" --device "$DEVICE" $UPDATE_ARGS $PEAK
[ "$DEVICE" = cuda ] && part engine_tests 90 $PY -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/test_engine.py
part transformers_cb 60 $PY benchmarks/generation.py --arch "$ARCH" --device "$DEVICE" --rows ${ROWS##* } \
  --prompt $PROMPT --new $NEW --repeats 1 --backends engine --transformers-cb --json "$OUT/generation_cb.json"
part train_tiny 60 $PY -m gtpo train --device "$DEVICE" --steps $TRAIN_STEPS --eval-every 0 \
  --output-dir "$OUT/train_tiny" --overwrite --no-progress

echo
echo "=== summary"
for s in "${status[@]}"; do echo "  $s"; done
grep -h -E "tokens/s|/ |ceiling|log-probs|MFU|ratio|peak|memory check" "$OUT"/generation.log "$OUT"/transformers_cb.log "$OUT"/update.log 2>/dev/null
[ -f "$OUT/train_tiny/metrics.jsonl" ] && tail -n 1 "$OUT/train_tiny/metrics.jsonl" | $PY -c \
  "import json,sys; m=json.loads(sys.stdin.read()); print('  train_tiny last step:', {k: round(v, 3) for k, v in m.items() if k.startswith('perf/')})"
