"""Checkpoints: atomic Accelerate-state saves with the data position, keep-last-K, and resume.

A checkpoint is `run_dir/checkpoints/step-00001000/`: Accelerate's state (model, optimizer,
every rank's RNG, DeepSpeed shards when used) plus `trainer_state.json` (step, epoch, position in
the epoch, skip counts). All ranks write into a hidden staging dir; only when every rank is done
does rank 0 add `trainer_state.json` and rename the dir into place, so a run killed mid-save leaves
only a hidden dir that resume never picks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    """Everything beyond Accelerate's state that a resumed run needs to continue exactly."""

    step: int = 0               # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0     # global batches of `epoch` already consumed
    skipped: dict = field(default_factory=dict)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first; staging dirs and dirs without a state file are ignored."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(resume, run_dir: str | Path) -> Path | None:
    """`auto` -> newest complete checkpoint (or None); a path -> that checkpoint, checked."""
    if resume in (None, False, "", "none", "null"):
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"trainer.resume={resume}: not a complete checkpoint (no {STATE_FILE})")
    return path


def save_checkpoint(accelerator, run_dir: str | Path, state: TrainState, keep_last: int | None) -> Path:
    """Collective: every rank must call it. Returns the final checkpoint path."""
    root = checkpoint_root(run_dir)
    final = root / f"step-{state.step:08d}"
    staging = root / f".staging-step-{state.step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        _fsync_dir(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _prune(run_dir, keep_last)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> TrainState:
    accelerator.load_state(str(path))
    state = TrainState(**json.loads((path / STATE_FILE).read_text()))
    # `accumulate()` steps the optimizer when `accelerator.step` (micro-batches so far) is a multiple of
    # the accumulation steps, and `load_state` brings that count back as the saving run left it: step x
    # *its* accumulation, and only on ranks that find their own RNG file. Resumed with more accumulation
    # (fewer ranks, same global batch) at an odd step, that put every boundary half a global batch early,
    # so count again from the optimizer steps in the layout this run has: a whole global batch per step.
    accelerator.step = state.step * accelerator.gradient_accumulation_steps
    log.info("resumed from %s (step %d, epoch %d, batch %d)", path, state.step, state.epoch, state.batch_in_epoch)
    return state


def frozen_weights(model) -> dict:
    """CPU copies of the frozen parameters, taken before `prepare`: DeepSpeed casts the whole module to
    bf16/fp16 and keeps fp32 masters only for what it trains, so the export takes frozen ones from here."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if not p.requires_grad}


def full_state_dict(accelerator, model, frozen: dict | None = None) -> dict:
    """The whole model's weights for export, unsharded and in full precision. Collective.

    Plain runs take Accelerate's state dict. Under DeepSpeed the module may hold bf16 copies
    (and, with ZeRO-3, only this rank's shard), so trained weights come from the optimizer's fp32
    masters and frozen ones from `frozen` (see `frozen_weights`), else gathered as they are; export
    then matches a one-process run.
    """
    if accelerator.state.deepspeed_plugin is None:
        return accelerator.get_state_dict(model)
    import torch
    from deepspeed import zero
    from deepspeed.utils import safe_get_full_fp32_param

    frozen = frozen or {}
    module = accelerator.unwrap_model(model)
    params = dict(module.named_parameters(remove_duplicate=False))
    state = {}
    for name, value in module.state_dict().items():
        param = params.get(name)
        if param is None:
            state[name] = value.detach().cpu().clone()  # buffers are never partitioned
            continue
        if name in frozen:
            state[name] = frozen[name].to(torch.float32)
            continue
        # Every rank walks the same names in the same order: both calls below are collectives.
        full = safe_get_full_fp32_param(param) if param.requires_grad else None
        if full is None:
            with zero.GatheredParameters([param], modifier_rank=None):  # a no-op below ZeRO-3
                full = param.detach().to(torch.float32).clone()
        state[name] = full.detach().cpu()
    return state


def _prune(run_dir, keep_last: int | None) -> None:
    if not keep_last:
        return
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass
