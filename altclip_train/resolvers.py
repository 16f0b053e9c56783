"""OmegaConf resolvers the configs use, and the record of where each named run exported its model.

- `${tiny_asset:NAME}`: a tiny test/demo checkpoint built on first use (`assets.tiny_asset`).
- `${latest_output:NAME,ROOT}`: the model dir the newest run called NAME exported (`latest_output`).

`register_resolvers()` is idempotent; the CLI, `export` and anything that loads a saved run config call it.
The record of a run (`record_output`) is a small JSON under `<cache root>/runs/NAME.json`, written atomically.
Lives outside `cli.py` so that `export.py` (and other tools) need not import the CLI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from altclip_train.errors import UserError


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    from altclip_train.assets import tiny_asset

    if not OmegaConf.has_resolver("tiny_asset"):
        OmegaConf.register_new_resolver("tiny_asset", tiny_asset)
    if not OmegaConf.has_resolver("latest_output"):
        OmegaConf.register_new_resolver("latest_output", latest_output)


def output_record(name: str) -> Path:
    from altclip_train.assets import cache_root

    return cache_root() / "runs" / f"{name}.json"


def record_output(name: str, final_dir: Path) -> None:
    """Note where run `name` exported its model, so a later phase finds it wherever it landed."""
    record = output_record(name)
    record.parent.mkdir(parents=True, exist_ok=True)
    staging = record.with_name(f".{record.name}.{os.getpid()}")
    staging.write_text(json.dumps({"name": name, "final": str(Path(final_dir).resolve())}) + "\n")
    os.replace(staging, record)


def latest_output(name: str, output_root: str = "outputs") -> str:
    """`${latest_output:distill-tiny,${output_root}}`: the model dir the newest run called `name`
    exported; else its default place (<output_root>/<name>/final); else one line saying where it looked."""
    record, default = output_record(name), Path(output_root) / name / "final"
    looked = []
    if record.is_file():
        final = Path(json.loads(record.read_text())["final"])
        if (final / "config.json").is_file():
            return str(final)
        looked.append(f"{final} (recorded in {record})")
    else:
        looked.append(f"{record} (no record)")
    if (default / "config.json").is_file():
        return str(default.resolve())
    looked.append(str(default.resolve()))
    raise UserError(f"no model from a run named '{name}': looked in {' and '.join(looked)}; "
                    f"run that phase first or give the model dir explicitly")
