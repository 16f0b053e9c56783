"""`altclip-train <command> [hydra overrides | options]`: the command-line entry point (thin).

Training and evaluation commands are Hydra apps over the configs in `configs/`; each phase also
searches `configs/phases/<phase>/` so `experiment=tiny` means the tiny run of *that* phase.
Utility commands (export, prepare-wds, cache-images, demo) take ordinary options.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

CONFIG_DIR = Path(os.environ.get("ALTCLIP_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))
HYDRA_COMMANDS = {"distill": "Phase 1: distil a CLIP teacher's text tower into XLM-R (MSE on parallel text)",
                  "contrastive": "Phase 2: contrastive tuning on image-text shards, image tower frozen",
                  "eval": "Zero-shot classification and retrieval per language; table, JSON and chart"}
TOOL_COMMANDS = {"export": "Turn a checkpoint of either phase into a plain-transformers model dir",
                 "prepare-wds": "Build WebDataset shards from a CSV/TSV/JSONL of (image, caption, lang)",
                 "cache-images": "Embed every image of a shard set once with the frozen image tower",
                 "demo": "The whole AltCLIP method on bundled real images (digits), offline, in minutes"}


class UserError(Exception):
    """Raised for bad input; printed as one line without a traceback."""


def usage() -> str:
    lines = ["usage: altclip-train <command> [args]", "", "training and evaluation (Hydra overrides, -m for sweeps):"]
    lines += [f"  {name:<13} {text}" for name, text in HYDRA_COMMANDS.items()]
    lines += ["", "tools (--help for options):"]
    lines += [f"  {name:<13} {text}" for name, text in TOOL_COMMANDS.items()]
    lines += ["", "examples:", "  altclip-train distill experiment=tiny",
              "  altclip-train contrastive experiment=tiny trainer.max_steps=50",
              "  accelerate launch --config_file configs/accelerate/ddp.yaml -m altclip_train distill "
              "experiment=altclip_m9_distill"]
    return "\n".join(lines)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    from altclip_train.assets import tiny_asset

    if not OmegaConf.has_resolver("tiny_asset"):
        OmegaConf.register_new_resolver("tiny_asset", tiny_asset)


def search_path_overrides(command: str) -> list[str]:
    phase_dir = CONFIG_DIR / "phases" / command
    return [f"hydra.searchpath=[file://{phase_dir}]"] if phase_dir.is_dir() else []


def compose_config(command: str, overrides: list[str] | tuple[str, ...] = ()):
    """The config a command would run with, composed without starting a Hydra app (for tests/tools)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=command, overrides=[*overrides, *search_path_overrides(command)])


def command_function(command: str) -> Callable:
    if command == "eval":
        from altclip_train.evaluate.run import run_eval

        return run_eval
    from altclip_train.train import train

    return train


def run_hydra_command(command: str, overrides: list[str]) -> None:
    import hydra

    register_resolvers()
    function = command_function(command)

    def app(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN and "run_dir" in cfg:
            # Each sweep job gets its own run dir (<run_dir>/sweep/<n>), so jobs never resume each
            # other's checkpoints, while a requeued job still finds its own.
            cfg.run_dir = hydra_cfg.runtime.output_dir
        report_user_errors(function, cfg)

    sys.argv = [f"altclip-train {command}", *overrides, *search_path_overrides(command)]
    hydra.main(config_path=str(CONFIG_DIR), config_name=command, version_base="1.3")(app)()


def report_user_errors(function: Callable, *args):
    """Bad input (missing file, unknown column, broken data) ends with one line, not a traceback."""
    from omegaconf.errors import ValidationError

    from altclip_train.models.student import NotAStudentCheckpoint

    try:
        return function(*args)
    except (UserError, FileNotFoundError, NotAStudentCheckpoint, ValueError, ValidationError) as error:
        if os.environ.get("ALTCLIP_DEBUG"):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"altclip-train: error: {message}", file=sys.stderr)
        sys.exit(2)


def run_tool(command: str, argv: list[str]) -> None:
    if command == "export":
        from altclip_train.export import main as tool
    elif command == "prepare-wds":
        from altclip_train.data.prepare_wds import main as tool
    elif command == "cache-images":
        from altclip_train.data.image_cache import main as tool
    else:
        from altclip_train.demo.run import main as tool
    result = report_user_errors(tool, argv)
    if isinstance(result, int) and result:
        sys.exit(result)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command in HYDRA_COMMANDS:
        run_hydra_command(command, rest)
    elif command in TOOL_COMMANDS:
        run_tool(command, rest)
    else:
        print(f"altclip-train: error: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
