"""Phase 2 end to end on tiny models: assembly, frozen image side, export round trip, export command,
plain two-tower CLIP training, and the bad inputs that name a wrong model directory."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AltCLIPModel, AltCLIPProcessor, CLIPModel

from altclip_train.cli import compose_config
from altclip_train.data.prepare_wds import prepare_wds
from altclip_train.models.assemble import assemble
from altclip_train.models.student import NotAStudentCheckpoint
from altclip_train.models.tiny import SAMPLE_CAPTIONS, SAMPLE_SENTENCES, build_tiny_clip
from altclip_train.tasks.distill import DistillTask
from altclip_train.tracking import read_metrics
from altclip_train.train import train

LANGS = ("en", "zh", "fr", "ja")


@pytest.fixture(scope="session")
def phase1_dir(tiny_teacher, tiny_student, tmp_path_factory):
    """A phase-1 output (untrained is enough here): AltCLIPTextModel + tokenizer."""
    return DistillTask(str(tiny_teacher), str(tiny_student)).export(tmp_path_factory.mktemp("phase1") / "final")


@pytest.fixture(scope="session")
def pair_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for i in range(32):
        pixels = np.random.default_rng(i).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        for lang in LANGS:
            rows.append({"image": f"{i}.png", "caption": SAMPLE_CAPTIONS[lang][i % 8] + f" {i}", "lang": lang})
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "lang"])
        writer.writeheader()
        writer.writerows(rows)
    prepare_wds(root / "pairs.csv", root / "shards", shard_size=8)
    return root / "shards"


def contrastive_overrides(teacher, student, shards, run_dir, *extra):
    return [f"model.model.teacher={teacher}", f"model.model.student={student}", f"data.shards={shards}",
            f"run_dir={run_dir}", "data.batch_size=8", "data.num_workers=0", "data.languages=[en,zh,fr,ja]",
            "optim.lr=1e-3", "optim.warmup_steps=1", "trainer.max_steps=6", "trainer.log_every=1",
            "trainer.eval_every=0", "trainer.save_every=3", "trainer.eval_at_start=false", "logger=jsonl", *extra]


def run_contrastive(*overrides):
    return train(compose_config("contrastive", list(overrides)))


@pytest.mark.parametrize("image_cache", [True, False])
def test_image_side_stays_bit_identical_and_the_text_side_learns(tiny_teacher, phase1_dir, pair_shards,
                                                                  tmp_path, image_cache):
    final = run_contrastive(*contrastive_overrides(tiny_teacher, phase1_dir, pair_shards, tmp_path / "run",
                                                   f"data.image_cache={str(image_cache).lower()}"))
    trained = AltCLIPModel.from_pretrained(final).state_dict()
    start = assemble(str(tiny_teacher), str(phase1_dir)).state_dict()
    image_side = [k for k in start if k.startswith(("vision_model.", "visual_projection."))]
    assert image_side and all(torch.equal(start[k], trained[k]) for k in image_side)
    assert not torch.equal(start["text_projection.weight"], trained["text_projection.weight"])
    assert not torch.equal(start["text_model.transformation.weight"], trained["text_model.transformation.weight"])
    assert trained["logit_scale"].shape == ()
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "run") if "train/loss" in m]
    assert len(losses) == 6 and min(losses[-2:]) < losses[0]


def test_export_round_trip_gives_the_training_time_logits(tiny_teacher, phase1_dir, pair_shards, tmp_path):
    final = run_contrastive(*contrastive_overrides(tiny_teacher, phase1_dir, pair_shards, tmp_path / "run"))
    model = AltCLIPModel.from_pretrained(final).eval()
    processor = AltCLIPProcessor.from_pretrained(final)
    # The training-time model: the assembled AltCLIP with the last checkpoint's weights.
    reference = assemble(str(tiny_teacher), str(phase1_dir))
    state = load_file(tmp_path / "run" / "checkpoints" / "step-00000006" / "model.safetensors")
    state = {k.removeprefix("model."): v for k, v in state.items()}
    state["logit_scale"] = state["logit_scale"].reshape(())
    reference.load_state_dict(state)
    reference.eval()
    images = [Image.open(pair_shards.parent / f"{i}.png") for i in range(3)]
    texts = [SAMPLE_CAPTIONS["en"][0], SAMPLE_CAPTIONS["zh"][1], SAMPLE_CAPTIONS["ja"][2], SAMPLE_CAPTIONS["fr"][3]]
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        got, want = model(**inputs).logits_per_image, reference(**inputs).logits_per_image
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    # `altclip-train export` on the same checkpoint writes the same model.
    exported = tmp_path / "exported"
    result = subprocess.run([sys.executable, "-m", "altclip_train", "export",
                             str(tmp_path / "run" / "checkpoints" / "step-00000006"), "--output", str(exported)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        again = AltCLIPModel.from_pretrained(exported).eval()(**inputs).logits_per_image
    torch.testing.assert_close(again, want, rtol=0, atol=0)


def test_same_task_trains_a_plain_clip_with_nothing_frozen(tiny_teacher, pair_shards, tmp_path):
    final = run_contrastive(*contrastive_overrides(tiny_teacher, "unused", pair_shards, tmp_path / "run")[2:],
                            "model=clip", f"model.model.config={tiny_teacher}", f"model.tokenizer={tiny_teacher}",
                            f"model.image_processor={tiny_teacher}", "data.image_cache=false", "data.languages=[en]")
    before = CLIPModel.from_pretrained(tiny_teacher).state_dict()
    after = CLIPModel.from_pretrained(final).state_dict()
    for key in ("vision_model.encoder.layers.0.mlp.fc1.weight", "text_model.encoder.layers.0.mlp.fc1.weight",
                "visual_projection.weight", "text_projection.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_phase1_dir_that_is_not_a_phase1_output(tiny_teacher, tmp_path):
    with pytest.raises(NotAStudentCheckpoint, match="no config.json"):
        assemble(str(tiny_teacher), str(tmp_path))
    with pytest.raises(NotAStudentCheckpoint, match="model_type is 'clip'"):
        assemble(str(tiny_teacher), str(tiny_teacher))


def test_teacher_whose_text_width_differs_from_the_students_project_dim(phase1_dir, tmp_path):
    other = build_tiny_clip(tmp_path / "wide", SAMPLE_SENTENCES, hidden=32, heads=2)
    with pytest.raises(ValueError, match="text width of 32 but student .* has project_dim 64"):
        assemble(str(other), str(phase1_dir))


def test_zero_shot_evaluator_runs_during_training_without_validation_shards(tiny_teacher, phase1_dir, pair_shards,
                                                                           tmp_path):
    classes = tmp_path / "classes"
    for lang in ("en", "zh"):
        (classes / "names").mkdir(parents=True, exist_ok=True)
        (classes / "names" / f"{lang}.txt").write_text("\n".join(SAMPLE_CAPTIONS[lang][:2]) + "\n")
    for label in range(2):
        (classes / "images" / str(label)).mkdir(parents=True)
        for i in range(2):
            Image.open(pair_shards.parent / f"{label * 2 + i}.png").save(classes / "images" / str(label) / f"{i}.png")
    evaluator = ("model.evaluator={_target_: altclip_train.evaluate.zeroshot.ZeroShotEvaluator, "
                 f"image_source: '{classes / 'images'}', classnames_dir: '{classes / 'names'}', templates_dir: null, "
                 "languages: [en, zh], transform: {_target_: altclip_train.data.images.ImagePreprocessor.from_pretrained, "
                 f"name_or_path: '{tiny_teacher}'}}, tokenizer: {{_target_: transformers.AutoTokenizer.from_pretrained, "
                 f"pretrained_model_name_or_path: '{phase1_dir}'}}}}")
    run_contrastive(*contrastive_overrides(tiny_teacher, phase1_dir, pair_shards, tmp_path / "run",
                                           "trainer.eval_every=3", "trainer.eval_at_start=true"), evaluator)
    steps = [m["step"] for m in read_metrics(tmp_path / "run") if "eval/zeroshot_top1/zh" in m]
    assert steps == [0, 3, 6]


@pytest.mark.parametrize("image_cache", [True, False])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_teacher, phase1_dir, pair_shards, tmp_path,
                                                               image_cache):
    # Dropout is on in the tiny student, so a DataLoader that drew its seed from the global torch RNG after
    # the checkpoint's RNG state was restored would shift every later mask. A constant schedule keeps the
    # shorter first leg on the long run's learning rates; step 3 is mid-epoch (4 batches per epoch).
    common = (f"data.image_cache={str(image_cache).lower()}", "optim.schedule=constant", "optim.warmup_steps=0",
              "data.language_temperature=0.5")

    def run(name, *extra):
        return run_contrastive(*contrastive_overrides(tiny_teacher, phase1_dir, pair_shards, tmp_path / name,
                                                      *common, *extra))

    straight = run("straight", "trainer.max_steps=7", "trainer.resume=null")
    run("split", "trainer.max_steps=3", "trainer.resume=null")
    resumed = run("split", "trainer.max_steps=7", "trainer.resume=auto")
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="session")
def long_caption_shards(tmp_path_factory):
    """Eight images; one caption is 10,000 characters, far past the tiny text tower's 64 positions."""
    root = tmp_path_factory.mktemp("long_captions")
    rows = []
    for i in range(8):
        Image.fromarray(np.random.default_rng(100 + i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            root / f"{i}.png")
        caption = SAMPLE_CAPTIONS["en"][i]
        rows.append({"image": f"{i}.png", "caption": (caption + " ") * (10_000 // (len(caption) + 1)) if i == 3
                     else caption, "lang": "en"})
    assert max(len(row["caption"]) for row in rows) > 9_900
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "lang"])
        writer.writeheader()
        writer.writerows(rows)
    prepare_wds(root / "pairs.csv", root / "shards", shard_size=2)
    return root / "shards"


@pytest.mark.parametrize("image_cache", [True, False])
def test_a_caption_longer_than_the_text_tower_trains_like_any_other(tiny_teacher, phase1_dir, long_caption_shards,
                                                                    tmp_path, image_cache, capsys):
    configured = 300 + image_cache  # the cap is announced once per (what, configured, cap) in a process
    run_contrastive(*contrastive_overrides(tiny_teacher, phase1_dir, long_caption_shards, tmp_path / "run",
                                           f"data.image_cache={str(image_cache).lower()}", "data.languages=[en]",
                                           f"data.val_shards={long_caption_shards}", "data.eval_batch_size=8",
                                           f"data.max_length={configured}", "trainer.max_steps=2"))
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "run") if "train/loss" in m]
    val = [m["val/loss"] for m in read_metrics(tmp_path / "run") if "val/loss" in m]
    assert len(losses) == 2 and all(np.isfinite(losses)) and val and np.isfinite(val[-1])
    # train() installs its own log handler (on stderr), so the announcement is read from there.
    assert f"max length {configured} is more than the model holds; tokenising to at most 64" in capsys.readouterr().err


@pytest.mark.slow
def test_sigmoid_loss_on_a_clip_teacher_trains_and_its_bias_survives_export(tiny_teacher, phase1_dir, pair_shards,
                                                                           tmp_path):
    """`model.loss=sigmoid` on an AltCLIPModel (which has no bias of its own): the bias the task adds trains,
    is checkpointed, and reaches the export's `config.logit_bias`; checkpoint and final exports agree."""
    from safetensors.torch import load_file

    from altclip_train.export import main as export_main

    run_dir = tmp_path / "run"
    final = run_contrastive(*contrastive_overrides(tiny_teacher, phase1_dir, pair_shards, run_dir,
                                                   "model.loss=sigmoid", "trainer.max_steps=3"))
    state = load_file(run_dir / "checkpoints" / "step-00000003" / "model.safetensors")
    trained_bias = state["logit_bias"].item()
    assert trained_bias != pytest.approx(-10.0, abs=1e-6)  # it moved from SigLIP's initial -10
    assert state["model.logit_scale"].item() != pytest.approx(2.302585, abs=1e-6)
    exported = AltCLIPModel.from_pretrained(final)
    assert exported.config.logit_bias == pytest.approx(trained_bias, rel=1e-6)
    assert exported.logit_scale.item() == pytest.approx(state["model.logit_scale"].item(), rel=1e-6)
    losses = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert export_main([str(run_dir / "checkpoints" / "step-00000003"), "--output", str(tmp_path / "again")]) == 0
    assert AltCLIPModel.from_pretrained(tmp_path / "again").config.logit_bias == pytest.approx(trained_bias, rel=1e-6)


@pytest.mark.slow
def test_phase2_continues_an_earlier_phase2_model_whole_and_refuses_a_foreign_image_side(
        tiny_teacher, phase1_dir, pair_shards, tmp_path):
    """model.model.student=<a phase-2 model> (an earlier final/, BAAI/AltCLIP-m9): the new run starts from that
    model's own text projection and logit scale, not from the teacher's, and its sigmoid bias carries over."""
    from altclip_train.models.teachers import UnsupportedTeacherError

    first = run_contrastive(*contrastive_overrides(tiny_teacher, phase1_dir, pair_shards, tmp_path / "first",
                                                   "model.loss=sigmoid", "trainer.max_steps=3"))
    earlier = AltCLIPModel.from_pretrained(first)
    continued = assemble(str(tiny_teacher), str(first))
    for key, tensor in earlier.state_dict().items():
        assert torch.equal(continued.state_dict()[key], tensor), key
    fresh = assemble(str(tiny_teacher), str(phase1_dir))
    assert not torch.equal(fresh.text_projection.weight, continued.text_projection.weight)

    task = compose_config("contrastive", contrastive_overrides(tiny_teacher, first, pair_shards, tmp_path / "second",
                                                               "model.loss=sigmoid"))
    from hydra.utils import instantiate

    second = instantiate(task.model, _convert_="all")
    assert second.logit_bias.item() == pytest.approx(earlier.config.logit_bias)
    assert second.model.logit_scale.item() == pytest.approx(earlier.logit_scale.item())  # not reset to log 10

    other = build_tiny_clip(tmp_path / "other_teacher", SAMPLE_SENTENCES, seed=7)
    with pytest.raises(UnsupportedTeacherError, match="its image side is not teacher"):
        assemble(str(other), str(first))


@pytest.mark.slow
def test_a_phase2_run_growing_new_languages_writes_the_forgetting_report(tiny_teacher, phase1_dir, pair_shards,
                                                                         tmp_path):
    """data.new_languages: the evaluator runs before the first step and at the end, and forgetting.json holds
    its per-language zero-shot accuracy, old and new languages apart."""
    import json

    from omegaconf import OmegaConf

    from altclip_train.assets import tiny_asset

    data = tiny_asset("data")
    cfg = compose_config("contrastive", contrastive_overrides(
        tiny_teacher, phase1_dir, pair_shards, tmp_path / "run", "trainer.max_steps=2", "data.new_languages=[ja]"))
    OmegaConf.update(cfg, "model.evaluator", {
        "_target_": "altclip_train.evaluate.zeroshot.ZeroShotEvaluator", "image_source": f"{data}/images/test",
        "classnames_dir": f"{data}/eval/classnames", "templates_dir": f"{data}/eval/templates",
        "languages": ["en", "zh", "ja"], "batch_size": 64,
        "transform": {"_target_": "altclip_train.data.images.ImagePreprocessor.from_pretrained",
                      "name_or_path": str(tiny_teacher)},
        "tokenizer": {"_target_": "transformers.AutoTokenizer.from_pretrained",
                      "pretrained_model_name_or_path": str(phase1_dir)}}, force_add=True)
    train(cfg)
    report = json.loads((tmp_path / "run" / "forgetting.json").read_text())
    roles = {row["lang"]: row["role"] for row in report["rows"]}
    assert roles == {"en": "old", "zh": "old", "ja": "new"}
    metrics = [m for m in read_metrics(tmp_path / "run") if any(k.endswith("/ja") for k in m)]
    assert metrics[0]["step"] == 0 and metrics[-1]["step"] == 2
    for row in report["rows"]:
        key = f"{row['metric']}/{row['lang']}"
        assert row["before"] == metrics[0][key] and row["after"] == metrics[-1][key]
    assert (tmp_path / "run" / "forgetting.md").is_file() and (tmp_path / "run" / "forgetting.png").is_file()
    from altclip_train.data.image_text import ImageTextData

    with pytest.raises(ValueError, match=r"data.new_languages=\['hi'\] are not in data.languages"):
        ImageTextData(shards=str(pair_shards), tokenizer=str(phase1_dir), image_processor=str(tiny_teacher),
                      image_model=str(tiny_teacher), languages=["en", "zh"], new_languages=["hi"])
