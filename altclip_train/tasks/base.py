"""The Task contract shared by both phases, and freezing by name patterns.

A task is an `nn.Module` that owns a model and its loss. `forward(batch)` returns a dict with a
scalar "loss", any float metrics (tensors) and "pairs" (an int: the batch's training pairs, which the
loop turns into train/pairs_per_s); the training loop only ever sums and logs that dict, so it
never needs to know which phase it runs. Freezing is declared as regex patterns over parameter
names (big_vision style): frozen parameters get no gradient, are left out of the optimizer, and
the modules that hold only frozen parameters stay in eval mode even while the task trains.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn


def freeze_by_patterns(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Turn off gradients for parameters whose name fully matches any pattern; return their names."""
    compiled = [re.compile(pattern) for pattern in patterns]
    frozen = []
    for name, param in model.named_parameters():
        if any(pattern.fullmatch(name) for pattern in compiled):
            param.requires_grad_(False)
            frozen.append(name)
    unused = [p.pattern for p in compiled if not any(p.fullmatch(name) for name in frozen)]
    if unused:
        raise ValueError(f"freeze patterns match no parameter: {unused}")
    return frozen


def fully_frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that own parameters, all of them frozen (they run in eval mode: no dropout)."""
    modules = []
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            modules.append(module)
    return modules


class Task(nn.Module):
    """Base class: subclasses set `self.model`, call `self.freeze(patterns)`, implement forward/export."""

    model: nn.Module

    def freeze(self, patterns: Iterable[str]) -> list[str]:
        self.frozen_names = freeze_by_patterns(self.model, patterns)
        return self.frozen_names

    def train(self, mode: bool = True):
        super().train(mode)
        for module in fully_frozen_modules(self):
            module.eval()
        return self

    def checkpoint_activations(self, towers: Iterable[nn.Module]) -> None:
        """`model.gradient_checkpointing`: the towers that train recompute their layers' activations in
        backward instead of keeping them (less memory, about a third more compute); frozen towers run
        without a graph anyway. Call after `freeze`."""
        for tower in towers:
            if any(p.requires_grad for p in tower.parameters()):
                tower.activation_checkpointing_enable({"use_reentrant": False})

    def compiled_modules(self) -> list[nn.Module]:
        """The modules `forward` calls, which `trainer.compile` compiles in place; override when the
        forward reaches the model through methods other than `__call__`."""
        return [self.model]

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, Any]], accelerator) -> dict[str, float]:
        """Validation metrics over `batches` (this rank's share); override per task."""
        return {}

    def export(self, output_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the trained model in the plain-transformers format; override per task."""
        raise NotImplementedError
