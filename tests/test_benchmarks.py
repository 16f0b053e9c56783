"""Tests for altclip_train.evaluate.benchmarks: hand-computed CLIP_benchmark metrics, each released layout built
small from scikit-image's sample photographs with captions in several languages, and `altclip-train eval
benchmarks=[...]` end to end on tiny models, its report and CLIP_benchmark's results JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from altclip_train.data.images import clip_preprocessor
from altclip_train.evaluate.benchmarks import READERS, BenchmarkEvaluator, open_benchmark
from altclip_train.evaluate.benchmarks.base import ClassificationBenchmark, ClassSet, RetrievalBenchmark
from altclip_train.evaluate.benchmarks.results import clip_benchmark_metrics, write_clip_benchmark_results
from altclip_train.evaluate.metrics import mean_per_class_recall
from altclip_train.models.tiny import build_tiny_clip, train_xlmr_tokenizer

IMAGE_SIZE = 32
TRANSFORM = clip_preprocessor(IMAGE_SIZE)

# ---------------------------------------------------------------------------------------------- hand examples


def test_mean_per_class_recall_hand_example_and_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    predictions = torch.tensor([0, 0, 0, 1, 1, 2])  # class 2 is predicted but has no image: not averaged
    # class 0: 3/4, class 1: 1/2 -> 62.5; plain accuracy would be 4/6.
    assert mean_per_class_recall(predictions, labels) == pytest.approx(62.5)
    with pytest.warns(UserWarning):
        assert mean_per_class_recall(predictions, labels) == pytest.approx(
            100 * balanced_accuracy_score(labels.numpy(), predictions.numpy())
        )


class LookupModel(nn.Module):
    """A stand-in CLIP: each solid-grey image and each text maps to a vector chosen by the test."""

    def __init__(self, image_vectors: dict[float, list[float]], text_vectors: dict[int, list[float]]):
        super().__init__()
        self.levels = torch.tensor(list(image_vectors))
        self.image_table = torch.tensor(list(image_vectors.values()))
        self.text_table = torch.zeros(max(text_vectors) + 1, self.image_table.shape[1])
        for token, vector in text_vectors.items():
            self.text_table[token] = torch.tensor(vector)
        self.unused = nn.Parameter(torch.zeros(1))

    def get_image_features(self, pixel_values):
        level = pixel_values[:, 0].mean(dim=(1, 2))
        return self.image_table[(level[:, None] - self.levels[None]).abs().argmin(dim=1)]

    def get_text_features(self, input_ids, attention_mask):
        return self.text_table[input_ids[:, 0]]


class LookupTokenizer:
    """One token per whole text, so the stand-in model can look each text up."""

    def __init__(self, texts):
        self.ids = {text: number + 1 for number, text in enumerate(texts)}

    def __call__(self, texts, truncation=True, max_length=None):
        return {"input_ids": [[self.ids[text]] for text in texts]}

    def pad(self, encoded, padding=True, return_tensors="pt"):
        ids = torch.tensor(encoded["input_ids"])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def grey_images(directory: Path, levels) -> tuple[list[Path], list[float]]:
    """Solid grey PNGs and the channel-0 value each becomes after the transform (how the stand-in tells them apart)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths, values = [], []
    for number, level in enumerate(levels):
        path = directory / f"{number}.png"
        Image.fromarray(np.full((8, 8, 3), level, dtype=np.uint8)).save(path)
        paths.append(path)
        values.append(TRANSFORM(Image.open(path).convert("RGB"))[0].mean().item())
    return paths, values


def test_retrieval_hand_example_any_caption_and_duplicate_captions_stay_separate(tmp_path):
    paths, values = grey_images(tmp_path, (40, 120, 200))
    images = dict(zip(values, ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0])))
    # en: a->A, b->B, c->C.  fr: A and B share the caption x; z->C.
    texts = {"a": [1.0, 0, 0], "b": [0.8, 0.6, 0], "c": [0, 0.5, math.sqrt(0.75)], "x": [0.8, 0.6, 0], "z": [0, 0, 1.0]}
    tokenizer = LookupTokenizer(texts)
    model = LookupModel(images, {tokenizer.ids[t]: v for t, v in texts.items()})
    benchmark = RetrievalBenchmark("hand", "hand", paths, {
        "en": [(0, ["a"]), (1, ["b"]), (2, ["c"])],
        "fr": [(0, ["x"]), (1, ["x"]), (2, ["z"])],
    })
    results = BenchmarkEvaluator(benchmark, TRANSFORM, batch_size=2).evaluate_languages(
        model, torch.device("cpu"), tokenizer, max_length=4)
    en = results["en"]
    # text->image: a ranks A first; b scores A 0.8 > B 0.6 (a miss at 1); c scores C 0.87 > B 0.5.
    assert en["t2i_r@1"] == pytest.approx(200 / 3) and en["t2i_r@5"] == 100.0
    # image->text: A: a 1.0 beats b 0.8; B: b 0.6 beats c 0.5; C: c 0.87 beats the rest.
    assert en["i2t_r@1"] == 100.0
    assert en["mean_recall"] == pytest.approx((200 / 3 + 5 * 100) / 6)
    # fr: B's own "x" query ranks A (0.8) above B (0.6), as CLIP_benchmark counts it. Merging the two "x"
    # captions into one query with both images correct would give 100.
    assert results["fr"]["t2i_r@1"] == pytest.approx(200 / 3)

    converted = clip_benchmark_metrics("zeroshot_retrieval", en)
    assert converted["image_retrieval_recall@1"] == pytest.approx(2 / 3)  # CLIP_benchmark: text -> image
    assert converted["text_retrieval_recall@1"] == pytest.approx(1.0)  # image -> text
    assert set(converted) == {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5, 10)}


def test_classification_hand_example_with_per_language_class_subsets(tmp_path):
    paths, values = grey_images(tmp_path, (30, 90, 150, 210))
    images = dict(zip(values, ([1.0, 0, 0], [0, 1.0, 0], [0.8, 0.6, 0], [0, 0, 1.0])))
    texts = {"cat": [1.0, 0, 0], "cup": [0, 1.0, 0], "rocket": [0, 0, 1.0], "Tasse": [0, 1.0, 0], "Rakete": [0, 0, 1.0]}
    tokenizer = LookupTokenizer(texts)
    model = LookupModel(images, {tokenizer.ids[t]: v for t, v in texts.items()})
    benchmark = ClassificationBenchmark("hand", "hand", list(zip(paths, [0, 1, 1, 2])), {
        "en": ClassSet([0, 1, 2], ["cat", "cup", "rocket"], ["{}"]),
        "de": ClassSet([1, 2], ["Tasse", "Rakete"], ["{}"]),  # a Babel-ImageNet-style subset: no cat
    })
    evaluator = BenchmarkEvaluator(benchmark, TRANSFORM, batch_size=3)
    results = evaluator.evaluate_languages(model, torch.device("cpu"), tokenizer, max_length=4)
    # en: the third image (a cup) is nearer "cat" (0.8) than "cup" (0.6): 3 of 4 right; recall per class 1, 1/2, 1.
    assert results["en"] == pytest.approx({"top1": 75.0, "top5": 100.0, "mean_per_class_recall": 250 / 3})
    # de scores only the three images of its two classes, against its two classes: the cup is a cup again.
    assert results["de"] == pytest.approx({"top1": 100.0, "top5": 100.0, "mean_per_class_recall": 100.0})
    assert evaluator.summary()["num_classes"] == {"en": 3, "de": 2}

    written = write_clip_benchmark_results(tmp_path / "cb", benchmark, "phase2", "/models/p2", results)
    document = json.loads(written[0].read_text())
    assert set(document) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert document["task"] == "zeroshot_classification" and document["language"] == "en"
    assert document["metrics"]["acc1"] == pytest.approx(0.75)
    assert document["metrics"]["mean_per_class_recall"] == pytest.approx(5 / 6)
    assert math.isnan(document["metrics"]["acc5"])  # CLIP_benchmark leaves top-5 undefined below 5 classes


# ---------------------------------------------------------------------------------------------- released layouts

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")
CAPTIONS = {
    "en": ("an astronaut in a white space suit", "a cup of coffee on a saucer", "a tabby cat looking to the side",
           "a rocket on the launch pad", "a man with a camera on a tripod"),
    "de": ("ein Astronaut im weißen Raumanzug", "eine Tasse Kaffee auf einer Untertasse", "eine getigerte Katze",
           "eine Rakete auf der Startrampe", "ein Mann mit einer Kamera auf einem Stativ"),
    "fr": ("un astronaute en combinaison blanche", "une tasse de café sur une soucoupe", "un chat tigré",
           "une fusée sur le pas de tir", "un homme avec un appareil photo sur un trépied"),
    "ja": ("白い宇宙服を着た宇宙飛行士", "ソーサーの上のコーヒーカップ", "横を見るトラ猫", "発射台のロケット",
           "三脚にカメラを載せた男性"),
    "zh": ("穿着白色宇航服的宇航员", "碟子上的一杯咖啡", "一只虎斑猫", "发射台上的火箭", "一个男人和三脚架上的相机"),
}
FLORES = {"en": "eng_Latn", "de": "deu_Latn", "fr": "fra_Latn", "ja": "jpn_Jpan"}
# Three ImageNet-style classes, two photographs each (the second a mirrored copy).
CLASSES = {"n02123045": "chelsea", "n03063599": "coffee", "n04266014": "rocket"}
CLASS_NAMES = {"en": ["tabby cat", "coffee mug", "space shuttle"], "de": ["Tigerkatze", "Kaffeebecher", "Raumfähre"],
               "fr": ["chat tigré", "tasse à café", "navette spatiale"], "ja": ["トラ猫", "コーヒーマグ", "スペースシャトル"]}
PROMPTS = {"en": ["a photo of a {c}.", "a blurry photo of the {c}."], "de": ["ein Foto von {}."],
           "fr": ["une photo de {c}."], "ja": ["{c}の写真。"]}


def photo(name: str) -> Image.Image:
    # Only the tests built on these photographs need scikit-image; the hand examples run without it.
    skimage_data = pytest.importorskip("skimage.data")
    pixels = getattr(skimage_data, name)()
    image = Image.fromarray(pixels).convert("RGB")
    image.thumbnail((96, 96))  # small files, same photograph
    return image


def save_photos(folder: Path, names: dict[str, str], mirrored: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, source in names.items():
        image = photo(source)
        image.save(folder / file_name, format="JPEG")
        if mirrored:
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"mirror_{file_name}", format="JPEG")


def write_text(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_xtd10(root: Path) -> None:
    names = [f"COCO_train2014_{n:012d}.jpg" for n in range(len(PHOTOS))]
    save_photos(root / "images", dict(zip(names, PHOTOS)))
    write_text(root / "XTD10" / "test_image_names.txt", names)
    # As in Adobe's repository: most languages in XTD10/, de and fr in MIC/, Japanese (as "jp") in STAIR/.
    for lang, folder in (("en", "XTD10"), ("zh", "XTD10"), ("de", "MIC"), ("fr", "MIC"), ("ja", "STAIR")):
        code = "jp" if lang == "ja" else lang
        write_text(root / folder / f"test_1kcaptions_{code}.txt", CAPTIONS[lang])


def build_xm3600(root: Path) -> None:
    keys = [f"{n:016x}" for n in range(len(PHOTOS))]
    save_photos(root / "images", {f"{key}.jpg": name for key, name in zip(keys, PHOTOS)})
    lines = []
    for number, key in enumerate(keys + ["ffffffffffffffff"]):  # the last image is not in images/: skipped
        row = {"image/key": key, "image/locale": "en"}
        for lang, captions in CAPTIONS.items():
            caption = captions[number % len(PHOTOS)]
            row[lang] = {"caption": [caption, f"{caption} (2)"], "caption/tokenized": [caption]}
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text(root / "captions.jsonl", lines)


def build_flores(root: Path, index_name: str) -> None:
    names = [f"{1000 + n}.jpg" for n in range(len(PHOTOS))]
    save_photos(root / "images", dict(zip(names, PHOTOS)))
    write_text(root / index_name, names)
    for lang, code in FLORES.items():
        write_text(root / f"{code}.txt", CAPTIONS[lang])


def build_imagenet_val(val: Path) -> None:
    for wnid, source in CLASSES.items():
        save_photos(val / wnid, {f"ILSVRC2012_val_{wnid}.JPEG": source}, mirrored=True)


def build_babel(root: Path) -> None:
    build_imagenet_val(root / "val")
    subsets = {"EN": [0, 1, 2], "DE": [1, 2], "FR": [0, 2], "JA": [0, 1]}  # each language covers its own classes
    names = {code: [[i for i in ids], [CLASS_NAMES[code.lower()][i] for i in ids]] for code, ids in subsets.items()}
    names["ZU"] = [[0], ["ikati"]]  # class names without prompts: not a usable language
    (root / "babel_imagenet.json").write_text(json.dumps(names, ensure_ascii=False), encoding="utf-8")
    prompts = {code.upper(): [t.replace("{c}", "{}") for t in templates] for code, templates in PROMPTS.items()}
    (root / "nllb_dist13b_prompts.json").write_text(json.dumps(prompts, ensure_ascii=False), encoding="utf-8")


def build_imagenet1k(root: Path) -> None:
    build_imagenet_val(root / "val")
    for lang in ("en", "fr", "ja"):
        code = "jp" if lang == "ja" else lang
        (root / f"{code}_classnames.json").write_text(json.dumps({"imagenet1k": CLASS_NAMES[lang]}), encoding="utf-8")
        (root / f"{code}_zeroshot_classification_templates.json").write_text(
            json.dumps({"imagenet1k": PROMPTS[lang], "cifar10": ["unused {c}"]}), encoding="utf-8")
    # Class names without a template file are not a usable language (CLIP_benchmark would fail on it).
    (root / "de_classnames.json").write_text(json.dumps({"imagenet1k": CLASS_NAMES["de"]}), encoding="utf-8")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    build_xtd10(root / "xtd10")
    build_xm3600(root / "xm3600")
    build_flores(root / "flickr30k-200", "filenames.txt")
    build_flores(root / "xtd200", "test_image_names.txt")
    build_babel(root / "babel_imagenet")
    build_imagenet1k(root / "imagenet1k")
    return root


EXPECTED_LANGUAGES = {
    "xtd10": {"en", "zh", "de", "fr", "ja"},
    "xm3600": set(CAPTIONS),
    "flickr30k_200": set(FLORES.values()),
    "xtd200": set(FLORES.values()),
    "babel_imagenet": {"en", "de", "fr", "ja"},
    "imagenet1k": {"en", "fr", "ja"},
}


def test_every_reader_reads_its_released_layout(data_root):
    assert set(READERS) == set(EXPECTED_LANGUAGES)
    for name, languages in EXPECTED_LANGUAGES.items():
        benchmark = open_benchmark(name, data_root)
        assert set(benchmark.languages) == languages, name

    xtd10 = open_benchmark("xtd10", data_root)
    assert len(xtd10.images) == 5 and xtd10.native_codes == {"ja": "jp"}
    first_ja = xtd10.languages["ja"][0]
    assert xtd10.images[first_ja[0]].name == "COCO_train2014_000000000000.jpg" and first_ja[1] == [CAPTIONS["ja"][0]]

    xm3600 = open_benchmark("xm3600", data_root)
    assert len(xm3600.images) == 5 and xm3600.skipped == {"missing_image": 1}
    assert xm3600.languages["de"][2] == (2, [CAPTIONS["de"][2]])  # CLIP_benchmark's rule: the first caption
    every = open_benchmark("xm3600", data_root, all_captions=True, languages=["fr"])
    assert list(every.languages) == ["fr"]
    assert every.languages["fr"][0][1] == [CAPTIONS["fr"][0], CAPTIONS["fr"][0] + " (2)"]

    babel = open_benchmark("babel_imagenet", data_root)
    assert babel.languages["de"].classes == [1, 2] and babel.languages["de"].names == ["Kaffeebecher", "Raumfähre"]
    assert babel.languages["en"].templates == ["a photo of a {}.", "a blurry photo of the {}."]
    assert len(babel.images) == 6 and {label for _, label in babel.images} == {0, 1, 2}

    imagenet = open_benchmark("imagenet1k", data_root)
    assert imagenet.native_codes == {"ja": "jp"} and imagenet.dataset == "imagenet1k"
    assert imagenet.languages["ja"].templates == ["{}の写真。"]


def test_bad_benchmark_input_is_one_clear_line(data_root, tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'xtd11'; choose from xtd10"):
        open_benchmark("xtd11", data_root)
    with pytest.raises(ValueError, match=r"benchmark xtd10: .*unexpected keyword argument 'image_dir'"):
        open_benchmark("xtd10", data_root, image_dir="x")
    with pytest.raises(ValueError, match=r"xtd10 .*no data for language\(s\) \['ko'\]"):
        open_benchmark("xtd10", data_root, languages=["en", "ko"])
    with pytest.raises(FileNotFoundError, match=r"benchmark xm3600: no captions\.jsonl in"):
        open_benchmark("xm3600", tmp_path)
    with pytest.raises(ValueError, match="set data_root"):
        open_benchmark("xtd10", None)
    broken = tmp_path / "xtd10"
    build_xtd10(broken)
    write_text(broken / "MIC" / "test_1kcaptions_de.txt", CAPTIONS["de"][:3])
    with pytest.raises(ValueError, match=r"test_1kcaptions_de\.txt: 3 captions for 5 images in the index"):
        open_benchmark("xtd10", tmp_path)


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny CLIP (the teacher) and a tiny AltCLIP sharing its vision side, with an XLM-R-style tokenizer."""
    from transformers import AltCLIPConfig, AltCLIPModel, CLIPConfig

    clip = build_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=IMAGE_SIZE, patch=16, hidden=32, layers=1)
    out = tmp_path_factory.mktemp("altclip")
    texts = [c for captions in CAPTIONS.values() for c in captions]
    texts += [n for names in CLASS_NAMES.values() for n in names]
    tokenizer = train_xlmr_tokenizer(texts, out, vocab_size=300)
    vision = CLIPConfig.from_pretrained(clip).vision_config.to_dict()
    config = AltCLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=66, project_dim=32, pad_token_id=1),
        vision_config=vision, projection_dim=vision["projection_dim"],
    )
    torch.manual_seed(0)
    AltCLIPModel(config).save_pretrained(out)
    TRANSFORM.save_pretrained(out)
    return {"teacher": clip, "phase2": out}


def test_eval_benchmarks_end_to_end_report_has_every_language(data_root, tiny_models, tmp_path):
    from altclip_train.cli import compose_config
    from altclip_train.evaluate.run import run_eval

    output = tmp_path / "out"
    cfg = compose_config("eval", [
        f"models.teacher={tiny_models['teacher']}", f"models.phase2={tiny_models['phase2']}",
        f"benchmarks=[{','.join(EXPECTED_LANGUAGES)}]", f"data_root={data_root}",
        "benchmark_options={xtd200: {languages: [eng_Latn, deu_Latn, jpn_Jpan]}}",
        "batch_size=4", "num_workers=0", "device=cpu", f"output_dir={output}",
    ])
    result = run_eval(cfg)

    saved = json.loads((output / "eval.json").read_text(encoding="utf-8"))
    expected = EXPECTED_LANGUAGES | {"xtd200": {"eng_Latn", "deu_Latn", "jpn_Jpan"}}
    for model in ("teacher", "phase2"):
        assert set(saved["results"][model]) == set(expected)
        for name, languages in expected.items():
            assert set(saved["results"][model][name]) == languages, (model, name)
        recall_names = {f"{d}_r@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"mean_recall"}
        assert set(saved["results"][model]["xtd10"]["ja"]) == recall_names
        assert set(saved["results"][model]["babel_imagenet"]["de"]) == {"top1", "top5", "mean_per_class_recall"}
        assert result["metrics"][model]["eval/xm3600/t2i_r@1/zh"] == saved["results"][model]["xm3600"]["zh"]["t2i_r@1"]
    assert saved["data"]["xm3600"]["skipped"] == {"missing_image": 1}
    assert saved["data"]["babel_imagenet"]["num_images"] == 6

    table = (output / "eval.md").read_text(encoding="utf-8")
    for title in ("XTD10: image-text retrieval", "Crossmodal-3600: image-text retrieval",
                  "Babel-ImageNet: zero-shot classification", "ImageNet-1k: zero-shot classification"):
        assert title in table
    assert "| jpn_Jpan |" in table and "| ja |" in table
    with Image.open(output / "eval.png") as chart:
        assert chart.format == "PNG"

    # CLIP_benchmark's results JSON: one file per model, benchmark and language, in its own language codes.
    files = sorted((output / "clip_benchmark").glob("*.json"))
    documents = [json.loads(path.read_text(encoding="utf-8")) for path in files]
    assert len(documents) == 2 * sum(len(languages) for languages in expected.values())
    xtd10 = {d["language"] for d in documents if d["dataset"] == "xtd10" and d["model"] == "phase2"}
    assert xtd10 == {"en", "zh", "de", "fr", "jp"}
    assert {d["dataset"] for d in documents} == {"xtd10", "crossmodal3600", "flickr30k-200", "xtd200",
                                                 "babel_imagenet", "imagenet1k"}
    phase2_de = next(d for d in documents
                     if d["dataset"] == "xtd10" and d["model"] == "phase2" and d["language"] == "de")
    assert phase2_de["pretrained"] == str(tiny_models["phase2"]) and phase2_de["task"] == "zeroshot_retrieval"
    ours = saved["results"]["phase2"]["xtd10"]["de"]
    assert phase2_de["metrics"]["image_retrieval_recall@5"] == pytest.approx(ours["t2i_r@5"] / 100)
    assert phase2_de["metrics"]["text_retrieval_recall@1"] == pytest.approx(ours["i2t_r@1"] / 100)
