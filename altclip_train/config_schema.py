"""Typed schemas for the shared config groups, so `optim.lr=abc` fails at start-up in one line.

The task and data groups are checked by their own constructors; these cover what the loop reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf


@dataclass
class OptimSchema:
    lr: float = 1e-4
    weight_decay: float = 0.1
    eps: float = 1e-8
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: Optional[float] = 1.0


@dataclass
class TrainerSchema:
    epochs: int = 1
    max_steps: Optional[int] = None
    grad_accum_steps: int = 1
    mixed_precision: str = "bf16"
    cpu: Any = "auto"
    log_every: int = 10
    eval_every: int = 0
    eval_at_start: bool = True
    save_every: int = 0
    keep_last: Optional[int] = 3
    resume: Optional[str] = "auto"
    signal_check_every: int = 10
    cpu_threads: Any = "auto"


SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("no", "fp16", "bf16", "fp8")


def validate(cfg: DictConfig) -> None:
    """Type-check optim and trainer and their choices; a bad value raises a one-line ValueError."""
    from omegaconf.errors import ValidationError

    for key, schema in (("optim", OptimSchema), ("trainer", TrainerSchema)):
        try:
            OmegaConf.merge(OmegaConf.structured(schema), cfg[key])
        except ValidationError as error:
            raise ValueError(f"{key}.{error.full_key}: {str(error).splitlines()[0]}") from None
    if cfg.optim.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={cfg.optim.schedule}: choose one of {', '.join(SCHEDULES)}")
    if cfg.trainer.mixed_precision not in PRECISIONS:
        raise ValueError(f"trainer.mixed_precision={cfg.trainer.mixed_precision}: choose one of {', '.join(PRECISIONS)}")
    if cfg.trainer.log_every < 1 or cfg.trainer.signal_check_every < 1:
        raise ValueError("trainer.log_every and trainer.signal_check_every must be at least 1")
