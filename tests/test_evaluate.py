"""Tests for altclip_train.evaluate: hand-checked ranking metrics, prompt ensembling, input validation, the
in-process evaluators and an end-to-end `run_eval` over a tiny CLIP and a tiny AltCLIP."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from altclip_train.data.images import clip_preprocessor
from altclip_train.evaluate.metrics import positive_ranks, recall_at_k, retrieval_recalls, topk_accuracy
from altclip_train.evaluate.models import embed_texts, feature_tensor, load_eval_model
from altclip_train.evaluate.metrics import metric_name
from altclip_train.evaluate.report import markdown_report
from altclip_train.evaluate.retrieval import RetrievalEvaluator, language_split
from altclip_train.evaluate.sources import PairTable
from altclip_train.evaluate.zeroshot import (
    ZeroShotEvaluator,
    ensemble_class_embeddings,
    read_class_names,
    read_templates,
)
from altclip_train.models.tiny import build_tiny_clip, train_xlmr_tokenizer

CLASSES = ("bird", "car", "cat")
CLASS_NAMES = {"en": CLASSES, "fr": ("oiseau", "voiture", "chat")}
TEMPLATES = {"en": ("a photo of a {}.", "a {} in the picture."), "fr": ("une photo de {}.",)}
IMAGE_SIZE = 32
TRANSFORM = clip_preprocessor(IMAGE_SIZE)

# ---------------------------------------------------------------------------------------------- hand examples

# 3 images x 5 texts; texts 0, 1 describe image 0, text 2 image 1, texts 3, 4 image 2.
HAND_SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.5, 0.3, 0.2],
        [0.8, 0.7, 0.6, 0.1, 0.0],
        [0.2, 0.9, 0.3, 0.1, 0.4],
    ]
)
HAND_TEXT_IMAGES = [[0], [0], [1], [2], [2]]


def test_positive_ranks_use_best_correct_item_and_count_ties_against():
    # image 0: best caption t0 (0.9) beats all -> 0; image 1: t2 (0.6) is beaten by t0, t1 -> 2;
    # image 2: best of t3, t4 is 0.4, beaten by t1 only -> 1 (t3 scoring lower does not matter).
    assert positive_ranks(HAND_SCORES, [[0, 1], [2], [3, 4]]).tolist() == [0, 2, 1]
    # text 3's image 2 scores 0.1, image 0 scores 0.3 and image 1 ties at 0.1: the tie counts -> rank 2.
    assert positive_ranks(HAND_SCORES.T, HAND_TEXT_IMAGES).tolist() == [0, 2, 0, 2, 0]


def test_retrieval_recalls_hand_example_several_captions_per_image():
    # image_embeds @ text_embeds.T == HAND_SCORES with identity image embeddings.
    image_embeds, text_embeds = torch.eye(3), HAND_SCORES.T.clone()
    for chunk_size in (1, 2, 1024):
        metrics = retrieval_recalls(image_embeds, text_embeds, HAND_TEXT_IMAGES, ks=(1, 2, 3), chunk_size=chunk_size)
        # i2t ranks [0, 2, 1]; t2i ranks [0, 2, 0, 2, 0].
        expected = {
            "i2t_r@1": 100 / 3,
            "i2t_r@2": 200 / 3,
            "i2t_r@3": 100.0,
            "t2i_r@1": 60.0,
            "t2i_r@2": 60.0,
            "t2i_r@3": 100.0,
        }
        expected["mean_recall"] = 70.0
        assert metrics.keys() == expected.keys()
        for name, value in expected.items():
            assert metrics[name] == pytest.approx(value), name


def test_recall_default_ks_and_collapsed_embeddings_score_zero():
    # Eleven candidates, the correct one always ranked 6th: a miss at 1 and 5, a hit at 10.
    scores = torch.linspace(1.0, 0.0, 11).repeat(4, 1)
    ranks = positive_ranks(scores, [[5]] * 4)
    assert ranks.tolist() == [5] * 4
    assert recall_at_k(torch.eye(4), scores.T, [[5]] * 4) == {1: 0.0, 5: 0.0, 10: 100.0}
    # A model that maps everything to one vector ties everywhere and must not look perfect.
    same = torch.ones(4, 8)
    metrics = retrieval_recalls(same, same, [[0], [1], [2], [3]], ks=(1, 3))
    assert metrics["i2t_r@1"] == 0.0 and metrics["t2i_r@3"] == 0.0


def test_topk_accuracy_hand_example_clamps_k():
    logits = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    labels = torch.tensor([0, 2, 0, 1])
    # ranks: 0; 1 (0.5 > 0.3); 2; 1 (tie with class 0 counts against)
    assert topk_accuracy(logits, labels, ks=(1, 2, 5)) == {1: 25.0, 2: 75.0, 5: 100.0}


def test_query_without_correct_item_is_rejected():
    with pytest.raises(ValueError, match="query 1 has no correct candidate"):
        positive_ranks(HAND_SCORES, [[0], [], [3]])


def test_prompt_ensemble_normalises_before_averaging():
    prompts = torch.tensor([[[3.0, 4.0], [0.0, 2.0]], [[-1.0, 0.0], [-5.0, 0.0]]])
    weights = ensemble_class_embeddings(prompts)
    # class 0: mean of [0.6, 0.8] and [0, 1] is [0.3, 0.9], renormalised by sqrt(0.9).
    assert weights[0].tolist() == pytest.approx([0.3 / math.sqrt(0.9), 0.9 / math.sqrt(0.9)])
    assert weights[1].tolist() == pytest.approx([-1.0, 0.0])
    # Averaging raw vectors would weight the longer [3, 4] more: [1.5, 3] / |.| = [0.447, 0.894].
    assert weights[0, 0].item() == pytest.approx(0.3162, abs=1e-4)


def test_language_split_groups_captions_per_image():
    captions = [
        [("en", "a cat"), ("fr", "un chat"), ("en", "a small cat"), ("en", "a cat")],
        [("fr", "un chien")],
        [("en", "a cat"), ("en", "a car")],
    ]
    images, texts, text_images = language_split(captions, "en")
    assert images == [0, 2]  # image 1 has no English caption
    assert texts == ["a cat", "a small cat", "a car"]
    assert text_images == [[0, 1], [0], [1]]  # "a cat" describes both images, once each
    assert language_split(captions, "fr") == ([0, 1], ["un chat", "un chien"], [[0], [1]])


def test_metric_names_are_namespaced():
    assert metric_name("zeroshot", "top1", "ja") == "eval/zeroshot_top1/ja"
    assert metric_name("retrieval", "t2i_r@1", "fr") == "eval/retrieval/t2i_r@1/fr"
    assert metric_name("retrieval", "mean_recall", "fr") == "eval/retrieval/mean_recall/fr"


def test_markdown_has_language_rows_and_model_metric_columns():
    results = {
        "teacher": {"zeroshot": {"en": {"top1": 50.0, "top5": 90.0}, "ja": {"top1": 10.0, "top5": 30.0}}},
        "phase2": {"zeroshot": {"en": {"top1": 48.0, "top5": 88.0}, "ja": {"top1": 40.0, "top5": 70.0}}},
    }
    lines = markdown_report(results).splitlines()
    assert "| lang | top1 teacher | top1 phase2 | top5 teacher | top5 phase2 |" in lines
    assert "| ja | 10.00 | 40.00 | 30.00 | 70.00 |" in lines
    assert "| **mean** | 30.00 | 44.00 | 60.00 | 79.00 |" in lines


# ---------------------------------------------------------------------------------------------- data on disk


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_lines(directory: Path, table: dict[str, tuple[str, ...]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for lang, lines in table.items():
        (directory / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def _image_folder(root: Path, per_class: int = 2) -> Path:
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            (root / name / f"{index}.png").write_bytes(_png(10 * label + index))
    return root


def _write_tar(path: Path, samples: list[dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def zeroshot_files(tmp_path):
    return (
        _image_folder(tmp_path / "images"),
        _write_lines(tmp_path / "classnames", CLASS_NAMES),
        _write_lines(tmp_path / "templates", TEMPLATES),
    )


def _zeroshot(images, classnames, templates, languages=("en", "fr"), tokenizer=None, **options):
    return ZeroShotEvaluator(images, classnames, templates, languages, TRANSFORM, tokenizer, batch_size=4, **options)


# ---------------------------------------------------------------------------------------------- bad input


def test_class_folder_without_images_is_an_error(zeroshot_files):
    images, classnames, templates = zeroshot_files
    (images / "dog").mkdir()
    (images / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"class folder .*dog has no images"):
        _zeroshot(images, classnames, templates)


def test_classnames_count_must_match_classes(zeroshot_files):
    images, classnames, templates = zeroshot_files
    (classnames / "fr.txt").write_text("oiseau\nvoiture\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"fr\.txt has 2 class names but the images have 3 classes"):
        _zeroshot(images, classnames, templates)


def test_template_without_placeholder_is_an_error(zeroshot_files):
    images, classnames, templates = zeroshot_files
    (templates / "en.txt").write_text("a photo of a {}.\na photo of something.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"en\.txt:2: template has no '\{\}' placeholder"):
        _zeroshot(images, classnames, templates)


def test_language_without_class_names_is_an_error(zeroshot_files):
    images, classnames, templates = zeroshot_files
    with pytest.raises(FileNotFoundError, match=r"no class names for language 'ja': .*ja\.txt not found"):
        _zeroshot(images, classnames, templates, languages=["en", "ja"])
    (classnames / "ja.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no class names for language 'ja': .*ja\.txt is empty"):
        read_class_names(classnames, "ja")


def test_missing_templates_file_and_bare_name_default(zeroshot_files):
    _, _, templates = zeroshot_files
    with pytest.raises(FileNotFoundError, match=r"no prompt templates for language 'de'"):
        read_templates(templates, "de")
    assert read_templates(None, "de") == ["{}"]


def test_missing_and_empty_rows_in_pairs_table_are_counted(tmp_path):
    _image_folder(tmp_path / "images", per_class=1)
    table = tmp_path / "pairs.csv"
    table.write_text(
        "image,caption,lang\n"
        "images/cat/0.png,a cat,en\n"
        "images/cat/0.png,un chat,fr\n"
        "images/dog/0.png,a dog,en\n"
        "images/car/0.png,,en\n"
        "images/car/0.png,a car,zh-CN\n",
        encoding="utf-8",
    )
    pairs = PairTable(table)
    assert pairs.skipped == {"missing_image": 1, "empty_caption": 1}
    assert [(Path(p).parent.name, caps) for p, caps in pairs.images.items()] == [
        ("cat", [("en", "a cat"), ("fr", "un chat")]),
        ("car", [("zh", "a car")]),
    ]
    with pytest.raises(ValueError, match=r"pairs\.csv has no usable captions in language\(s\) \['ja'\]"):
        RetrievalEvaluator(table, ["en", "ja"], TRANSFORM, tokenizer=None)
    (tmp_path / "bad.csv").write_text("path,caption\nx.png,a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv: no image column"):
        PairTable(tmp_path / "bad.csv")


# ---------------------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=IMAGE_SIZE, patch=16, hidden=32, layers=1)


@pytest.fixture(scope="module")
def tiny_altclip(tmp_path_factory, tiny_clip):
    """AltCLIPModel dir: the tiny CLIP's vision side and a random XLM-R-style text tower with its own tokenizer."""
    from transformers import AltCLIPConfig, AltCLIPModel, CLIPConfig

    out = tmp_path_factory.mktemp("altclip")
    texts = [fill for lang in CLASS_NAMES for name in CLASS_NAMES[lang] for fill in (name, *TEMPLATES[lang])]
    tokenizer = train_xlmr_tokenizer(texts + ["a dog", "un chien", "a cat", "un chat"], out, vocab_size=300)
    vision = CLIPConfig.from_pretrained(tiny_clip).vision_config.to_dict()
    config = AltCLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=66,
            project_dim=32,
            pad_token_id=1,
        ),
        vision_config=vision,
        projection_dim=vision["projection_dim"],
    )
    torch.manual_seed(0)
    AltCLIPModel(config).save_pretrained(out)
    TRANSFORM.save_pretrained(out)
    return out


def test_load_eval_model_detects_type_and_limits(tiny_clip, tiny_altclip):
    clip = load_eval_model(str(tiny_clip), name="teacher")
    altclip = load_eval_model(str(tiny_altclip))
    assert (clip.model_type, type(clip.model).__name__) == ("clip", "CLIPModel")
    assert (altclip.model_type, type(altclip.model).__name__) == ("altclip", "AltCLIPModel")
    assert clip.max_length == 77
    assert altclip.max_length == 64  # 66 positions minus pad_token_id + 1
    assert clip.transform == altclip.transform == TRANSFORM


def test_embed_texts_matches_one_by_one_and_is_normalised(tiny_altclip):
    loaded = load_eval_model(str(tiny_altclip))
    texts = ["a cat", "une photo de chien dans un parc.", "un chat", "a"]
    batched = embed_texts(loaded.model, loaded.tokenizer, texts, torch.device("cpu"), batch_size=3)
    assert batched.norm(dim=-1).tolist() == pytest.approx([1.0] * 4, abs=1e-5)
    with torch.no_grad():
        for row, text in enumerate(texts):
            single = loaded.tokenizer([text], return_tensors="pt")
            expected = feature_tensor(loaded.model.get_text_features(**single))[0]
            # Per-batch padding must not change the embedding.
            torch.testing.assert_close(batched[row], torch.nn.functional.normalize(expected, dim=-1), atol=1e-5, rtol=0)


def test_zeroshot_evaluator_matches_direct_computation_and_caches_pixels(zeroshot_files, tiny_clip):
    images, classnames, templates = zeroshot_files
    loaded = load_eval_model(str(tiny_clip))
    model = loaded.model.train()  # the training loop hands over a model in train mode
    evaluator = _zeroshot(images, classnames, templates, tokenizer=loaded.tokenizer)
    flat = evaluator.evaluate(model, torch.device("cpu"))
    assert model.training, "evaluation must restore train mode"
    assert set(flat) == {f"eval/zeroshot_top{k}/{lang}" for k in (1, 5) for lang in ("en", "fr")}
    assert flat["eval/zeroshot_top5/en"] == 100.0  # 3 classes: top-5 clamps to top-3

    with torch.no_grad():
        model.eval()
        pixels = torch.stack([TRANSFORM(Image.open(p)) for p in sorted(images.glob("*/*.png"))])
        image_embeds = feature_tensor(model.get_image_features(pixel_values=pixels))
        image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)
        labels = torch.tensor([CLASSES.index(p.parent.name) for p in sorted(images.glob("*/*.png"))])
        for lang in ("en", "fr"):
            prompts = [t.replace("{}", name) for name in CLASS_NAMES[lang] for t in TEMPLATES[lang]]
            tokens = loaded.tokenizer(prompts, padding=True, return_tensors="pt")
            text = feature_tensor(model.get_text_features(**tokens)).view(len(CLASSES), len(TEMPLATES[lang]), -1)
            weights = ensemble_class_embeddings(text)
            expected = topk_accuracy(image_embeds @ weights.T, labels, (1,))[1]
            assert flat[f"eval/zeroshot_top1/{lang}"] == pytest.approx(expected)

    # The second call reuses the decoded pixels: the image files are no longer needed.
    for path in images.glob("*/*.png"):
        path.unlink()
    assert evaluator.evaluate(model, torch.device("cpu")) == flat
    assert evaluator.summary()["num_images"] == 6


def test_zeroshot_from_shards_equals_folder(zeroshot_files, tiny_clip, tmp_path):
    images, classnames, templates = zeroshot_files
    loaded = load_eval_model(str(tiny_clip))
    paths = sorted(images.glob("*/*.png"))
    labels = [str(CLASSES.index(p.parent.name)).encode() for p in paths]
    samples = [{"__key__": f"{p.parent.name}_{p.stem}", "png": p.read_bytes(), "cls": cls} for p, cls in zip(paths, labels)]
    samples[1] = {"__key__": samples[1]["__key__"], "png": samples[1]["png"], "json": b'{"label": 0}'}
    samples.append({"__key__": "zz_corrupt", "png": b"not a png", "cls": b"1"})
    _write_tar(tmp_path / "zs-000.tar", samples[:4])
    _write_tar(tmp_path / "zs-001.tar", samples[4:])
    from_folder = _zeroshot(images, classnames, templates, tokenizer=loaded.tokenizer)
    device = torch.device("cpu")
    expected = from_folder.evaluate(loaded.model, device)
    for num_workers in (0, 2):
        shards = str(tmp_path / "zs-{000..001}.tar")
        from_shards = _zeroshot(shards, classnames, templates, tokenizer=loaded.tokenizer, num_workers=num_workers)
        assert from_shards.evaluate(loaded.model, device) == expected
        # Each worker reads every shard but decodes only its share: the corrupt image is counted once.
        assert from_shards.summary()["skipped"] == {"corrupt_image": 1}
        assert from_shards.summary()["num_images"] == 6

    _write_tar(tmp_path / "bad-label.tar", [{"__key__": "x", "png": samples[0]["png"], "cls": b"7"}])
    with pytest.raises(ValueError, match=r"bad-label\.tar:x\.png: class label 7 outside the 3 class names"):
        _zeroshot(str(tmp_path / "bad-label.tar"), classnames, templates, tokenizer=loaded.tokenizer).evaluate(
            loaded.model, device
        )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_retrieval_from_shards_groups_captions_and_counts_skips(tiny_clip, tmp_path, num_workers):
    loaded = load_eval_model(str(tiny_clip))
    samples = [
        {
            "__key__": "img0",
            "png": _png(0),
            "txt": b"a bird on a branch",
            "json": json.dumps({"lang": "en", "captions": [{"text": "un oiseau", "lang": "fr"}]}).encode(),
        },
        {"__key__": "img1", "png": _png(1), "txt": b"a red car", "json": b'{"lang": "en"}'},
        {"__key__": "img2", "png": _png(2), "fr.txt": "un chat gris".encode()},
        {"__key__": "img3", "txt": b"no image here"},
        {"__key__": "img4", "png": _png(4), "txt": b"   "},
    ]
    _write_tar(tmp_path / "pairs.tar", samples)
    evaluator = RetrievalEvaluator(
        str(tmp_path / "pairs.tar"), None, TRANSFORM, loaded.tokenizer, batch_size=2, num_workers=num_workers
    )
    metrics = evaluator.evaluate_languages(loaded.model, torch.device("cpu"))
    assert sorted(metrics) == ["en", "fr"]
    summary = evaluator.summary()
    assert summary["num_images"] == 3
    assert summary["num_captions"] == {"en": 2, "fr": 2}
    assert summary["skipped"] == {"missing_image": 1, "empty_caption": 1}
    # Two candidates per language: every query is a hit at k >= 2.
    assert metrics["en"]["i2t_r@5"] == metrics["fr"]["t2i_r@10"] == 100.0


# ---------------------------------------------------------------------------------------------- end to end


def test_run_eval_end_to_end(zeroshot_files, tiny_clip, tiny_altclip, tmp_path):
    from hydra import compose, initialize_config_dir

    from altclip_train.evaluate.run import run_eval

    images, classnames, templates = zeroshot_files
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"image": "images/cat/0.png", "caption": ["a cat", "a small cat"], "lang": "en"},
        {"image": "images/cat/0.png", "caption": "un chat", "lang": "fr"},
        {"image": "images/car/1.png", "caption": "a car", "lang": "en"},
        {"image": "images/car/1.png", "caption": "une voiture", "lang": "fr"},
        {"image": "images/bird/0.png", "caption": "a bird", "lang": "en"},
        {"image": "images/gone.png", "caption": "lost", "lang": "en"},
    ]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config_dir = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(
            "eval",
            overrides=[
                f"models.teacher={tiny_clip}",
                f"models.phase2={tiny_altclip}",
                f"zeroshot.images={images}",
                f"zeroshot.classnames_dir={classnames}",
                f"zeroshot.templates_dir={templates}",
                "zeroshot.languages=[en,fr]",
                f"retrieval.pairs={pairs}",
                "batch_size=4",
                "num_workers=0",
                "cache_images=true",
                "device=cpu",
                f"output_dir={tmp_path / 'out'}",
            ],
        )
    result = run_eval(cfg)

    saved = json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))
    assert list(saved["results"]) == ["teacher", "phase2"]  # phase1 is null in the config: skipped
    assert saved["models"]["phase2"]["model_type"] == "altclip"
    assert saved["models"]["teacher"]["model_type"] == "clip"
    for model in ("teacher", "phase2"):
        assert set(saved["results"][model]["zeroshot"]) == {"en", "fr"}
        assert set(saved["results"][model]["zeroshot"]["fr"]) == {"top1", "top5"}
        recall = saved["results"][model]["retrieval"]["en"]
        assert set(recall) == {f"{d}_r@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"mean_recall"}
        assert recall["mean_recall"] == pytest.approx(sum(v for k, v in recall.items() if k != "mean_recall") / 6)
        flat = result["metrics"][model]
        assert flat["eval/retrieval/t2i_r@1/fr"] == saved["results"][model]["retrieval"]["fr"]["t2i_r@1"]
        assert flat["eval/zeroshot_top1/en"] == saved["results"][model]["zeroshot"]["en"]["top1"]
    assert saved["data"]["retrieval"]["skipped"] == {"missing_image": 1}
    assert saved["data"]["retrieval"]["num_images"] == 3
    assert saved["data"]["retrieval"]["num_captions"] == {"en": 4, "fr": 2}
    assert saved["data"]["zeroshot"]["num_images"] == 6

    table = (tmp_path / "out" / "eval.md").read_text(encoding="utf-8")
    assert "| lang | top1 teacher | top1 phase2 | top5 teacher | top5 phase2 |" in table
    assert "| fr |" in table and "mean_recall phase2" in table
    with Image.open(tmp_path / "out" / "eval.png") as chart:
        assert chart.format == "PNG" and chart.width > 200


def test_run_eval_needs_models_and_a_task(tmp_path):
    from omegaconf import OmegaConf

    from altclip_train.evaluate.run import run_eval

    base = {"models": {"teacher": None}, "zeroshot": None, "retrieval": None, "output_dir": str(tmp_path)}
    with pytest.raises(ValueError, match="no models to evaluate"):
        run_eval(OmegaConf.create(base))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run_eval(OmegaConf.create(base | {"models": {"teacher": "some/dir"}}))
