"""`altclip-train export RUN [--output DIR] [--push-to-hub ORG/NAME]`: a run, a checkpoint or an exported model
of either phase -> a plain transformers model dir with its model card, optionally uploaded to the Hugging Face Hub.

RUN may be a run dir (its `final/` model, or else its newest complete checkpoint), a checkpoint dir, or an
exported model dir (`<run>/final`). A checkpoint is rebuilt from the run's resolved `config.yaml` (two levels
above it) and its weights loaded into it, whether Accelerate wrote them as one safetensors file or DeepSpeed wrote
ZeRO shards (gathered here into full fp32 weights). Either way the model dir gets a `README.md` model card with
the Hub's front matter (see `model_card.py`).

`--format open_clip` writes the phase-2 model in open_clip's format instead (`models/open_clip_format.py`):
`open_clip.create_model_and_transforms("local-dir:DIR")` loads it, and `hf-hub:ORG/NAME` after `--push-to-hub`
(the pushed copy names the repo as its text tower's home).

`--push-to-hub ORG/NAME` uploads the model dir with huggingface_hub. The token comes from the environment
(`HF_TOKEN`, or what `hf auth login` stored); it is never printed or logged. Offline or unauthorised, the command
ends with one line saying so.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from altclip_train.checkpoint import STATE_FILE, latest_checkpoint

log = logging.getLogger(__name__)

# Phase 1's AltCLIPTextModel has no AutoModel entry in transformers; this file lets AutoModel find transformers'
# own class (with trust_remote_code=True). It contains no model code.
AUTO_MODEL_MODULE = "modeling_altclip_text"
AUTO_MODEL_CODE = '''"""Lets `AutoModel.from_pretrained(..., trust_remote_code=True)` load this AltCLIPTextModel:
transformers maps no Auto class to it. No model code lives here: the class is transformers' own, under a
subclass of its own so that AutoModel's registration (`register_for_auto_class`) marks this subclass only,
never transformers' AltCLIPTextModel itself."""

from transformers import AltCLIPTextConfig
from transformers import AltCLIPTextModel as TransformersAltCLIPTextModel

__all__ = ["AltCLIPTextConfig", "AltCLIPTextModel"]


class AltCLIPTextModel(TransformersAltCLIPTextModel):
    pass
'''


class PushError(Exception):
    """The upload failed; the message is one line and never holds the token."""


def add_auto_model_entry(model_dir: str | Path) -> None:
    """Give an exported AltCLIPTextModel an `auto_map` entry so AutoModel loads it (phase 1's output)."""
    import json

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModel": f"{AUTO_MODEL_MODULE}.AltCLIPTextModel"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (model_dir / f"{AUTO_MODEL_MODULE}.py").write_text(AUTO_MODEL_CODE, encoding="utf-8")


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
    from altclip_train.resolvers import register_resolvers

    register_resolvers()
    cfg = OmegaConf.load(config_path)
    task = instantiate(cfg.model, _convert_="all")
    state = load_checkpoint_weights(checkpoint)
    output = Path(output) if output else checkpoint.parent.parent / f"export-{checkpoint.name}"
    task.export(output, state)
    return output


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def resolve_target(target: str | Path, output: str | Path | None, config: str | Path | None) -> tuple[Path, Path]:
    """(model dir, run dir) for a run dir, a checkpoint dir or an exported model dir; exports when needed."""
    target = Path(target)
    if (target / STATE_FILE).is_file():
        model_dir = export_checkpoint(target, output, config)
        return model_dir, Path(config).parent if config else target.parent.parent
    if is_model_dir(target):
        run_dir = Path(config).parent if config else target.parent
        return target, run_dir
    if (target / "config.yaml").is_file():
        if is_model_dir(target / "final") and output is None:
            return target / "final", target
        checkpoint = latest_checkpoint(target)
        if checkpoint is None:
            raise FileNotFoundError(f"{target}: no final/ model and no complete checkpoint to export")
        return export_checkpoint(checkpoint, output, config), target
    raise FileNotFoundError(f"{target} is not a run dir, a checkpoint or an exported model dir")


def upload_files(folder: str | Path) -> list[str]:
    """The files an upload of `folder` sends, relative to it (every file; hidden ones too, as upload_folder)."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Create the model repo if needed and upload `folder`; returns the commit URL. Failures raise PushError."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise PushError(f"cannot push to {repo_id}: offline (HF_HUB_OFFLINE is set)")
    # None lets huggingface_hub fall back to the token `hf auth login` stored; either way it is never logged.
    api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   commit_message=f"Upload {Path(folder).name} with altclip-train")
    except OfflineModeIsEnabled as error:
        raise PushError(f"cannot push to {repo_id}: offline (HF_HUB_OFFLINE is set)") from error
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise PushError(f"cannot push to {repo_id}: not authorised (HTTP {status}); set HF_TOKEN to a token "
                            f"with write access to it") from error
        raise PushError(f"cannot push to {repo_id}: the Hub answered HTTP {status}") from error
    except OSError as error:  # connection refused, DNS failure, timeouts (httpx and requests errors are OSErrors
        # or wrap them); the text of the error is left out as it may echo request headers
        raise PushError(f"cannot push to {repo_id}: the Hub cannot be reached ({type(error).__name__})") from error
    except Exception as error:
        if type(error).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise PushError(f"cannot push to {repo_id}: the Hub cannot be reached ({type(error).__name__})") from error
        raise
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> int:
    from altclip_train.errors import UserError
    from altclip_train.model_card import eval_json_results, write_model_card

    parser = argparse.ArgumentParser(prog="altclip-train export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", metavar="RUN",
                        help="a run dir (outputs/contrastive), a checkpoint dir (.../checkpoints/step-00000200) "
                             "or an exported model dir (.../final)")
    parser.add_argument("--output", help="where to write the model (default: RUN_DIR/export-<checkpoint name>)")
    parser.add_argument("--config", help="the run's config.yaml (default: the one in the run dir)")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload the model dir to this Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--license", help="license in the model card (default: mit, as CLIP and XLM-R)")
    parser.add_argument("--eval", metavar="EVAL_JSON",
                        help="an eval.json of `altclip-train eval` (e.g. XTD10, XM3600) to add to the card's results")
    parser.add_argument("--eval-model", help="which model of --eval is this one (default: the one at this path)")
    parser.add_argument("--format", choices=("transformers", "open_clip"), default="transformers",
                        help="transformers: the phase's own save_pretrained dir (default); open_clip: "
                             "open_clip_config.json + open_clip_model.safetensors with XLM-R as an HF text tower")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.format == "open_clip":
        from altclip_train.models.open_clip_format import OpenClipExportError, export_open_clip

        native, run_dir = resolve_target(args.run, None, args.config)
        output = Path(args.output) if args.output else native.parent / f"{native.name}-open_clip"
        try:
            model_dir = export_open_clip(native, output)
        except OpenClipExportError as error:
            raise UserError(str(error)) from error
    else:
        model_dir, run_dir = resolve_target(args.run, args.output, args.config)
    extra = eval_json_results(args.eval, model_dir, args.eval_model) if args.eval else None
    write_model_card(model_dir, run_dir, license=args.license, repo_id=args.push_to_hub, extra_results=extra)
    print(f"exported {args.run} -> {model_dir} (model card: {model_dir / 'README.md'})")
    if args.push_to_hub:
        upload = model_dir
        if args.format == "open_clip":  # the pushed config names the repo as the text tower's home
            import shutil
            import tempfile

            from altclip_train.models.open_clip_format import point_text_tower_at

            upload = Path(tempfile.mkdtemp(prefix="open_clip-push-")) / model_dir.name
            shutil.copytree(model_dir, upload)
            point_text_tower_at(upload, args.push_to_hub)
        try:
            url = push_to_hub(upload, args.push_to_hub, private=args.private)
        except PushError as error:
            raise UserError(str(error)) from error
        print(f"pushed {model_dir} -> https://huggingface.co/{args.push_to_hub} ({url})")
    return 0
