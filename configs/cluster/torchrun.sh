#!/bin/bash
# Multi-node DDP through torchrun (Lightning's TorchElasticEnvironment reads RANK/WORLD_SIZE/LOCAL_RANK...).
# Run on every node, from the repository root, with the same MASTER_ADDR:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 GPUS=4 bash configs/cluster/torchrun.sh
set -euo pipefail
make install
.venv/bin/torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "${GPUS:-1}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m genbench bench --model "${MODEL:-ddpm}" --data "${DATA:-cifar10}" --profile "${PROFILE:-paper}" \
    --seed "${SEED:-0}" --accelerator gpu --devices "${GPUS:-1}" --num-nodes "${NNODES:-1}" --precision bf16-mixed
