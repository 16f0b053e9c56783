"""`altclip-train <command> [hydra overrides | options]`: the command-line entry point (thin).

Training and evaluation commands are Hydra apps over the configs in `configs/`; each phase also
searches `configs/phases/<phase>/` so `experiment=tiny` means the tiny run of *that* phase.
Utility commands (export, prepare-wds, cache-images, check-leakage, demo) take ordinary options.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Callable

from altclip_train.errors import UserError
from altclip_train.logging_setup import configure_process
# Re-exported for callers of the CLI module; their home is `resolvers.py`.
from altclip_train.resolvers import latest_output, output_record, record_output, register_resolvers  # noqa: F401

CONFIG_DIR = Path(os.environ.get("ALTCLIP_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))
HYDRA_COMMANDS = {"distill": "Phase 1: distil a CLIP teacher's text tower into XLM-R (MSE on parallel text)",
                  "contrastive": "Phase 2: contrastive tuning on image-text shards, image tower frozen",
                  "eval": "Zero-shot classification and retrieval per language; table, JSON and chart"}
TOOL_COMMANDS = {"export": "Turn a checkpoint of either phase into a plain-transformers model dir",
                 "prepare-wds": "Build WebDataset shards from a CSV/TSV/JSONL of (image, caption, lang)",
                 "cache-images": "Embed every image of a shard set once with the frozen image tower",
                 "translate": "Machine-translate English sentences into new languages: Moses pairs for data.corpora",
                 "coverage": "Per language of the corpora: the student tokenizer's <unk>/byte rates and a verdict",
                 "check-leakage": "How many of each benchmark's captions and images are in a run's training data",
                 "demo": "The whole AltCLIP method on bundled real images (digits), offline, in minutes"}


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


# The key each command reads its output dir from; `run_dir=X` on the command line is kept as an
# alias for `hydra.run.dir=X` (and `hydra.sweep.dir=X/sweep`), so a run never splits in two.
OUTPUT_KEYS = {"distill": "run_dir", "contrastive": "run_dir", "eval": "output_dir"}


def output_aliases(command: str, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """`run_dir=X` (`output_dir=X` for eval) becomes `hydra.run.dir=X hydra.sweep.dir=X/sweep`."""
    alias = OUTPUT_KEYS.get(command)
    result = []
    for override in overrides:
        name, sep, value = override.partition("=")
        if alias is None or not sep or name != alias:
            result.append(override)
            continue
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if OverridesParser.create().parse_override(override).is_sweep_override():
            raise UserError(f"{override}: {alias} takes one directory; to sweep, set hydra.sweep.dir and sweep "
                            "other keys")
        quoted = len(value) > 1 and value[0] == value[-1] and value[0] in "'\""
        sweep = value[:-1] + "/sweep" + value[-1] if quoted else value + "/sweep"
        result += [f"hydra.run.dir={value}", f"hydra.sweep.dir={sweep}"]
    return result


def search_path_overrides(command: str) -> list[str]:
    phase_dir = CONFIG_DIR / "phases" / command
    return [f"hydra.searchpath=[file://{phase_dir}]"] if phase_dir.is_dir() else []


def compose_config(command: str, overrides: list[str] | tuple[str, ...] = ()):
    """The config a command would run with, composed without starting a Hydra app (for tests/tools).

    Its output dir is what Hydra would make `${hydra:runtime.output_dir}` for a single run:
    `hydra.run.dir`, made absolute.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=command, return_hydra_config=True,
                      overrides=[*output_aliases(command, overrides), *search_path_overrides(command)])
    with open_dict(cfg):
        if OUTPUT_KEYS.get(command) in cfg:
            cfg[OUTPUT_KEYS[command]] = os.path.abspath(cfg.hydra.run.dir)
        del cfg["hydra"]
    return cfg


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
        register_resolvers()  # again: a launcher may run the job in a fresh process
        result = report_user_errors(function, cfg)
        if command in ("distill", "contrastive") and isinstance(result, Path) and int(os.environ.get("RANK", "0")) == 0:
            record_output(cfg.name, result)

    try:
        hydra_overrides = [*output_aliases(command, overrides), *search_path_overrides(command)]
    except UserError as error:
        fail(str(error))
    sys.argv = [f"altclip-train {command}", *hydra_overrides]
    # Hydra prints its own multi-line reports unless asked to raise; raise, and say it in one line.
    previous = os.environ.get("HYDRA_FULL_ERROR")
    user_wants_traceback = bool(previous or os.environ.get("ALTCLIP_DEBUG"))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name=command, version_base="1.3")(app)()
    except Exception as error:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if user_wants_traceback or not isinstance(error, (HydraException, OmegaConfBaseException)):
            raise
        fail(hydra_error_line(error, command, overrides))
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def hydra_error_line(error: Exception, command: str, overrides: list[str]) -> str:
    """One line for a config that does not compose: unknown key or option, unreadable override."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        if group and error.options:
            return f"{group}={option}: no such {group}; choose one of {', '.join(error.options)}"
        return f"config '{error.missing_cfg_file}' not found"
    if isinstance(error, OverrideParseException):
        return f"cannot read override '{error.override}': {one_line(error.message)}"
    cause = error.__cause__
    full_key = getattr(cause, "full_key", None)
    if full_key and "not in struct" in str(cause):
        return f"{full_key}: unknown key ({unknown_key_hint(command, overrides, full_key)})"
    return one_line(cause if full_key else error)


def unknown_key_hint(command: str, overrides: list[str], full_key: str) -> str:
    parent, _, name = full_key.rpartition(".")
    others = [o for o in overrides if not o.lstrip("+~").startswith(full_key + "=")]
    try:
        from omegaconf import OmegaConf

        node = OmegaConf.select(compose_config(command, others), parent) if parent else compose_config(command, others)
        keys = [str(k) for k in node.keys()] if hasattr(node, "keys") else []
    except Exception:
        keys = []
    close = difflib.get_close_matches(name, keys, n=1)
    if close:
        return f"did you mean {parent + '.' if parent else ''}{close[0]}?"
    return f"{parent or 'the top level'} has {', '.join(keys)}" if keys else "check its spelling"


def one_line(error: Exception | str) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    line = re.sub(r"^\w+ raised while resolving interpolation: ", "", line)
    full_key = getattr(error, "full_key", None)
    return f"{full_key}: {line}" if full_key and not line.startswith(str(full_key)) else line


def fail(message: str) -> None:
    print(f"altclip-train: error: {message}", file=sys.stderr)
    sys.exit(2)


def report_user_errors(function: Callable, *args):
    """Bad input (missing file, unknown column, broken data, bad config) ends with one line, not a traceback."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    from altclip_train.models.student import NotAStudentCheckpoint

    user_errors = (UserError, FileNotFoundError, NotAStudentCheckpoint, ValueError)
    try:
        return function(*args)
    except (*user_errors, InstantiationException, OmegaConfBaseException) as error:
        if os.environ.get("ALTCLIP_DEBUG"):
            raise
        if isinstance(error, InstantiationException):
            # A constructor's own complaint, e.g. a model that is not there: say it with its key.
            cause = error.__cause__
            if not isinstance(cause, (*user_errors, OSError)):
                raise
            where = re.search(r"full_key: (\S+)", str(error))
            fail(f"{where.group(1) + ': ' if where else ''}{one_line(cause)}")
        fail(one_line(error))


def run_tool(command: str, argv: list[str]) -> None:
    if command == "export":
        from altclip_train.export import main as tool
    elif command == "prepare-wds":
        from altclip_train.data.prepare_wds import main as tool
    elif command == "cache-images":
        from altclip_train.data.image_cache import main as tool
    elif command == "translate":
        from altclip_train.data.translate import main as tool
    elif command == "coverage":
        from altclip_train.data.coverage import main as tool
    elif command == "check-leakage":
        from altclip_train.evaluate.leakage import main as tool
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
    configure_process()  # before anything imports `datasets`, which reads its cache dir at import
    if command in HYDRA_COMMANDS:
        run_hydra_command(command, rest)
    elif command in TOOL_COMMANDS:
        run_tool(command, rest)
    else:
        print(f"altclip-train: error: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
