"""`altclip-train export CHECKPOINT [--output DIR]`: any checkpoint of either phase -> a plain
transformers model dir (`AltCLIPTextModel` + tokenizer after phase 1, `AltCLIPModel` /
`CLIPModel` + processor after phase 2).

The run's resolved `config.yaml` (two levels above the checkpoint) rebuilds the task exactly as it
was trained; the checkpoint's weights are then loaded into it, whether Accelerate wrote them as
one safetensors file or DeepSpeed wrote ZeRO shards (gathered here into full fp32 weights).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from altclip_train.checkpoint import STATE_FILE

log = logging.getLogger(__name__)


def load_checkpoint_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The task's full state dict from an Accelerate (or DeepSpeed ZeRO) checkpoint dir."""
    single = checkpoint / "model.safetensors"
    if single.is_file():
        from safetensors.torch import load_file

        return load_file(single)
    if (checkpoint / "pytorch_model.bin").is_file():
        return torch.load(checkpoint / "pytorch_model.bin", map_location="cpu", weights_only=True)
    zero_dirs = [p for p in checkpoint.iterdir() if p.is_dir() and any(p.glob("*model_states.pt"))]
    if zero_dirs:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=zero_dirs[0].name)
    raise FileNotFoundError(f"{checkpoint}: no model weights found (model.safetensors or DeepSpeed shards)")


def export_checkpoint(checkpoint: str | Path, output: str | Path | None = None,
                      config: str | Path | None = None) -> Path:
    checkpoint = Path(checkpoint)
    if not (checkpoint / STATE_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint (no {STATE_FILE})")
    config_path = Path(config) if config else checkpoint.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"run config not found: {config_path} (pass --config)")
    from altclip_train.cli import register_resolvers

    register_resolvers()
    cfg = OmegaConf.load(config_path)
    task = instantiate(cfg.model, _convert_="all")
    state = load_checkpoint_weights(checkpoint)
    output = Path(output) if output else checkpoint.parent.parent / f"export-{checkpoint.name}"
    task.export(output, state)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="altclip-train export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint dir, e.g. outputs/distill-tiny/checkpoints/step-00000200")
    parser.add_argument("--output", help="where to write the model (default: RUN_DIR/export-<checkpoint name>)")
    parser.add_argument("--config", help="the run's config.yaml (default: the one two levels above the checkpoint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output = export_checkpoint(args.checkpoint, args.output, args.config)
    print(f"exported {args.checkpoint} -> {output}")
    return 0
