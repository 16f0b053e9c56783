"""The open_clip teacher family against open_clip itself (run in the interop venv: `make test-interop`).

Targets equal `model.encode_text(open_clip.get_tokenizer(name)(texts))`, pixels equal open_clip's own
`preprocess`, image vectors equal `encode_image`, phase 2 starts from the teacher's own tensors, and the
open_clip-format export of a trained model, loaded by `open_clip.create_model_and_transforms`, gives the
training-time model's embeddings; so does the export of a CLIP-teacher (`AltCLIPModel`) run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

open_clip = pytest.importorskip("open_clip")

from altclip_train.cli import compose_config  # noqa: E402
from altclip_train.models.assemble import assemble  # noqa: E402
from altclip_train.models.open_clip_format import OpenClipExportError, export_open_clip  # noqa: E402
from altclip_train.models.teachers import UnsupportedTeacherError, load_teacher  # noqa: E402
from altclip_train.models.tiny import SAMPLE_CAPTIONS, build_tiny_open_clip  # noqa: E402
from altclip_train.tasks.distill import DistillTask  # noqa: E402

ENGLISH = ["A Dog, running on the BEACH!", "two cats.", ("A red car is parked on the street " * 6).strip(),
           *SAMPLE_CAPTIONS["en"]]
IMAGE_SIZES = [(115, 157), (157, 115), (31, 200), (200, 31), (64, 33), (33, 64), (97, 61), (45, 45)]


def reference_model(teacher):
    model = open_clip.create_model(f"local-dir:{teacher}")
    return model.eval().requires_grad_(False)  # frozen, as the adapter runs it (same attention kernels)


@pytest.fixture(scope="session")
def oc_teacher(tmp_path_factory):
    return build_tiny_open_clip(tmp_path_factory.mktemp("oc") / "teacher")


@pytest.fixture(scope="session")
def oc_phase1(oc_teacher, tiny_student, tmp_path_factory):
    return DistillTask(str(oc_teacher), str(tiny_student)).export(tmp_path_factory.mktemp("oc1") / "final")


def targets(teacher, distill_target, texts):
    adapter = load_teacher(str(teacher), distill_target)
    tokens = adapter.text_tokenizer()(texts, padding=True, return_tensors="pt")
    return adapter.load_text_encoder()(tokens["input_ids"], tokens["attention_mask"])


def test_targets_are_encode_text_with_open_clips_tokenizer_or_the_state_before_its_projection(oc_teacher):
    model, tokenizer = reference_model(oc_teacher), open_clip.get_tokenizer(f"local-dir:{oc_teacher}")
    adapter = load_teacher(str(oc_teacher))
    assert adapter.family == "open_clip" and adapter.distill_target == "pre_projection" and adapter.text_dim == 40
    with torch.no_grad():
        embedding = model.encode_text(tokenizer(ENGLISH))
        short = model.encode_text(tokenizer(ENGLISH[:2]))
    # A batch of short texts arrives narrower than the context: it is laid out at open_clip's width again.
    torch.testing.assert_close(targets(oc_teacher, "embedding", ENGLISH[:2]), short, atol=1e-6, rtol=0)
    ours = targets(oc_teacher, "embedding", ENGLISH)
    assert ours.shape == (len(ENGLISH), 24)
    torch.testing.assert_close(ours, embedding, atol=1e-6, rtol=0)
    pre = targets(oc_teacher, "pre_projection", ENGLISH)
    assert pre.shape == (len(ENGLISH), 40)
    torch.testing.assert_close(pre.double() @ model.text_projection.double(), embedding.double(), atol=1e-5, rtol=0)
    assert not torch.allclose(pre[:, :24], embedding, atol=1e-3)  # not the embedding padded out


def test_the_phase1_data_module_serves_encode_text_from_its_cache(oc_teacher, tiny_student, tmp_path):
    from altclip_train.data.parallel import ParallelTextData
    from conftest import FakeAccelerator

    rows = ["en\tzh"] + [f"{en}\t{zh}" for en, zh in zip(ENGLISH, SAMPLE_CAPTIONS["zh"] * 2)]
    (tmp_path / "zh.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = ParallelTextData(corpora=[{"lang": "zh", "path": str(tmp_path / "zh.tsv")}], languages=["en", "zh"],
                            batch_size=1, student=str(tiny_student), teacher=str(oc_teacher),
                            cache_dir=str(tmp_path / "cache"), val_size=0, num_workers=0, tokenize_num_proc=2)
    data.setup(FakeAccelerator())
    served = {}
    for batch in data.train_batches(0):
        n = len(batch["lang"]) // 2
        for text, vector in zip(data.source_texts(batch["source_index"][:n].numpy()), batch["teacher_embeds"][:n]):
            served[text] = vector.float()
    model, tokenizer = reference_model(oc_teacher), open_clip.get_tokenizer(f"local-dir:{oc_teacher}")
    assert set(served) == set(ENGLISH)
    with torch.no_grad():
        for text, vector in served.items():
            # The default target is the state before the projection: projected, it is encode_text (the
            # cache stores float16, hence the tolerance).
            embedding = model.encode_text(tokenizer([text]))[0]
            assert vector.shape == (40,)
            torch.testing.assert_close(vector @ model.text_projection, embedding, atol=2e-3, rtol=2e-3)


def test_a_long_sentence_is_cut_as_open_clip_cuts_it(oc_teacher):
    tokenizer = load_teacher(str(oc_teacher)).text_tokenizer()
    theirs = open_clip.get_tokenizer(f"local-dir:{oc_teacher}")(ENGLISH)
    rows = tokenizer(ENGLISH)["input_ids"]
    assert max(len(row) for row in rows) == 16  # the context length, end-of-text kept last
    for row, full in zip(rows, theirs):
        assert full[:len(row)].tolist() == row and not full[len(row):].any()


def test_pixels_and_image_vectors_are_open_clips_own(oc_teacher):
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{oc_teacher}")
    adapter = load_teacher(str(oc_teacher))
    ours = adapter.image_processor()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in IMAGE_SIZES]
    images.append(images[0].convert("L"))
    for image in images:
        assert torch.equal(ours(image), preprocess(image)), image.size
    pixels = torch.stack([preprocess(image) for image in images])
    with torch.no_grad():
        assert torch.equal(adapter.load_image_encoder()(pixels), reference_model(oc_teacher).encode_image(pixels))
    assert adapter.identity(with_preprocessing=True)["preprocessing"] == ours.fingerprint()


def test_cache_keys_follow_target_and_checkpoint(oc_teacher, tmp_path):
    base = load_teacher(str(oc_teacher)).identity()
    assert load_teacher(str(oc_teacher), "embedding").identity() != base
    other = build_tiny_open_clip(tmp_path / "other", seed=1)
    assert load_teacher(str(other)).identity()["checkpoint"] != base["checkpoint"]


def test_weights_that_do_not_fit_the_config_are_refused_in_one_line(oc_teacher, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((oc_teacher / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["layers"] = 3
    (broken / "open_clip_config.json").write_text(json.dumps(config))
    (broken / "open_clip_model.safetensors").write_bytes((oc_teacher / "open_clip_model.safetensors").read_bytes())
    with pytest.raises(UnsupportedTeacherError, match="open_clip cannot load it") as error:
        load_teacher(str(broken)).load_image_encoder()
    assert "\n" not in str(error.value)
    with pytest.raises(UnsupportedTeacherError, match="open_clip:MODEL@PRETRAINED"):
        load_teacher("open_clip:ViT-B-32")


def test_phase2_model_is_the_teachers_own_tensors_and_loss(oc_teacher, oc_phase1, tmp_path):
    teacher = reference_model(oc_teacher)
    model = assemble(str(oc_teacher), str(oc_phase1))
    assert type(model).__name__ == "AltCLIPOpenClipModel"
    for name, tensor in teacher.visual.state_dict().items():
        assert torch.equal(model.vision_model.state_dict()[name], tensor), name
    assert torch.equal(model.text_projection.weight, teacher.text_projection.T)
    assert model.logit_scale.item() == teacher.logit_scale.item()
    assert load_teacher(str(oc_teacher)).contrastive_loss == ("clip", {})
    sigmoid = build_tiny_open_clip(tmp_path / "sig", sigmoid=True)
    assert load_teacher(str(sigmoid)).contrastive_loss == ("sigmoid", {})


def embeddings(model, tokens, pixels):
    with torch.no_grad():
        text = model.get_text_features(**tokens).pooler_output
        image = model.get_image_features(pixel_values=pixels).pooler_output
    return text, image


@pytest.mark.slow
def test_phase2_end_to_end_and_the_open_clip_export_reloads_to_the_training_time_embeddings(
        oc_teacher, oc_phase1, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from altclip_train.data.prepare_wds import prepare_wds
    from altclip_train.export import main as export_main
    from altclip_train.train import train

    import csv
    root = tmp_path / "pairs"
    root.mkdir()
    rows = []
    for i in range(16):
        pixels = np.random.default_rng(i).integers(0, 256, size=(32 + 5 * (i % 4), 40 + 3 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        for lang in ("en", "zh"):
            rows.append({"image": f"{i}.png", "caption": SAMPLE_CAPTIONS[lang][i % 8] + f" {i}", "lang": lang})
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "lang"])
        writer.writeheader()
        writer.writerows(rows)
    prepare_wds(root / "pairs.csv", root / "shards", shard_size=8)
    overrides = [f"model.model.teacher={oc_teacher}", f"model.model.student={oc_phase1}",
                 f"data.shards={root / 'shards'}", f"run_dir={tmp_path / 'run'}", "data.batch_size=8",
                 "data.num_workers=0", "data.languages=[en,zh]", f"data.cache_dir={tmp_path / 'cache'}",
                 "optim.lr=1e-3", "optim.warmup_steps=1", "trainer.max_steps=3", "trainer.log_every=1",
                 "trainer.eval_every=0", "trainer.save_every=3", "trainer.eval_at_start=false", "logger=jsonl"]
    final = train(compose_config("contrastive", overrides))
    assert (final / "open_clip_config.json").is_file()

    live = assemble(str(oc_teacher), str(oc_phase1))
    state = {k.removeprefix("model."): v for k, v in
             load_file(tmp_path / "run" / "checkpoints" / "step-00000003" / "model.safetensors").items()}
    live.load_state_dict({k: v.reshape(()) if k in ("logit_scale", "logit_bias") else v for k, v in state.items()})
    live.eval()
    assert not torch.equal(live.text_model.transformation.weight,
                           assemble(str(oc_teacher), str(oc_phase1)).text_model.transformation.weight)

    out = tmp_path / "oc_export"
    assert export_main([str(final), "--format", "open_clip", "--output", str(out)]) == 0
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    texts = [SAMPLE_CAPTIONS["en"][0], SAMPLE_CAPTIONS["zh"][1], SAMPLE_CAPTIONS["fr"][2]]
    images = [Image.open(root / f"{i}.png") for i in range(3)]
    pixels = torch.stack([preprocess(image) for image in images])
    ours = AutoTokenizer.from_pretrained(final)(texts, padding=True, return_tensors="pt")
    text, image = embeddings(live, ours, pixels)
    with torch.no_grad():
        their_text, their_image = model.encode_text(tokenizer(texts)), model.encode_image(pixels)
    print("open_clip export parity: text max |d|", (their_text - text).abs().max().item(),
          "image max |d|", (their_image - image).abs().max().item())
    torch.testing.assert_close(their_text, text, atol=1e-4, rtol=0)
    torch.testing.assert_close(their_image, image, atol=1e-4, rtol=0)
    assert model.logit_scale.item() == pytest.approx(live.logit_scale.item())
    card = (out / "README.md").read_text()
    assert "open_clip" in card

    # --push-to-hub uploads a copy whose text tower names the repo (where config.json and the tokenizer will be);
    # the local export keeps naming itself.
    import altclip_train.export as export_module

    pushed = {}

    def fake_push(folder, repo_id, private=False):
        pushed["config"] = json.loads((Path(folder) / "open_clip_config.json").read_text())
        pushed["card"] = (Path(folder) / "README.md").read_text()
        return "https://huggingface.co/org/name/commit/0"

    monkeypatch.setattr(export_module, "push_to_hub", fake_push)
    assert export_main([str(final), "--format", "open_clip", "--output", str(out), "--push-to-hub", "org/name"]) == 0
    text_cfg = pushed["config"]["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == text_cfg["hf_tokenizer_name"] == "org/name"
    assert 'create_model_and_transforms("hf-hub:org/name")' in pushed["card"]
    local = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert local["hf_model_name"] == str(out.resolve())


@pytest.mark.slow
def test_a_clip_teacher_run_exports_to_open_clip_format_with_equal_embeddings(tiny_teacher, tiny_student, tmp_path):
    from transformers import AltCLIPModel, AutoImageProcessor, AutoTokenizer

    from altclip_train.models.assemble import save_assembled

    phase1 = DistillTask(str(tiny_teacher), str(tiny_student)).export(tmp_path / "p1")
    altclip_dir = save_assembled(str(tiny_teacher), str(phase1), tmp_path / "altclip")
    altclip = AltCLIPModel.from_pretrained(altclip_dir).eval()
    with torch.no_grad():  # a trained-looking head: a non-zero transformation bias must survive the fold
        altclip.text_model.transformation.bias.normal_()
        altclip.text_model.pre_LN.weight.uniform_(0.5, 1.5)
        altclip.text_model.pre_LN.bias.normal_()
    altclip.save_pretrained(altclip_dir)
    out = export_open_clip(altclip_dir, tmp_path / "oc")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    texts = [SAMPLE_CAPTIONS["en"][0], SAMPLE_CAPTIONS["ja"][1], "a much longer caption " * 5]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in IMAGE_SIZES[:4]]
    pixels = torch.stack([preprocess(image) for image in images])
    tokens = AutoTokenizer.from_pretrained(altclip_dir)(texts, padding=True, truncation=True, max_length=64,
                                                        return_tensors="pt")  # open_clip cuts at 64 too
    text, image = embeddings(altclip, tokens, pixels)
    with torch.no_grad():
        their_text = model.encode_text(open_clip.get_tokenizer(f"local-dir:{out}")(texts))
        their_image = model.encode_image(pixels)
    print("AltCLIPModel -> open_clip parity: text max |d|", (their_text - text).abs().max().item(),
          "image max |d|", (their_image - image).abs().max().item())
    torch.testing.assert_close(their_text, text, atol=1e-4, rtol=0)
    torch.testing.assert_close(their_image, image, atol=1e-4, rtol=0)
    # open_clip's preprocess is the exported processor's, resize and crop (torchvision rounds the crop
    # offset where transformers floors it, so pixels may differ by one crop row on odd margins).
    processor = AutoImageProcessor.from_pretrained(altclip_dir)
    assert list(preprocess(images[0]).shape[1:]) == [processor.crop_size.height, processor.crop_size.width]
    theirs = processor(images=images, return_tensors="pt")["pixel_values"]
    print("CLIP pixels, open_clip preprocess vs CLIPImageProcessor: max |d|", (theirs - pixels).abs().max().item())




@pytest.mark.slow
def test_laion_recipes_on_a_tiny_open_clip_teacher(oc_teacher, tmp_path):
    """The experiments `laion_xlmr_vit_h14_{distill,contrastive}` chained on the debug settings, as a user would
    (tests/test_experiments.py runs every other experiment the same way)."""
    from altclip_train.assets import tiny_asset
    from test_experiments import run_experiment

    corpora = ",".join(f"{{lang: {lang}, path: '{tiny_asset('data')}/parallel/{lang}.tsv'}}" for lang in ("zh", "ja"))
    run_experiment("distill", "laion_xlmr_vit_h14_distill", tmp_path / "distill.log", f"run_dir={tmp_path / 'p1'}",
                   f"model.teacher={oc_teacher}", f"model.student={tiny_asset('student')}", f"data.corpora=[{corpora}]")
    assert (tmp_path / "p1" / "final" / "config.json").is_file()
    run_experiment("contrastive", "laion_xlmr_vit_h14_contrastive", tmp_path / "contrastive.log",
                   f"run_dir={tmp_path / 'p2'}", f"model.model.teacher={oc_teacher}",
                   f"data.shards={tiny_asset('shards')}")
    final = tmp_path / "p2" / "final"
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{final}")
    assert type(model).__name__ == "CustomTextCLIP"
    card = (final / "README.md").read_text(encoding="utf-8")
    assert "`open_clip`" in card and "local-dir:" in card and "resize_mode shortest" in card


def register_tiny_timm_siglip(image_size: int, patch: int, width: int, heads: int, name: str) -> str:
    """A timm SigLIP definition of the tiny SigLIP's size (timm's own are ViT-B and up), registered in this
    process so open_clip's TimmModel can build it by name."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    if name not in timm.list_models(name):
        def build(pretrained=False, **kwargs):
            settings = dict(img_size=image_size, patch_size=patch, embed_dim=width, depth=2, num_heads=heads,
                            mlp_ratio=2.0, class_token=False, global_pool="map", act_layer="gelu_tanh")
            kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
            return VisionTransformer(**{**settings, **kwargs})

        build.__name__ = name
        register_model(build)
    return name


@pytest.mark.slow
def test_a_siglip_teacher_run_exports_to_open_clip_format_with_equal_embeddings(tiny_student, tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer

    from altclip_train.models.altclip_siglip import AltCLIPSiglipModel
    from altclip_train.models.assemble import save_assembled
    from altclip_train.models.tiny import SAMPLE_SENTENCES, build_tiny_siglip

    teacher = build_tiny_siglip(tmp_path / "siglip", SAMPLE_SENTENCES)
    phase1 = DistillTask(str(teacher), str(tiny_student)).export(tmp_path / "p1")
    model_dir = save_assembled(str(teacher), str(phase1), tmp_path / "altclip_siglip")
    model = AltCLIPSiglipModel.from_pretrained(model_dir).eval()
    with torch.no_grad():  # trained-looking: biases everywhere in the text head
        model.text_projection.bias.normal_()
        model.text_model.transformation.bias.normal_()
    model.save_pretrained(model_dir)
    exact = register_tiny_timm_siglip(32, 8, 48, 4, "vit_tiny_test_siglip_32")
    out = export_open_clip(model_dir, tmp_path / "oc", timm_candidates=[exact])
    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    oc.eval()
    texts = [SAMPLE_CAPTIONS["en"][0], SAMPLE_CAPTIONS["zh"][1], SAMPLE_CAPTIONS["fr"][2]]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in IMAGE_SIZES[:4]]
    pixels = torch.stack([preprocess(image) for image in images])
    tokens = AutoTokenizer.from_pretrained(model_dir)(texts, padding=True, return_tensors="pt")
    text, image = embeddings(model, tokens, pixels)
    with torch.no_grad():
        their_text = oc.encode_text(open_clip.get_tokenizer(f"local-dir:{out}")(texts))
        their_image = oc.encode_image(pixels)
    print("AltCLIPSiglipModel -> open_clip parity: text max |d|", (their_text - text).abs().max().item(),
          "image max |d|", (their_image - image).abs().max().item())
    torch.testing.assert_close(their_text, text, atol=1e-4, rtol=0)
    torch.testing.assert_close(their_image, image, atol=1e-4, rtol=0)
    assert oc.logit_bias.item() == pytest.approx(model.logit_bias.item())
    processor = AutoImageProcessor.from_pretrained(model_dir)
    theirs = processor(images=images, return_tensors="pt")["pixel_values"]
    print("SigLIP pixels, open_clip preprocess vs SiglipImageProcessor: max |d|", (theirs - pixels).abs().max().item())

    # A timm definition of the same shapes but exact GELU (as timm's vit_base_patch16_siglip_224 is) is refused.
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    if "vit_tiny_test_siglip_exact_gelu" not in timm.list_models("vit_tiny_test_siglip_exact_gelu"):
        def vit_tiny_test_siglip_exact_gelu(pretrained=False, **kwargs):
            settings = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0,
                            class_token=False, global_pool="map")
            kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
            return VisionTransformer(**{**settings, **kwargs})
        register_model(vit_tiny_test_siglip_exact_gelu)
    with pytest.raises(OpenClipExportError, match="match the shapes but not tanh-GELU"):
        export_open_clip(model_dir, tmp_path / "oc2", timm_candidates=["vit_tiny_test_siglip_exact_gelu"])
