#!/usr/bin/env bash
# The GPU figures of gtpo in one run (< 8 minutes on one H200): engine tests on CUDA, generation throughput
# (engine vs HFSampler vs model.generate vs transformers' continuous batching), the training update, and a
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
  ROWS="8 16"; PROMPT=32; NEW=16; TRAIN_STEPS=1
else
  ROWS="64 256"; PROMPT=256; NEW=128; TRAIN_STEPS=4
fi

$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" | tee "$OUT/versions.txt"

[ "$DEVICE" = cuda ] && part engine_tests 150 $PY -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/test_engine.py
part generation 300 $PY benchmarks/generation.py --arch "$ARCH" --device "$DEVICE" --rows $ROWS \
  --prompt $PROMPT --new $NEW --json "$OUT/generation.json"
part transformers_cb 120 $PY benchmarks/generation.py --arch "$ARCH" --device "$DEVICE" --rows ${ROWS##* } \
  --prompt $PROMPT --new $NEW --repeats 1 --backends engine --transformers-cb --json "$OUT/generation_cb.json"
part update 240 $PY benchmarks/model_throughput.py --arch "$ARCH" --device "$DEVICE"
part train_tiny 150 $PY -m gtpo train --device "$DEVICE" --steps $TRAIN_STEPS --eval-every 0 \
  --output-dir "$OUT/train_tiny" --overwrite --no-progress

echo
echo "=== summary"
for s in "${status[@]}"; do echo "  $s"; done
grep -h -E "tokens/s|/ |ceiling|log-probs|MFU|ratio|peak" "$OUT"/generation.log "$OUT"/transformers_cb.log "$OUT"/update.log 2>/dev/null
[ -f "$OUT/train_tiny/metrics.jsonl" ] && tail -n 1 "$OUT/train_tiny/metrics.jsonl" | $PY -c \
  "import json,sys; m=json.loads(sys.stdin.read()); print('  train_tiny last step:', {k: round(v, 3) for k, v in m.items() if k.startswith('perf/')})"
