"""Phase 1's combined objective (`model.loss=mse+contrastive`): the InfoNCE term against a hand computation,
duplicate English sources kept out of the negatives, the task's sum, and a short run that logs both terms."""

from __future__ import annotations

import math

import pytest
import torch

from altclip_train.cli import compose_config
from altclip_train.losses import distill_mse_loss, translation_contrastive_loss
from altclip_train.tasks.distill import DistillTask
from altclip_train.tracking import read_metrics
from altclip_train.train import train
from conftest import distill_overrides


def test_infonce_matches_a_hand_computation():
    translations = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines: row 0 -> (1, 1/sqrt2), row 1 -> (0, 1/sqrt2); temperature 0.5 doubles them.
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(2 * c)))
    row1 = -math.log(math.exp(2 * c) / (math.exp(0) + math.exp(2 * c)))
    got = translation_contrastive_loss(translations, targets, temperature=0.5)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_a_repeated_english_source_is_not_its_own_negative():
    translations = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 share one source
    masked = translation_contrastive_loss(translations, targets, torch.tensor([7, 7, 3]), temperature=0.1)
    unmasked = translation_contrastive_loss(translations, targets, temperature=0.1)
    logits = torch.nn.functional.normalize(translations, dim=-1) @ torch.nn.functional.normalize(targets, dim=-1).t()
    logits = logits / 0.1
    logits[0, 1] = logits[1, 0] = float("-inf")
    assert masked.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.arange(3)).item(), rel=1e-6)
    assert masked < unmasked  # the duplicate had counted as a hard negative


def test_the_task_adds_the_weighted_term_to_mse(tiny_teacher, tiny_student):
    task = DistillTask(str(tiny_teacher), str(tiny_student), loss="mse+contrastive", contrastive_weight=0.25,
                       contrastive_temperature=0.07).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (6, 9), generator=generator)
    target = torch.randn(3, task.teacher.text_dim, generator=generator)
    batch = {"student_input_ids": ids, "student_attention_mask": torch.ones_like(ids),
             "teacher_embeds": torch.cat([target, target]), "source_index": torch.tensor([0, 1, 2, 0, 1, 2])}
    out = task(batch)
    with torch.no_grad():
        student = task.student_embeddings(batch)
    mse = distill_mse_loss(student, torch.cat([target, target]))
    nce = translation_contrastive_loss(student[3:], target, torch.tensor([0, 1, 2]), 0.07)
    assert out["loss"].item() == pytest.approx((mse + 0.25 * nce).item(), rel=1e-5)
    assert out["contrastive"].item() == pytest.approx(nce.item(), rel=1e-5)
    plain = DistillTask(str(tiny_teacher), str(tiny_student)).eval()
    plain.model.load_state_dict(task.model.state_dict())
    assert plain(batch)["loss"].item() == pytest.approx(mse.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"model.loss='mse\+nce': choose one of mse, mse\+contrastive"):
        DistillTask(str(tiny_teacher), str(tiny_student), loss="mse+nce")


@pytest.mark.slow
def test_a_combined_run_logs_both_terms(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    train(compose_config("distill", distill_overrides(tiny_teacher, tiny_student, parallel_dir, tmp_path / "run",
                                                      "model.loss=mse+contrastive", "model.contrastive_weight=0.5")))
    logged = [m for m in read_metrics(tmp_path / "run") if "train/loss" in m]
    assert logged and all(m["train/loss"] == pytest.approx(m["train/mse"] + 0.5 * m["train/contrastive"], rel=1e-4)
                          for m in logged)
