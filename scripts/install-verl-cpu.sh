#!/usr/bin/env sh
# verl 0.9.1 and what importing its protocol, trainer, agent loop and reward loop needs, on CPU, into .venv,
# keeping the project's torch and transformers (docs/verl.md says why --no-deps). Part of the test command.
# TransferQueue is the v1 trainer's store, which gtpo's replay buffer (verl_sampler) reads and writes.
# pip prints a "verl requires transformers<5.11" conflict notice here and exits 0: that is expected.
set -eu
PIP="${PIP:-.venv/bin/pip}"
"$PIP" install -q --no-deps verl==0.9.1 tensordict==0.10.0 pyvers==0.1.0 transferqueue==0.1.11
"$PIP" install -q ray==2.60.0 hydra-core==1.3.8 codetiming cloudpickle importlib_metadata orjson cachetools \
  fastapi uvicorn aiohttp torchdata==0.11.0 pyzmq msgspec psutil prometheus_client
