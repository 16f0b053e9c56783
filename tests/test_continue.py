"""Growing a trained model: phase 1 continues from a phase-1 output or a whole phase-2 model (its text tower),
and `data.replay` puts a fixed share of old-language pairs into every batch."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AltCLIPModel, AltCLIPTextModel

from altclip_train.cli import compose_config
from altclip_train.data.batching import BatchPlan
from altclip_train.data.parallel import ParallelTextData
from altclip_train.evaluate.forgetting import write_forgetting_report
from altclip_train.models.assemble import save_assembled
from altclip_train.models.student import build_student
from altclip_train.tasks.distill import DistillTask
from altclip_train.train import train
from conftest import FakeAccelerator, distill_overrides


def test_every_batch_holds_the_replay_share_and_each_new_row_once():
    new, old = np.arange(0, 40), np.arange(100, 106)
    plan = BatchPlan(lengths=np.arange(200) % 7, groups=[new], weights=[1.0], global_batch_size=10, seed=3,
                     replay_groups=[old], replay_weights=[1.0], replay_fraction=0.3)
    batches = plan.global_batches(0)
    assert len(batches) == 40 // 7  # 7 new rows a batch, the tail dropped
    for batch in batches:
        assert len(batch) == 10 and np.isin(batch, old).sum() == 3
    seen_new = np.concatenate([b[np.isin(b, new)] for b in batches])
    assert len(seen_new) == len(set(seen_new.tolist())) == 35
    replayed = Counter(np.concatenate([b[np.isin(b, old)] for b in batches]).tolist())
    assert max(replayed.values()) - min(replayed.values()) <= 1  # cycled evenly when they are fewer
    assert all(np.array_equal(a, b) for a, b in zip(batches, plan._plan(0)))


def test_replay_corpora_fill_their_share_of_every_batch(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    data = ParallelTextData(
        corpora=[{"lang": "fr", "path": str(parallel_dir / "fr.tsv")}], languages=["en", "zh", "fr", "ja"],
        batch_size=10, student=str(tiny_student), teacher=str(tiny_teacher), cache_dir=str(tmp_path), val_size=0,
        num_workers=0, tokenize_num_proc=1,
        replay={"fraction": 0.2, "corpora": [{"lang": "zh", "path": str(parallel_dir / "zh.tsv")},
                                             {"lang": "ja", "path": str(parallel_dir / "ja.tsv")}]})
    data.setup(FakeAccelerator())
    for batch in data.train_batches(0):
        langs = Counter(batch["lang"][10:])  # the translation rows
        assert langs["fr"] == 8 and langs["zh"] + langs["ja"] == 2
    with pytest.raises(ValueError, match=r"data.replay: give corpora and a fraction in \[0, 1\)"):
        ParallelTextData(corpora=[{"lang": "fr", "path": "x"}], languages=["fr"], batch_size=2, student="s",
                         teacher="t", replay={"fraction": 1.5, "corpora": [{"lang": "fr", "path": "y"}]})


def test_a_phase2_model_gives_its_text_tower_to_continue_from(tiny_teacher, tiny_student, tmp_path):
    phase1 = DistillTask(str(tiny_teacher), str(tiny_student)).export(tmp_path / "p1")
    phase2 = save_assembled(str(tiny_teacher), str(phase1), tmp_path / "p2")
    tower = AltCLIPModel.from_pretrained(phase2).text_model.state_dict()
    for source in (phase1, phase2):
        student = build_student(str(source), 64)
        assert isinstance(student, AltCLIPTextModel)
        assert all(torch.equal(student.state_dict()[k], v) for k, v in tower.items())
    with pytest.raises(ValueError, match="has project_dim 64, but the teacher's text width is 32"):
        build_student(str(phase2), 32)


@pytest.mark.slow
def test_phase1_continues_from_a_phase2_model_with_replay(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    phase1 = DistillTask(str(tiny_teacher), str(tiny_student)).export(tmp_path / "p1")
    phase2 = save_assembled(str(tiny_teacher), str(phase1), tmp_path / "p2")
    overrides = distill_overrides(tiny_teacher, phase2, parallel_dir, tmp_path / "run",
                                  "experiment=add_languages", f"model.student_tokenizer={tiny_student}",
                                  f"data.replay.corpora=[{{lang: ja, path: '{parallel_dir / 'ja.tsv'}'}}]")
    final = train(compose_config("distill", overrides))
    assert AltCLIPTextModel.from_pretrained(final).config.altclip_train["distill_target"] == "pre_projection"
    report = json.loads((tmp_path / "run" / "forgetting.json").read_text())
    roles = {row["lang"]: row["role"] for row in report["rows"]}
    assert roles == {"en": "old", "ja": "new", "zh": "new", "fr": "new"}  # ja is both: new wins
    assert report["steps"][0] == 0 and report["steps"][1] > 0
    assert (tmp_path / "run" / "forgetting.png").stat().st_size > 0


def test_the_forgetting_table_compares_the_first_and_last_evaluation(tmp_path):
    records = [{"step": 0, "val/translation_acc/zh": 0.9, "val/translation_acc/hi": 0.1, "val/mse/zh": 0.2},
               {"step": 5, "train/loss": 1.0},
               {"step": 10, "val/translation_acc/zh": 0.7, "val/translation_acc/hi": 0.5, "val/mse/zh": 0.3},
               {"step": 20, "val/translation_acc/zh": 0.8, "val/translation_acc/hi": 0.6, "val/mse/zh": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    table = write_forgetting_report(tmp_path, {"zh": "old", "hi": "new"})
    rows = {(r["metric"], r["lang"]): r for r in table["rows"]}
    assert rows[("val/translation_acc", "zh")]["change"] == pytest.approx(-0.1)
    assert rows[("val/translation_acc", "hi")]["change"] == pytest.approx(0.5)
    assert table["mean_change"]["val/mse/old"] == pytest.approx(0.05) and table["steps"] == [0, 20]
    assert "| val/translation_acc | zh | old | 0.9000 | 0.8000 | -0.1000 |" in (tmp_path / "forgetting.md").read_text()
    (tmp_path / "metrics.jsonl").write_text(json.dumps(records[2]) + "\n")
    with pytest.raises(ValueError, match="needs an evaluation at step 0"):
        write_forgetting_report(tmp_path, {"zh": "old"})
