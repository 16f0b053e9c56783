"""Phase-1 training on gloo processes with the model sharded by FSDP2 (`fully_shard`) or wrapped in DDP,
for tests/test_fsdp.py. Run under `accelerate launch --multi_gpu --num_processes 2`:

    python tests/fsdp_probe.py OUT_DIR ddp|fsdp STEPS [--save-at K] [--resume CKPT --start K] -- HYDRA_OVERRIDES...

Accelerate turns an FSDP launch into plain DDP on CPU, so FSDP2 is applied here the way its FSDP2 plugin
applies configs/accelerate/fsdp.yaml (each `AltRobertaLayer` sharded, then the root, parameters resharded
after forward), while everything else is the shipped loop's: the config, the Task and data module it
instantiates, `build_optimizer`, `training_step` (accumulate, forward, `accelerator.backward`, clip, step).
Checkpoints are torch.distributed.checkpoint shards (what Accelerate's FSDP2 SHARDED_STATE_DICT writes);
the export gathers the full state dict and goes through the Task's own `export`.

Writes OUT_DIR/rank-R.json (losses per step, local parameter count) and, on rank 0, OUT_DIR/final/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def shard(task) -> None:
    from torch.distributed.fsdp import fully_shard

    for module in task.modules():
        if type(module).__name__ == "AltRobertaLayer":
            fully_shard(module, reshard_after_forward=True)
    fully_shard(task, reshard_after_forward=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("mode", choices=("ddp", "fsdp"))
    parser.add_argument("steps", type=int)
    parser.add_argument("--save-at", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--start", type=int, default=0)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1:]

    import torch.distributed.checkpoint as dcp
    from accelerate.utils import set_seed
    from hydra.utils import instantiate
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                         set_state_dict)

    import altclip_train.train as loop
    from altclip_train.cli import compose_config

    cfg = compose_config("distill", args.overrides)
    accelerator = loop.build_accelerator(cfg)
    set_seed(cfg.seed)
    task = instantiate(cfg.model, _convert_="all")
    data = instantiate(cfg.data, _convert_="all")
    data.setup(accelerator)
    full_params = sum(p.numel() for p in task.parameters())
    if args.mode == "fsdp":
        shard(task)
        optimizer = loop.build_optimizer(task, cfg.optim)
        core = task
    else:
        task, optimizer = accelerator.prepare(task, loop.build_optimizer(task, cfg.optim))
        core = accelerator.unwrap_model(task)
    local_params = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in task.parameters())
    if args.resume:
        model_state, optim_state = get_state_dict(task, optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=args.resume)
        set_state_dict(task, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])

    losses, step = {}, args.start
    task.train()
    for batch in data.train_batches(0, args.start):
        batch.pop("skipped", None)
        outputs = loop.training_step(accelerator, task, core, optimizer, loop.to_device(batch, accelerator.device),
                                     cfg.optim.grad_clip)
        step += 1
        losses[step] = accelerator.reduce(outputs["loss"].detach(), reduction="mean").item()
        if step == args.save_at:
            model_state, optim_state = get_state_dict(task, optimizer)
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(Path(args.out) / f"step-{step}"))
        if step == args.steps:
            break

    if args.mode == "fsdp":
        full = get_model_state_dict(task, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        full = accelerator.get_state_dict(task)
    if accelerator.is_main_process:
        core.export(Path(args.out) / "final", full)
    Path(args.out, f"rank-{accelerator.process_index}.json").write_text(json.dumps(
        {"losses": losses, "local_params": local_params, "full_params": full_params,
         "world_size": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type)}))
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
