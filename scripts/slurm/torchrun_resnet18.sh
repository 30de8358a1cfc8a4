#!/bin/bash
# The same run with torchrun instead of SLURM (Lightning detects torchrun's environment too).
# Run this on every node, with NODE_RANK=0..NNODES-1 and MASTER_ADDR set to node 0's address:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash scripts/slurm/torchrun_resnet18.sh
#
# --nproc_per_node must equal --trainer.devices and --nnodes must equal --trainer.num_nodes.
set -euo pipefail
CONFIG=${CONFIG:-resnet18_imagenet_sign_soft_hinge}
DATA_DIR=${DATA_DIR:-/datasets/imagenet-256}
NNODES=${NNODES:-1}
GPUS=${GPUS:-4}

torchrun --nnodes="$NNODES" --nproc_per_node="$GPUS" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    -m lightning_ftprop.cli fit \
    --config "$CONFIG" \
    --data.data_dir="$DATA_DIR" \
    --trainer.accelerator=gpu \
    --trainer.devices="$GPUS" \
    --trainer.num_nodes="$NNODES" \
    --trainer.strategy=ddp \
    --trainer.default_root_dir="runs/$CONFIG"
