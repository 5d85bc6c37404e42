#!/usr/bin/env bash
# GTPO multi-turn TIR with verl, gtpo's sandbox as the tool.
#
# One node, 8 GPUs:
#   TRAIN=path/to/train.jsonl VAL=path/to/val.jsonl bash examples/verl/run_gtpo_tir.sh
# N nodes: start a Ray cluster first (`ray start --head` on node 0, `ray start --address=HEAD:6379` on the
# others, gtpo and verl installed on every node), then on node 0:
#   NNODES=N TRAIN=... VAL=... bash examples/verl/run_gtpo_tir.sh
# Extra arguments are Hydra overrides, e.g. `actor_rollout_ref.model.path=/models/my-model`.
# This is the command that was composed and checked on CPU (tests/test_verl.py); it has not been run on GPUs.
set -euo pipefail

export GTPO_VERL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GTPO_DATA_DIR="${GTPO_DATA_DIR:-$HOME/data/gtpo_verl}"
# Registers algorithm.adv_estimator=gtpo in this process; gtpo_tir.yaml passes it to every Ray process.
export VERL_USE_EXTERNAL_MODULES=gtpo.integrations.verl

if [[ ! -f "$GTPO_DATA_DIR/train.parquet" ]]; then
  python "$GTPO_VERL_DIR/prepare_data.py" --train "${TRAIN:?set TRAIN to the training problems}" \
    --val "${VAL:?set VAL to the validation problems}" --out "$GTPO_DATA_DIR"
fi

python -m verl.trainer.main_ppo \
  --config-path "$GTPO_VERL_DIR" --config-name gtpo_tir \
  algorithm.adv_estimator=gtpo \
  trainer.nnodes="${NNODES:-1}" \
  trainer.n_gpus_per_node="${GPUS_PER_NODE:-8}" \
  "$@"
