"""Metric logging: `metrics.jsonl` always, plus Accelerate trackers (wandb by default, tensorboard).

wandb runs offline unless the config says otherwise; API keys come only from the environment and
are never written into configs or logs.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def tracker_init_kwargs(logger_cfg: DictConfig, run_dir: Path, run_name: str) -> dict:
    kwargs = {}
    if "wandb" in logger_cfg.trackers:
        kwargs["wandb"] = {"mode": logger_cfg.get("mode", "offline"), "dir": str(run_dir), "name": run_name,
                           "entity": logger_cfg.get("entity"), "tags": list(logger_cfg.get("tags") or [])}
    return kwargs


class MetricsLog:
    """Appends one JSON object per logging event to run_dir/metrics.jsonl and forwards to trackers."""

    def __init__(self, accelerator, run_dir: Path):
        self.accelerator = accelerator
        self.path = Path(run_dir) / "metrics.jsonl"

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else v) for k, v in metrics.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in clean.items() if isinstance(v, float)}, step=step)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def flat_config(cfg: DictConfig) -> dict:
    """The resolved config flattened to `a/b/c` keys, as trackers want it."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}/")
        else:
            out[prefix.rstrip("/")] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out
