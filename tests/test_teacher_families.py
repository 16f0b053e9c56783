"""Every teacher family against its authors' own code: targets equal what the family's transformers model
returns when used as documented, pixels equal `AutoProcessor`'s, phase 2 starts from the teacher's own tensors
and loss, exports reload to the training-time embeddings, and an unknown family is refused in one line."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer, CLIPModel, CLIPTextModel, Siglip2Model,
                          SiglipModel)

from altclip_train.cli import compose_config
from altclip_train.data.parallel import ParallelTextData
from altclip_train.data.prepare_wds import prepare_wds
from altclip_train.models.assemble import assemble
from altclip_train.models.teachers import UnsupportedTeacherError, image_preprocessor, load_teacher
from altclip_train.models.tiny import SAMPLE_CAPTIONS, SAMPLE_SENTENCES, build_tiny_clip, build_tiny_siglip
from altclip_train.tasks.distill import DistillTask
from altclip_train.train import train
from conftest import REPO, FakeAccelerator

LANGS = ("en", "zh", "fr")
# Upper case, punctuation and a sentence longer than SigLIP's 64 tokens: the tokenizer settings all matter.
ENGLISH = ["A Dog, running on the BEACH!", "two cats.", ("A red car is parked on the street " * 12).strip(),
           *SAMPLE_CAPTIONS["en"]]
# Non-square sizes where rounding and flooring the resized short side disagree (115x157 is one).
IMAGE_SIZES = [(115, 157), (157, 115), (31, 200), (200, 31), (64, 33), (33, 64), (97, 61), (300, 299), (45, 45),
               (17, 90)]


@pytest.fixture(scope="session")
def siglip_teacher(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("siglip") / "teacher", [*SAMPLE_SENTENCES, *ENGLISH])


@pytest.fixture(scope="session")
def naflex_teacher(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("siglip2") / "teacher", SAMPLE_SENTENCES, naflex=True)


@pytest.fixture(scope="session")
def projected_clip(tmp_path_factory):
    """A CLIP whose projection (48) is narrower than its text width (64), so the two targets cannot pass for
    each other by shape."""
    return build_tiny_clip(tmp_path_factory.mktemp("clip48") / "teacher", SAMPLE_SENTENCES, projection_dim=48)


def corpus(tmp_path):
    rows = ["en\tzh"] + [f"{en}\t{zh}" for en, zh in zip(ENGLISH, SAMPLE_CAPTIONS["zh"] * 2)]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "zh.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return [{"lang": "zh", "path": str(path)}]


def cached_targets(teacher, student, tmp_path, **kwargs) -> dict[str, np.ndarray]:
    """English sentence -> its target as the phase-1 data module serves it (from the teacher cache)."""
    data = ParallelTextData(corpora=corpus(tmp_path), languages=list(LANGS), batch_size=1, student=str(student),
                            teacher=str(teacher), cache_dir=str(tmp_path / "cache"), val_size=0, num_workers=0,
                            tokenize_num_proc=1, **kwargs)
    data.setup(FakeAccelerator())
    served = {}
    for batch in data.train_batches(0):
        n = len(batch["lang"]) // 2
        for text, vector in zip(data.source_texts(batch["source_index"][:n].numpy()), batch["teacher_embeds"][:n]):
            served[text] = vector.float().numpy()
    return served


def reference(model_output) -> np.ndarray:
    return model_output.pooler_output.detach().float().numpy()


# ------------------------------------------------------------------------------------------ phase-1 targets
def test_clip_targets_are_the_pooled_end_of_text_state_or_the_projected_embedding(projected_clip, tiny_student,
                                                                                  tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(projected_clip)
    texts = sorted(set(ENGLISH))
    tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        pooled = reference(CLIPTextModel.from_pretrained(projected_clip)(**tokens))
        projected = reference(CLIPModel.from_pretrained(projected_clip).get_text_features(**tokens))
    assert pooled.shape[1] == 64 and projected.shape[1] == 48

    for target, expected in (("pre_projection", pooled), ("embedding", projected)):
        served = cached_targets(projected_clip, tiny_student, tmp_path / target, distill_target=target)
        got = np.stack([served[text] for text in texts])
        np.testing.assert_allclose(got, expected, atol=2e-3, rtol=2e-3)  # the cache holds float16
        assert load_teacher(str(projected_clip), target).text_dim == expected.shape[1]
    assert load_teacher(str(projected_clip)).distill_target == "pre_projection"


def test_siglip_targets_equal_get_text_features_with_the_authors_padding(siglip_teacher, tiny_student, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(siglip_teacher)
    texts = sorted(set(ENGLISH))
    model = SiglipModel.from_pretrained(siglip_teacher).eval()
    with torch.no_grad():
        expected = reference(model.get_text_features(
            **tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")))
        # What a CLIP-style reader would get for short texts: padding per batch. It must differ from the
        # authors' fixed width, or this test proves nothing.
        short = [text for text in texts if len(text) < 60]
        per_batch = reference(model.get_text_features(**tokenizer(short, padding=True, return_tensors="pt")))
        fixed = reference(model.get_text_features(**tokenizer(short, padding="max_length", return_tensors="pt")))
    assert np.abs(per_batch - fixed).max() > 1e-2

    teacher = load_teacher(str(siglip_teacher))
    assert (teacher.family, teacher.distill_target, teacher.text_dim, teacher.text_max_length) == \
        ("siglip", "embedding", 48, 64)
    np.testing.assert_allclose(teacher.encode_texts(texts), expected, atol=1e-5, rtol=1e-5)
    served = cached_targets(siglip_teacher, tiny_student, tmp_path)
    np.testing.assert_allclose(np.stack([served[text] for text in texts]), expected, atol=2e-3, rtol=2e-3)

    with torch.no_grad():
        hidden = model.text_model(**tokenizer(texts, padding="max_length", truncation=True,
                                              return_tensors="pt")).last_hidden_state[:, -1].numpy()
    before_head = load_teacher(str(siglip_teacher), "pre_projection")
    assert before_head.text_dim == 64
    np.testing.assert_allclose(before_head.encode_texts(texts), hidden, atol=1e-5, rtol=1e-5)


def test_siglip2_text_targets_and_its_image_side_is_refused_in_one_line(naflex_teacher):
    tokenizer = AutoTokenizer.from_pretrained(naflex_teacher)
    with torch.no_grad():
        expected = reference(Siglip2Model.from_pretrained(naflex_teacher).get_text_features(
            **tokenizer(ENGLISH, padding="max_length", truncation=True, return_tensors="pt")))
    teacher = load_teacher(str(naflex_teacher))
    np.testing.assert_allclose(teacher.encode_texts(ENGLISH), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(UnsupportedTeacherError, match=r"^teacher .*: SigLIP 2 NaFlex .* phase 1 works") as error:
        teacher.image_processor()
    assert "\n" not in str(error.value)


def test_the_teacher_cache_key_follows_family_identity_and_target(projected_clip, siglip_teacher):
    keys = {json.dumps(load_teacher(str(path), target).identity(), sort_keys=True)
            for path in (projected_clip, siglip_teacher) for target in ("pre_projection", "embedding")}
    assert len(keys) == 4


def test_an_unknown_family_is_refused_in_one_line_before_any_weight_loads(tmp_path, tiny_student, parallel_dir):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(UnsupportedTeacherError, match=r"model_type 'bert' belongs to no supported teacher family; "
                                                      r"supported: clip \(clip/altclip\), siglip \(siglip/siglip2\)"):
        load_teacher(str(tmp_path / "bert"))
    from conftest import distill_overrides

    result = subprocess.run([sys.executable, "-m", "altclip_train", "distill",
                             *distill_overrides(tmp_path / "bert", tiny_student, parallel_dir, tmp_path / "run")],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("altclip-train: error:")]
    assert len(lines) == 1 and "model_type 'bert'" in lines[0] and "Traceback" not in result.stderr


def test_weights_that_do_not_fit_the_family_class_are_refused(tmp_path, siglip_teacher):
    """A checkpoint claiming to be SigLIP whose weights are CLIP's must not load with random holes."""
    import shutil

    fake = tmp_path / "fake"
    shutil.copytree(siglip_teacher, fake)
    clip = build_tiny_clip(tmp_path / "clip", SAMPLE_SENTENCES)
    shutil.copyfile(clip / "model.safetensors", fake / "model.safetensors")
    with pytest.raises(UnsupportedTeacherError, match=r"SiglipTextModel does not fit this checkpoint's weights: "
                                                      r"(\d+ missing|tensor shapes differ)"):
        load_teacher(str(fake)).load_text_encoder()


# ------------------------------------------------------------------------------------------ preprocessing
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_pixels_equal_the_exported_processor_bit_for_bit(family, tiny_teacher, siglip_teacher):
    source = tiny_teacher if family == "clip" else siglip_teacher
    ours = load_teacher(str(source)).image_processor()
    processor = AutoProcessor.from_pretrained(source)
    rng = np.random.default_rng(0)
    for width, height in IMAGE_SIZES:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        want = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(ours(image), want), (family, width, height)
        encoded = _png(image)
        assert torch.equal(ours(encoded), want)  # the shard path: encoded bytes
    grey = Image.fromarray(rng.integers(0, 256, (40, 70), dtype=np.uint8), mode="L")
    assert torch.equal(ours(grey), processor(images=grey, return_tensors="pt")["pixel_values"][0])
    assert image_preprocessor(str(source)).fingerprint() == ours.fingerprint()


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_preprocessing_identity_is_in_the_image_cache_key(tiny_teacher, tmp_path):
    from altclip_train.data.image_cache import describe_image_encoder
    from altclip_train.data.images import ImagePreprocessor, clip_preprocessor

    own = image_preprocessor(str(tiny_teacher))
    assert describe_image_encoder(str(tiny_teacher), own, "float32") != \
        describe_image_encoder(str(tiny_teacher), clip_preprocessor(own.image_size[0] * 2), "float32")
    own.save_pretrained(tmp_path)
    assert ImagePreprocessor.from_pretrained(str(tmp_path)).fingerprint() == own.fingerprint()


# ------------------------------------------------------------------------------------------ phase 2 + export
@pytest.fixture(scope="session")
def siglip_phase1(siglip_teacher, tiny_student, tmp_path_factory):
    return DistillTask(str(siglip_teacher), str(tiny_student)).export(tmp_path_factory.mktemp("sig1") / "final")


@pytest.fixture(scope="session")
def square_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for i in range(16):
        size = (40 + 3 * i, 32 + 5 * (i % 4))  # non-square, so the processor's resize is exercised
        pixels = np.random.default_rng(i).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        for lang in ("en", "zh"):
            rows.append({"image": f"{i}.png", "caption": SAMPLE_CAPTIONS[lang][i % 8] + f" {i}", "lang": lang})
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "lang"])
        writer.writeheader()
        writer.writerows(rows)
    prepare_wds(root / "pairs.csv", root / "shards", shard_size=8)
    return root


def test_siglip_phase2_model_is_the_teachers_own_tensors(siglip_teacher, siglip_phase1):
    teacher = SiglipModel.from_pretrained(siglip_teacher)
    model = assemble(str(siglip_teacher), str(siglip_phase1))
    assert type(model).__name__ == "AltCLIPSiglipModel"
    for name, tensor in teacher.vision_model.state_dict().items():
        assert torch.equal(model.vision_model.state_dict()[name], tensor), name
    student = AutoModel.from_pretrained(siglip_phase1, trust_remote_code=True).state_dict()
    assert all(torch.equal(model.text_model.state_dict()[k], v) for k, v in student.items())
    # An `embedding` student already speaks SigLIP's space: its projection starts as the identity.
    assert torch.equal(model.text_projection.weight, torch.eye(48)) and not model.text_projection.bias.any()
    assert model.logit_scale.item() == pytest.approx(math.log(10)) and model.logit_bias.item() == -10.0


def test_siglip_pre_projection_student_gets_the_teachers_head(siglip_teacher, tiny_student, tmp_path):
    phase1 = DistillTask(str(siglip_teacher), str(tiny_student), distill_target="pre_projection").export(
        tmp_path / "final")
    model = assemble(str(siglip_teacher), str(phase1))
    head = SiglipModel.from_pretrained(siglip_teacher).text_model.head
    assert torch.equal(model.text_projection.weight, head.weight) and torch.equal(model.text_projection.bias,
                                                                                  head.bias)
    with pytest.raises(UnsupportedTeacherError, match="model.distill_target=embedding but student .* was "
                                                      "distilled to pre_projection"):
        assemble(str(siglip_teacher), str(phase1), distill_target="embedding")


def test_clip_embedding_student_gets_an_identity_text_projection(projected_clip, tiny_student, tmp_path):
    phase1 = DistillTask(str(projected_clip), str(tiny_student), distill_target="embedding").export(tmp_path / "p1")
    model = assemble(str(projected_clip), str(phase1))
    clip = CLIPModel.from_pretrained(projected_clip)
    assert torch.equal(model.text_projection.weight, torch.eye(48))
    assert torch.equal(model.visual_projection.weight, clip.visual_projection.weight)
    default = DistillTask(str(projected_clip), str(tiny_student)).export(tmp_path / "p2")
    assert torch.equal(assemble(str(projected_clip), str(default)).text_projection.weight, clip.text_projection.weight)


@pytest.mark.slow
def test_siglip_phase2_end_to_end_cache_loss_export_and_pipeline(siglip_teacher, siglip_phase1, square_shards,
                                                                tmp_path):
    from altclip_train.data.image_cache import build_image_cache
    from altclip_train.tracking import read_metrics

    teacher = SiglipModel.from_pretrained(siglip_teacher).eval()
    processor = AutoProcessor.from_pretrained(siglip_teacher)
    shards = square_shards / "shards"
    cache = build_image_cache(str(shards), str(siglip_teacher), cache_dir=tmp_path / "cache", num_workers=0,
                              device="cpu")
    images = [Image.open(square_shards / f"{i}.png") for i in range(16)]
    with torch.no_grad():
        expected = reference(teacher.get_image_features(**processor(images=images, return_tensors="pt")))
    # prepare-wds numbers samples in the order their images first appear: key i is image i.
    rows = np.argsort([int(key) for key in cache.index.keys(0, cache.index.num_rows)])
    np.testing.assert_allclose(np.asarray(cache.embeddings, dtype=np.float32)[rows], expected, atol=2e-3, rtol=2e-3)

    overrides = [f"model.model.teacher={siglip_teacher}", f"model.model.student={siglip_phase1}",
                 f"data.shards={shards}", f"run_dir={tmp_path / 'run'}", "data.batch_size=8", "data.num_workers=0",
                 "data.languages=[en,zh]", f"data.cache_dir={tmp_path / 'cache'}", "optim.lr=1e-3",
                 "optim.warmup_steps=1", "trainer.max_steps=4", "trainer.log_every=1", "trainer.eval_every=0",
                 "trainer.save_every=4", "trainer.eval_at_start=false", "logger=jsonl"]
    final = train(compose_config("contrastive", overrides))
    cfg = compose_config("contrastive", overrides)
    assert cfg.model.loss is None
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "run") if "train/loss" in m]
    assert len(losses) == 4

    # The training-time model: assembled, with the last checkpoint's weights.
    live = assemble(str(siglip_teacher), str(siglip_phase1))
    state = {k.removeprefix("model."): v for k, v in
             load_file(tmp_path / "run" / "checkpoints" / "step-00000004" / "model.safetensors").items()}
    state = {k: v.reshape(()) if k in ("logit_scale", "logit_bias") else v for k, v in state.items()}
    live.load_state_dict(state)
    live.eval()
    exported = AutoModel.from_pretrained(final, trust_remote_code=True).eval()
    assert type(exported).__name__ == "AltCLIPSiglipModel"
    tokenizer = AutoTokenizer.from_pretrained(final)
    texts = [SAMPLE_CAPTIONS["en"][0], SAMPLE_CAPTIONS["zh"][1], SAMPLE_CAPTIONS["fr"][2]]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    pixels = AutoImageProcessor.from_pretrained(final)(images=images[:3], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        for name in ("get_text_features", "get_image_features"):
            args = tokens if name == "get_text_features" else {"pixel_values": pixels}
            a, b = reference(getattr(exported, name)(**args)), reference(getattr(live, name)(**args))
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    assert exported.logit_bias.item() == pytest.approx(state["logit_bias"].item())

    from transformers import pipeline

    classify = pipeline("zero-shot-image-classification", model=str(final), trust_remote_code=True)
    scores = classify(images[0], candidate_labels=["ein Hund", "un chat", "一辆车"])
    assert len(scores) == 3 and all(0 <= s["score"] <= 1 for s in scores)



def test_eval_reads_a_siglip_teacher_at_its_fixed_width(siglip_teacher):
    from altclip_train.evaluate.models import embed_texts, load_eval_model

    loaded = load_eval_model(str(siglip_teacher))
    texts = ["a dog", "two cats sleep on the sofa", "A red car!"]
    got = embed_texts(loaded.model, loaded.tokenizer, texts, torch.device("cpu"), batch_size=2,
                      max_length=loaded.max_length, amp=False)
    tokens = AutoTokenizer.from_pretrained(siglip_teacher)(texts, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        want = torch.nn.functional.normalize(SiglipModel.from_pretrained(siglip_teacher).get_text_features(
            **tokens).pooler_output, dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_without_the_open_clip_extra_an_open_clip_teacher_is_refused_in_one_line(tmp_path, tiny_student,
                                                                                 parallel_dir):
    """The project imports and runs without open_clip; naming an open_clip teacher says how to install it."""
    import importlib.util

    if importlib.util.find_spec("open_clip") is not None:
        pytest.skip("open_clip is installed here (the interop venv): tests/interop covers the family")
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text("{}")
    for name in ("open_clip:ViT-B-32@laion2b_s34b_b79k", "hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                 str(tmp_path / "oc")):
        with pytest.raises(UnsupportedTeacherError, match=r"pip install 'altclip-train\[open_clip\]'"):
            load_teacher(name)
    from conftest import distill_overrides

    result = subprocess.run([sys.executable, "-m", "altclip_train", "distill",
                             *distill_overrides(tmp_path / "oc", tiny_student, parallel_dir, tmp_path / "run")],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "open_clip extra" in result.stderr and "Traceback" not in result.stderr
