"""The optimisation the loop really does, against numbers worked out by hand: the learning-rate schedule
(`lr_factor` and the `train/lr` a run logs), AdamW's parameter groups (what gets weight decay), gradient
clipping and gradient accumulation in `training_step`, and accumulation end to end (same losses as one
micro-batch per step)."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from altclip_train.cli import compose_config
from altclip_train.tracking import read_metrics
from altclip_train.train import build_optimizer, lr_factor, train, training_step
from conftest import distill_overrides


def schedule(warmup: int, kind: str = "cosine", min_lr_ratio: float = 0.1):
    return OmegaConf.create({"warmup_steps": warmup, "schedule": kind, "min_lr_ratio": min_lr_ratio})


# ---------------------------------------------------------------- lr_factor at its boundaries
# 10 warmup steps then 100 decay steps (total 110), floor 0.1. Warmup is linear from 1/10 (the first update
# must not have lr 0), reaching 1 on its last step; decay starts at 1 and ends at the floor.
@pytest.mark.parametrize("step, expected", [
    (0, 0.1),              # first warmup step: 1/10
    (4, 0.5),              # 5/10
    (9, 1.0),              # last warmup step
    (10, 1.0),             # decay starts at the peak
    (35, 0.868198051534),  # a quarter through: 0.1 + 0.9 * (1 + cos(pi/4)) / 2
    (60, 0.55),            # halfway: 0.1 + 0.9 / 2
    (109, 0.100222048),    # last step: 0.1 + 0.9 * (1 + cos(0.99 pi)) / 2
    (110, 0.1),            # the end: the floor
    (500, 0.1),            # past the end (max_steps longer than the plan): stays at the floor
])
def test_cosine_schedule_by_hand(step, expected):
    assert lr_factor(step, 110, schedule(10)) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("step, expected", [(0, 0.1), (9, 1.0), (10, 1.0), (35, 0.775), (60, 0.55), (110, 0.1)])
def test_linear_schedule_by_hand(step, expected):
    assert lr_factor(step, 110, schedule(10, "linear")) == pytest.approx(expected, abs=1e-12)


def test_constant_schedule_still_warms_up_and_a_zero_floor_reaches_zero():
    constant = schedule(4, "constant")
    assert [lr_factor(s, 20, constant) for s in (0, 1, 3, 4, 19, 20)] == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    no_warmup = schedule(0, "cosine", min_lr_ratio=0.0)
    assert lr_factor(0, 20, no_warmup) == 1.0
    assert lr_factor(10, 20, no_warmup) == pytest.approx(0.5, abs=1e-12)
    assert lr_factor(20, 20, no_warmup) == pytest.approx(0.0, abs=1e-12)


def run_tiny(tiny_teacher, tiny_student, parallel_dir, run_dir, *extra):
    quiet = ("trainer.eval_at_start=false", "trainer.eval_every=0", "trainer.save_every=0", "trainer.log_every=1")
    train(compose_config("distill", distill_overrides(tiny_teacher, tiny_student, parallel_dir, run_dir,
                                                      *quiet, *extra)))
    return [m for m in read_metrics(run_dir) if "train/loss" in m]


def test_logged_learning_rate_follows_the_schedule(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    """Debug config: lr 1e-3, 6 steps, 2 of warmup. The value logged at step s is the rate of the next update
    (the first update ran at 1/2 of the peak, before anything was logged), as the HF Trainer logs it."""
    logged = run_tiny(tiny_teacher, tiny_student, parallel_dir, tmp_path / "run", "optim.min_lr_ratio=0.1")
    expected = {
        1: 1e-3,                        # warmup step 2 of 2
        2: 1e-3,                        # decay starts at the peak
        3: 1e-3 * 0.868198051534,       # a quarter of the 4 decay steps: 0.1 + 0.9 * (1 + cos(pi/4)) / 2
        4: 1e-3 * 0.55,                 # halfway
        5: 1e-3 * 0.231801948466,       # three quarters: 0.1 + 0.9 * (1 - cos(pi/4)) / 2
        6: 1e-4,                        # the floor, min_lr_ratio x lr
    }
    assert {m["step"]: m["train/lr"] for m in logged} == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- parameter groups and weight decay
def expected_no_decay(model: nn.Module, prefix: str) -> set[str]:
    """Biases and every LayerNorm parameter, found by module type (not by the tensor's shape)."""
    names = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm) or name == "bias":
                names.add(f"{prefix}{module_name}.{name}" if module_name else f"{prefix}{name}")
    return names


def test_weight_decay_goes_to_matrices_not_to_biases_and_norms(tiny_teacher, tiny_student):
    from altclip_train.tasks.distill import DistillTask

    optim = compose_config("distill").optim  # the real recipe: wd 0.1
    task = DistillTask(str(tiny_teacher), str(tiny_student))
    named = dict(task.named_parameters())
    no_decay = expected_no_decay(task.model, "model.")
    assert {"model.pre_LN.weight", "model.pre_LN.bias", "model.transformation.bias"} <= no_decay
    assert "model.transformation.weight" not in no_decay and "model.roberta.embeddings.word_embeddings.weight" in named

    groups = build_optimizer(task, optim).param_groups
    name_of = {id(p): name for name, p in named.items()}
    decay_values = {group["weight_decay"]: {name_of[id(p)] for p in group["params"]} for group in groups}
    assert decay_values == {optim.weight_decay: set(named) - no_decay, 0.0: no_decay}
    assert optim.weight_decay == 0.1
    for group in groups:
        assert (group["lr"], group["eps"], tuple(group["betas"])) == (optim.lr, optim.eps, tuple(optim.betas))

    # With zero gradients, an AdamW step is its decoupled decay alone: decayed tensors shrink by lr x wd,
    # the others stay exactly as they were.
    optimizer = build_optimizer(task, OmegaConf.merge(optim, {"lr": 0.5}))
    before = {name: p.detach().clone() for name, p in named.items()}
    for p in named.values():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in named.items():
        factor = 1.0 if name in no_decay else 1 - 0.5 * 0.1
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0, msg=name)


def test_a_scalar_parameter_like_logit_scale_gets_no_weight_decay():
    from altclip_train.tasks.base import Task

    class TextTower(Task):  # the shape of phase 2's trainable side: a projection and CLIP's temperature
        def __init__(self):
            super().__init__()
            self.model = nn.ModuleDict({"text_projection": nn.Linear(4, 3, bias=False)})
            self.model.logit_scale = nn.Parameter(torch.tensor(2.6592))

    task = TextTower()
    groups = {group["weight_decay"]: group["params"] for group in
              build_optimizer(task, compose_config("contrastive").optim).param_groups}
    assert [p is task.model.logit_scale for p in groups[0.0]] == [True]
    assert [p is task.model.text_projection.weight for p in groups[compose_config("contrastive").optim.weight_decay]] \
        == [True]


# ---------------------------------------------------------------- clipping and accumulation in training_step
class Slope(nn.Module):
    """loss = w . slope, so the gradient is exactly the batch's `slope`; w starts at zero."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, batch):
        return {"loss": (self.w * batch["slope"]).sum()}


@pytest.fixture()
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def sgd_steps(slopes: list[tuple[float, float]], accumulation: int, clip: float | None) -> list[list[float]]:
    """w after each micro-batch, trained by SGD with lr 1: after a step, w = -(the gradient applied)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    model = Slope()
    task, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=1.0))
    seen = []
    for slope in slopes:
        training_step(accelerator, task, accelerator.unwrap_model(task), optimizer,
                      {"slope": torch.tensor(slope)}, clip)
        seen.append(model.w.detach().tolist())
    return seen


def test_clipping_scales_a_large_gradient_to_the_clip_norm_and_leaves_a_small_one(fresh_accelerate_state):
    # |(30, 40)| = 50 > 1: applied as (0.6, 0.8), norm 1 (torch's clip divides by norm + 1e-6).
    (w,) = sgd_steps([(30.0, 40.0)], accumulation=1, clip=1.0)
    assert w == pytest.approx([-0.6, -0.8], rel=1e-5) and math.hypot(*w) == pytest.approx(1.0, rel=1e-5)
    # |(0.3, 0.4)| = 0.5 < 1: applied unchanged.
    assert sgd_steps([(0.3, 0.4)], accumulation=1, clip=1.0) == [pytest.approx([-0.3, -0.4], rel=1e-6)]
    # Clipping off (the config's null): the raw gradient.
    assert sgd_steps([(30.0, 40.0)], accumulation=1, clip=None) == [pytest.approx([-30.0, -40.0])]


def test_accumulated_gradient_is_the_mean_and_is_clipped_once(fresh_accelerate_state):
    # Two micro-batches per step: nothing moves after the first; the step applies their mean (30, 40),
    # clipped as a whole to (0.6, 0.8). Clipping each micro-batch would give (0.025, 0.9997) instead.
    first, second = sgd_steps([(60.0, 0.0), (0.0, 80.0)], accumulation=2, clip=1.0)
    assert first == [0.0, 0.0]
    assert second == pytest.approx([-0.6, -0.8], rel=1e-5)
    # Below the clip: exactly the mean of the two gradients, (0.1, 0.2), not their sum.
    _, second = sgd_steps([(0.2, 0.0), (0.0, 0.4)], accumulation=2, clip=1.0)
    assert second == pytest.approx([-0.1, -0.2], rel=1e-6)


def test_accumulating_two_micro_batches_trains_like_one_batch(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    """Same global batch of 8 pairs per step, as one micro-batch or two of 4: same losses step by step."""
    from launching import without_dropout

    student = without_dropout(tiny_student, tmp_path / "xlmr")  # no dropout masks that differ by split
    common = ("trainer.max_steps=4",)
    one = run_tiny(tiny_teacher, student, parallel_dir, tmp_path / "one", *common)
    two = run_tiny(tiny_teacher, student, parallel_dir, tmp_path / "two", "trainer.grad_accum_steps=2", *common)
    assert [m["step"] for m in one] == [m["step"] for m in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5), a["step"]
        assert b["train/lr"] == a["train/lr"]
    assert one[-1]["train/loss"] < one[0]["train/loss"]  # it trains: the steps are not no-ops
