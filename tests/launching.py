"""Helpers for tests that run training as separate processes: `accelerate launch` with gloo processes,
DeepSpeed on CPU, Hydra launchers, signals and kills.

Every run gets offline trackers, the test session's cache dir and a scrubbed environment (no
inherited RANK/SLURM variables), writes its output to a log file, and fails the test with the log's
tail when it fails. DeepSpeed's one-time JIT build goes to `.cache/torch_extensions` in the repo
(or $TORCH_EXTENSIONS_DIR) so later runs, and later CI steps of the same checkout, reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCH_EXTENSIONS_DIR = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or REPO / ".cache" / "torch_extensions")
_INHERITED_LAYOUT = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
                     "MASTER_PORT", "ACCELERATE_", "SLURM_", "SUBMITIT_", "PET_", "TORCHELASTIC_")


def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_LAYOUT)}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu",
               TORCH_EXTENSIONS_DIR=str(TORCH_EXTENSIONS_DIR), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def accelerate_command(num_processes: int, command: str, overrides: list[str],
                       config_file: str | None = None) -> list[str]:
    """`accelerate launch` of `altclip-train <command>` on gloo processes, on a free port."""
    how = ["--config_file", str(REPO / "configs" / "accelerate" / config_file)] if config_file else ["--multi_gpu"]
    return [PYTHON, "-m", "accelerate.commands.launch", *how, "--num_processes", str(num_processes),
            "--num_machines", "1", "--main_process_port", "0", "-m", "altclip_train", command, *overrides]


def cli_command(command: str, overrides: list[str]) -> list[str]:
    return [PYTHON, "-m", "altclip_train", command, *overrides]


def log_tail(log: Path, lines: int = 60) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(line[-400:] for line in text[-lines:])


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, expect_rc: int = 0,
        timeout: float = 300) -> int:
    """Run to completion with output in `log`; assert the exit code."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env or run_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            raise AssertionError(f"timed out after {timeout} s: {' '.join(cmd)}\n{log_tail(log)}") from None
    assert rc == expect_rc, f"exit code {rc}, expected {expect_rc}: {' '.join(cmd)}\n{log_tail(log)}"
    return rc


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start in its own session (so a kill reaches only this run) with output in `log`."""
    out = log.open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env or run_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out.close()
    return proc


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a run and every process it started (torchrun puts workers in sessions of their own)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in family:
        try:
            member.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float = 240,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit code {proc.returncode}) before {what}\n{log_tail(log)}")
        if time.monotonic() > deadline:
            kill_tree(proc)
            raise AssertionError(f"no {what} after {timeout} s\n{log_tail(log)}")
        time.sleep(0.01)


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> logged train/loss, the last entry winning (a resumed run re-logs nothing it kept)."""
    losses = {}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        if "train/loss" in row:
            losses[row["step"]] = row["train/loss"]
    return losses


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(run_dir) / "final" / "model.safetensors")


def without_dropout(model_dir: Path, out_dir: Path) -> Path:
    """A copy of a checkpoint dir with dropout off, so runs on different process counts draw no
    different random masks and their losses can be compared step by step."""
    if not out_dir.exists():
        shutil.copytree(model_dir, out_dir)
        config_file = out_dir / "config.json"
        config = json.loads(config_file.read_text())
        for key in [k for k in config if "dropout" in k]:
            config[key] = 0.0
        for sub in ("text_config", "vision_config"):
            for key in [k for k in config.get(sub) or {} if "dropout" in k]:
                config[sub][key] = 0.0
        config_file.write_text(json.dumps(config, indent=2))
    return out_dir
