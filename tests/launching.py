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


SAMPLE_TEXTS = ("A cat sleeps on the sofa.", "一只猫在沙发上睡觉。", "Un chat dort sur le canapé.")


def exported_outputs(final_dir: Path, texts: tuple[str, ...] = SAMPLE_TEXTS):
    """What a user gets from an exported model with plain transformers: phase 1's pooled text vectors,
    or phase 2's projected text features scaled by exp(logit_scale).

    Comparing these, rather than raw weights, between runs on different process layouts ignores
    weights with no effect on the output (attention key biases get a zero gradient, which AdamW
    turns float noise into), and checks the export loads."""
    import torch
    from transformers import AltCLIPModel, AltCLIPTextModel, AutoConfig, AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(final_dir)(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        if AutoConfig.from_pretrained(final_dir).model_type == "altclip":
            model = AltCLIPModel.from_pretrained(final_dir).eval()
            assert model.logit_scale.dim() == 0, "logit_scale must be exported as a scalar"
            return model.get_text_features(**tokens).pooler_output * model.logit_scale.exp()
        return AltCLIPTextModel.from_pretrained(final_dir).eval()(**tokens).pooler_output


# ----------------------------------------------------------------------------- phase-2 inputs
PAIR_LANGS = ("en", "zh", "fr", "ja")
NUM_IMAGES = 16


def pair_caption(image: int, lang: str) -> str:
    from altclip_train.models.tiny import SAMPLE_CAPTIONS

    # Past the sample captions, join two of them: the tiny tokenizers know no digits, so numbering
    # captions would not keep them apart once tokenised.
    captions = SAMPLE_CAPTIONS[lang]
    first, second = divmod(image, len(captions))
    return captions[second] if not first else f"{captions[second]} {captions[(second + first) % len(captions)]}"


def build_pair_shards(root: Path) -> Path:
    """NUM_IMAGES random PNGs with a caption in each of PAIR_LANGS, as 4 WebDataset shards."""
    import csv

    import numpy as np
    from PIL import Image

    from altclip_train.data.prepare_wds import prepare_wds

    root.mkdir(parents=True, exist_ok=True)
    with open(root / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "lang"])
        for image in range(NUM_IMAGES):
            pixels = np.random.default_rng(image).integers(0, 256, size=(36, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"img{image}.png")
            for lang in PAIR_LANGS:
                writer.writerow([f"img{image}.png", pair_caption(image, lang), lang])
    prepare_wds(root / "pairs.csv", root / "shards", shard_size=NUM_IMAGES // 4)
    return root / "shards"


def build_phase1_output(teacher: Path, student: Path, out_dir: Path) -> Path:
    """What `altclip-train distill` exports (AltCLIPTextModel + tokenizer), straight from the XLM-R stand-in."""
    from transformers import AutoTokenizer

    from altclip_train.models.student import build_student
    from altclip_train.models.teachers import load_teacher

    build_student(str(student), load_teacher(str(teacher)).text_dim).save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(student).save_pretrained(out_dir)
    return out_dir


def contrastive_overrides(teacher: Path, phase1: Path, shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """A few-step CPU phase-2 run on cached image embeddings; 2 global batches of 8 pairs per epoch."""
    return [
        f"model.model.teacher={teacher}", f"model.model.student={phase1}", f"data.shards={shards}",
        f"run_dir={run_dir}", f"data.languages=[{','.join(PAIR_LANGS)}]",
        "debug=default", *extra,  # configs/phases/contrastive/debug/default.yaml
    ]


def scaleout_inputs(teacher: Path, student: Path, corpora: Path, root: Path) -> dict:
    """Inputs for runs compared across process layouts: dropout off everywhere (so no layout draws
    different random masks), a phase-1 output for phase 2, and image-text shards."""
    student = without_dropout(student, root / "xlmr")
    return {"teacher": teacher, "student": student, "corpora": corpora,
            "phase1": build_phase1_output(teacher, student, root / "phase1"),
            "shards": build_pair_shards(root / "pairs")}


def phase_overrides(phase: str, inputs: dict, run_dir: Path, *extra: str) -> list[str]:
    """Phase 1: 96 training pairs (none held out), 12 global batches of 8 per epoch. Phase 2: 16 images,
    2 global batches of 8 per epoch. `extra` sets steps, saving and logging."""
    from conftest import distill_overrides

    if phase == "distill":
        return distill_overrides(inputs["teacher"], inputs["student"], inputs["corpora"], run_dir, "data.val_size=0",
                                 *extra)
    return contrastive_overrides(inputs["teacher"], inputs["phase1"], inputs["shards"], run_dir, *extra)
