#!/usr/bin/env sh
# verl 0.9.1 and what importing its protocol, trainer, agent loop and reward loop needs, on CPU, into .venv,
# keeping the project's torch and transformers (docs/verl.md says why --no-deps). Part of the test command.
# TransferQueue is the v1 trainer's store, which gtpo's replay buffer (verl_sampler) reads and writes.
#
# Order matters for what pip prints. verl's metadata asks for transformers<5.11 (we keep ours) and for packages
# the CPU tests never import (pybind11, pylatexenc, tensorboard, wandb). pip checks an installed package's
# requirements whenever an install touches one of its dependencies, and then prints an alarming
# "ERROR: pip's dependency resolver ..." while exiting 0. So verl's import-time dependencies go in first, while
# verl is not installed yet, and verl itself last with --no-deps, for which pip runs no check. `pip check`
# still lists these mismatches: they are known and harmless on CPU (tests/test_verl.py exercises verl).
set -eu
PIP="${PIP:-.venv/bin/pip}"
"$PIP" install -q ray==2.60.0 hydra-core==1.3.8 codetiming cloudpickle importlib_metadata orjson cachetools \
  fastapi uvicorn aiohttp torchdata==0.11.0 pyzmq msgspec psutil prometheus_client
"$PIP" install -q --no-deps verl==0.9.1 tensordict==0.10.0 pyvers==0.1.0 transferqueue==0.1.11
