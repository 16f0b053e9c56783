"""What tasks hand the loop besides the loss: the number of training pairs in a batch (one per
English/translation pair in phase 1, one per image-caption pair in phase 2, logged as
train/pairs_per_s), and where the contrastive logit scale and bias start (SigLIP's own for the
sigmoid loss, the teacher's for CLIP's)."""

from __future__ import annotations

import math

import pytest
import torch

from altclip_train.cli import compose_config
from altclip_train.losses import SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE
from altclip_train.tracking import read_metrics


@pytest.fixture(scope="module")
def phase1(tiny_teacher, tiny_student, tmp_path_factory):
    from launching import build_phase1_output

    return build_phase1_output(tiny_teacher, tiny_student, tmp_path_factory.mktemp("phase1"))


def contrastive_task(teacher, phase1, loss: str):
    from altclip_train.models.assemble import assemble
    from altclip_train.tasks.contrastive import ContrastiveTask

    return ContrastiveTask(assemble(str(teacher), str(phase1)), tokenizer=str(phase1),
                           image_processor=str(teacher), image_model=str(teacher), loss=loss,
                           freeze=[r"vision_model\..*", r"visual_projection\..*"])


def test_sigmoid_loss_starts_from_siglips_scale_and_bias(tiny_teacher, phase1):
    from transformers import CLIPModel

    teacher_scale = CLIPModel.from_pretrained(tiny_teacher).logit_scale.item()
    assert teacher_scale != pytest.approx(SIGLIP_INIT_LOGIT_SCALE)  # so the check below can tell them apart
    sigmoid = contrastive_task(tiny_teacher, phase1, "sigmoid")
    assert sigmoid.model.logit_scale.item() == pytest.approx(math.log(10.0))
    assert sigmoid.logit_bias.item() == pytest.approx(SIGLIP_INIT_LOGIT_BIAS) == -10.0
    clip = contrastive_task(tiny_teacher, phase1, "clip")
    assert clip.model.logit_scale.item() == pytest.approx(teacher_scale) and clip.logit_bias is None


def test_contrastive_task_reports_one_pair_per_caption(tiny_teacher, phase1):
    task = contrastive_task(tiny_teacher, phase1, "clip")
    dim = task.model.config.projection_dim
    batch = {"input_ids": torch.randint(5, 50, (6, 7)), "attention_mask": torch.ones(6, 7, dtype=torch.long),
             "image_embeds": torch.randn(6, dim)}
    assert task(batch)["pairs"] == 6


def test_distill_task_reports_pairs_not_rows(tiny_teacher, tiny_student):
    from altclip_train.models.teachers import load_teacher
    from altclip_train.tasks.distill import DistillTask

    task = DistillTask(str(tiny_teacher), str(tiny_student))
    pairs = 5  # English rows then translation rows, as the phase-1 data module lays them out
    batch = {"student_input_ids": torch.randint(5, 50, (2 * pairs, 7)),
             "student_attention_mask": torch.ones(2 * pairs, 7, dtype=torch.long),
             "teacher_embeds": torch.randn(2 * pairs, load_teacher(str(tiny_teacher)).text_dim)}
    assert task(batch)["pairs"] == pairs


@pytest.mark.slow
def test_the_loop_logs_pairs_per_second(tiny_teacher, tiny_student, parallel_dir, tmp_path, monkeypatch):
    """pairs/s is the pairs of a logging window over the time its steps took. The loop's clock is replaced by
    one that moves only inside training_step, by 0.1 s for the first step, 0.2 s for the second, and so on:
    windows of 2 steps of 8 pairs give 16 / (0.1 + 0.2) and 16 / (0.3 + 0.4)."""
    import types

    from conftest import distill_overrides

    from altclip_train import train as loop

    clock, steps = [100.0], []
    real_step = loop.training_step

    def timed_step(*args, **kwargs):
        steps.append(1)
        clock[0] += 0.1 * len(steps)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "training_step", timed_step)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    loop.train(compose_config("distill", distill_overrides(tiny_teacher, tiny_student, parallel_dir, tmp_path,
                                                           "trainer.max_steps=4", "trainer.log_every=2",
                                                           "trainer.eval_at_start=false")))
    logged = [m for m in read_metrics(tmp_path) if "train/loss" in m]
    assert [m["step"] for m in logged] == [2, 4] and len(steps) == 4
    # Rows (2 per pair) would double these; a running total since the start would give 32 / 1.0 at step 4.
    assert [m["train/pairs_per_s"] for m in logged] == pytest.approx([16 / 0.3, 16 / 0.7], rel=1e-9)
    assert all("train/rows_per_s" not in m for m in logged)
