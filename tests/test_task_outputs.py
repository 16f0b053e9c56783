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
def test_the_loop_logs_pairs_per_second(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    from conftest import distill_overrides

    from altclip_train.train import train

    train(compose_config("distill", distill_overrides(tiny_teacher, tiny_student, parallel_dir, tmp_path,
                                                      "trainer.max_steps=2", "trainer.eval_at_start=false")))
    logged = [m for m in read_metrics(tmp_path) if "train/loss" in m]
    assert logged and all(m["train/pairs_per_s"] > 0 and "train/rows_per_s" not in m for m in logged)
