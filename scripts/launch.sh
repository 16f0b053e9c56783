#!/usr/bin/env bash
# One machine, one process per GPU, under `accelerate launch` with a runner from configs/accelerate/.
#   scripts/launch.sh RUNNER PHASE [HYDRA OVERRIDES...]
#   scripts/launch.sh ddp distill experiment=altclip_m9_distill data.corpora='[{lang: zh, path: /data/en-zh.tsv}]'
#   NUM_PROCESSES=4 scripts/launch.sh deepspeed_zero3 contrastive experiment=altclip_m9_contrastive ...
# RUNNER: ddp | deepspeed_zero2 | deepspeed_zero3 | fsdp. NUM_PROCESSES defaults to the visible GPUs.
# Everything after PHASE is passed to `altclip-train PHASE` unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
    sed -n '2,7p' "$0" >&2
    exit 2
fi
runner=$1 phase=$2
shift 2
config=configs/accelerate/$runner.yaml
if [ ! -f "$config" ]; then
    echo "launch.sh: no runner '$runner' (choose one of: $(cd configs/accelerate && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' '))" >&2
    exit 2
fi
if [ -z "${NUM_PROCESSES:-}" ]; then
    NUM_PROCESSES=$(nvidia-smi -L 2>/dev/null | wc -l)
    if [ "$NUM_PROCESSES" -lt 1 ]; then
        echo "launch.sh: no GPU visible; set NUM_PROCESSES" >&2
        exit 2
    fi
fi
exec accelerate launch --config_file "$config" --num_processes "$NUM_PROCESSES" --num_machines 1 \
    --main_process_port "${MAIN_PROCESS_PORT:-0}" -m altclip_train "$phase" "$@"
