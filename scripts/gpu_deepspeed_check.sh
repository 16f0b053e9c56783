#!/usr/bin/env bash
# GPU check: one DeepSpeed ZeRO-2 training step of each phase on one GPU with bf16, on the tiny offline
# models (experiment=tiny), then load both exports with plain transformers.
#   scripts/gpu_deepspeed_check.sh [OUT_DIR]            (default outputs/gpu_deepspeed_check)
# On a lent device machine DeepSpeed travels as a wheel (see the device notes): download it here into
# .whl/ (pip download --no-deps --only-binary=:all: ... deepspeed==<version>, plus hjson, ninja, py-cpuinfo,
# msgpack if missing there), carry .whl, and install it before running this script.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/gpu_deepspeed_check}
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export ALTCLIP_CACHE_DIR=${ALTCLIP_CACHE_DIR:-$out/cache}
PY=${PYTHON:-python3}
rm -rf "$out/distill" "$out/contrastive"
mkdir -p "$out"

$PY - <<'PY'
import deepspeed, torch
assert torch.cuda.is_available(), "no CUDA device"
print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PY

common=(trainer.max_steps=1 trainer.mixed_precision=bf16 trainer.save_every=1 trainer.eval_at_start=false
        trainer.eval_every=0 trainer.log_every=1 logger=jsonl)
launch=($PY -m accelerate.commands.launch --config_file configs/accelerate/deepspeed_zero2.yaml
        --num_processes 1 --num_machines 1 --main_process_port 0 -m altclip_train)

"${launch[@]}" distill experiment=tiny run_dir="$out/distill" "${common[@]}" 2>&1 | tee "$out/distill.log"
"${launch[@]}" contrastive experiment=tiny run_dir="$out/contrastive" model.model.student="$out/distill/final" \
    "${common[@]}" 2>&1 | tee "$out/contrastive.log"

OUT="$out" $PY - <<'PY'
import json, os
from pathlib import Path

import torch
from transformers import AltCLIPModel, AltCLIPTextModel

out = Path(os.environ["OUT"])
report = {}
for phase, model_class in (("distill", AltCLIPTextModel), ("contrastive", AltCLIPModel)):
    run = out / phase
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train/loss"] for row in losses if "train/loss" in row]
    shards = sorted(p.name for p in (run / "checkpoints" / "step-00000001" / "pytorch_model").iterdir())
    model = model_class.from_pretrained(run / "final")
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    # What DeepSpeed trained: its module copy is bf16 when bf16 was on; the export is fp32 masters.
    states = torch.load(run / "checkpoints" / "step-00000001" / "pytorch_model" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=True)
    trained_dtype = str(next(iter(states["module"].values())).dtype)
    report[phase] = {"loss": losses, "zero_checkpoint": shards, "deepspeed_module_dtype": trained_dtype,
                     "export_dtypes": dtypes}
    assert trained_dtype == "torch.bfloat16", trained_dtype
    if phase == "contrastive":
        report[phase]["logit_scale_shape"] = list(model.logit_scale.shape)
        assert model.logit_scale.dim() == 0
    assert losses and all(torch.isfinite(torch.tensor(losses))), phase
    assert dtypes == ["torch.float32"], dtypes
print(json.dumps(report, indent=2))
(out / "report.json").write_text(json.dumps(report, indent=2))
PY
