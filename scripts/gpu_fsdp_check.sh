#!/usr/bin/env bash
# GPU check of configs/accelerate/fsdp.yaml through Accelerate (which runs FSDP on GPUs only; on CPU the
# tests shard with fully_shard directly, tests/test_fsdp.py). On the tiny offline models (experiment=tiny):
#   1. phase 1, fp32, DDP and FSDP2 for 4 steps each (same global batch): losses must agree;
#   2. the FSDP2 run relaunched with trainer.max_steps=6 resumes from its step-4 sharded checkpoint;
#   3. its export loads with plain transformers and gives the DDP export's outputs;
#   4. phase 2, bf16, FSDP2 with the vision layers wrapped too: one step, export loads.
#   scripts/gpu_fsdp_check.sh [OUT_DIR]        (default outputs/gpu_fsdp_check; NUM_PROCESSES default: visible GPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/gpu_fsdp_check}
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export ALTCLIP_CACHE_DIR=${ALTCLIP_CACHE_DIR:-$out/cache}
PY=${PYTHON:-python3}
n=${NUM_PROCESSES:-$($PY -c "import torch; print(max(1, torch.cuda.device_count()))")}
rm -rf "$out/ddp" "$out/fsdp" "$out/contrastive"
mkdir -p "$out"

common=(trainer.save_every=2 trainer.keep_last=null trainer.eval_at_start=false trainer.eval_every=0
        trainer.log_every=1 data.num_workers=0 logger=jsonl data.batch_size=$((8 * n)))
launch() {  # launch CONFIG ARGS...
  local config=$1; shift
  $PY -m accelerate.commands.launch --config_file "configs/accelerate/$config" --num_processes "$n" \
      --num_machines 1 --main_process_port 0 -m altclip_train "$@"
}
launch ddp.yaml distill experiment=tiny run_dir="$out/ddp" trainer.max_steps=6 trainer.mixed_precision=no \
    "${common[@]}" 2>&1 | tee "$out/ddp.log"
launch fsdp.yaml distill experiment=tiny run_dir="$out/fsdp" trainer.max_steps=4 trainer.mixed_precision=no \
    "${common[@]}" 2>&1 | tee "$out/fsdp.log"
launch fsdp.yaml distill experiment=tiny run_dir="$out/fsdp" trainer.max_steps=6 trainer.mixed_precision=no \
    "${common[@]}" 2>&1 | tee "$out/fsdp-resumed.log"
launch fsdp.yaml --fsdp_transformer_layer_cls_to_wrap AltRobertaLayer,AltCLIPEncoderLayer contrastive \
    experiment=tiny run_dir="$out/contrastive" model.model.student="$out/fsdp/final" trainer.max_steps=1 \
    trainer.mixed_precision=bf16 "${common[@]}" 2>&1 | tee "$out/contrastive.log"

OUT="$out" $PY - <<'PY'
import json, os
from pathlib import Path

import torch
from transformers import AltCLIPModel, AltCLIPTextModel, AutoTokenizer

out = Path(os.environ["OUT"])
def losses(run):
    rows = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}
ddp, fsdp = losses("ddp"), losses("fsdp")
assert sorted(fsdp) == sorted(ddp) == list(range(1, 7)), (sorted(ddp), sorted(fsdp))
worst = max(abs(fsdp[s] - ddp[s]) / abs(ddp[s]) for s in ddp)
assert worst < 1e-3, f"FSDP2 losses differ from DDP's by {worst:.2e} (relative)"
assert "resumed from" in (out / "fsdp-resumed.log").read_text(), "the FSDP2 relaunch did not resume"
texts = ["A cat sleeps on the sofa.", "一只猫在沙发上睡觉。"]
tokens = AutoTokenizer.from_pretrained(out / "ddp" / "final")(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    a, b = (AltCLIPTextModel.from_pretrained(out / r / "final").eval()(**tokens).pooler_output for r in ("ddp", "fsdp"))
torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
model = AltCLIPModel.from_pretrained(out / "contrastive" / "final")
assert model.logit_scale.dim() == 0
report = {"losses_ddp": ddp, "losses_fsdp": fsdp, "max_relative_loss_gap": worst, "export_match": True,
          "phase2_loss": losses("contrastive")}
print(json.dumps(report, indent=2))
(out / "report.json").write_text(json.dumps(report, indent=2))
PY
