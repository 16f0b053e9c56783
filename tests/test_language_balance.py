"""Phase-2 language balance (`data.language_temperature`): caption languages drawn with p(lang) ∝ n_lang^alpha.

32 tiny images whose captions are in unequal languages: 16 with {en, zh}, 8 with {en, fr}, 4 with {en, zh, ja},
4 with {en} only. A uniform pick among an image's captions (alpha = 1, the default) draws en 54 %, zh 29 %,
fr 12.5 %, ja 4 %; with alpha = 0.5 the target is reachable and draws must follow it in both data modes,
deterministically, so resume still equals an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from altclip_train.data.image_text import ImageTextData
from altclip_train.data.loading import tempered_language_shares
from altclip_train.data.prepare_wds import prepare_wds
from altclip_train.models.tiny import SAMPLE_CAPTIONS
from conftest import FakeAccelerator

GROUPS = [(16, ("en", "zh")), (8, ("en", "fr")), (4, ("en", "zh", "ja")), (4, ("en",))]
LANGS = ("en", "zh", "fr", "ja")


def natural_shares() -> dict[str, float]:
    """By hand: each image picks one of its captions uniformly."""
    drawn = Counter()
    for images, langs in GROUPS:
        for lang in langs:
            drawn[lang] += images / len(langs)
    total = sum(images for images, _ in GROUPS)
    return {lang: drawn[lang] / total for lang in LANGS}


def formula(alpha: float) -> dict[str, float]:
    powered = {lang: share ** alpha for lang, share in natural_shares().items()}
    return {lang: value / sum(powered.values()) for lang, value in powered.items()}


@pytest.fixture(scope="module")
def unbalanced_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("unbalanced")
    image = 0
    with open(root / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "lang"])
        for images, langs in GROUPS:
            for _ in range(images):
                pixels = np.random.default_rng(image).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                (root / f"{image}.png").write_bytes(buffer.getvalue())
                for lang in langs:
                    writer.writerow([f"{image}.png", f"{SAMPLE_CAPTIONS[lang][image % 8]} {image}", lang])
                image += 1
    prepare_wds(root / "pairs.csv", root / "shards", shard_size=8)
    return str(root / "shards")


def make_data(tiny_teacher, shards, mode, **overrides) -> ImageTextData:
    options = dict(shards=shards, tokenizer=str(tiny_teacher), image_processor=str(tiny_teacher),
                   image_model=str(tiny_teacher), batch_size=8, languages=list(LANGS), num_workers=0,
                   shuffle_buffer=4, seed=5, image_cache=mode == "cached", cache_batch_size=16,
                   cache_dir=None)
    options.update(overrides)
    data = ImageTextData(**options)
    data.setup(FakeAccelerator())
    return data


def test_tempered_shares_follow_the_formula():
    shares = tempered_language_shares({"en": 900, "sw": 100, "yo": 0}, 0.5)
    assert shares["en"] == pytest.approx(30 / 40) and shares["sw"] == pytest.approx(10 / 40) and shares["yo"] == 0
    assert tempered_language_shares({"en": 9, "sw": 1}, None) == pytest.approx({"en": 0.9, "sw": 0.1})
    assert tempered_language_shares({"en": 9, "sw": 1}, 0) == pytest.approx({"en": 0.5, "sw": 0.5})
    with pytest.raises(ValueError, match="language_temperature must be >= 0"):
        tempered_language_shares({"en": 1}, -1)


def test_the_fitted_weights_reach_the_formula(tiny_teacher, unbalanced_shards):
    data = make_data(tiny_teacher, unbalanced_shards, "cached", language_temperature=0.5)
    assert data.balance.natural == pytest.approx(natural_shares())
    assert data.balance.target == pytest.approx(formula(0.5))
    assert data.balance.achieved == pytest.approx(formula(0.5), abs=1e-5)


@pytest.mark.parametrize("mode", ["cached", "streaming"])
def test_drawn_caption_languages_match_the_formula_within_sampling_error(tiny_teacher, unbalanced_shards, mode):
    data = make_data(tiny_teacher, unbalanced_shards, mode, language_temperature=0.5)
    epochs = 40 if mode == "cached" else 25
    drawn = Counter(lang for epoch in range(epochs) for batch in data.train_batches(epoch) for lang in batch["lang"])
    total = sum(drawn.values())
    assert total == 32 * epochs
    for lang, expected in formula(0.5).items():
        sigma = (expected * (1 - expected) / total) ** 0.5
        assert abs(drawn[lang] / total - expected) < 4 * sigma, (lang, drawn[lang] / total, expected)
    # and far from the unbalanced pick for the rare language (4 % naturally, 11 % tempered)
    assert drawn["ja"] / total > natural_shares()["ja"] + 0.04


@pytest.mark.parametrize("mode", ["cached", "streaming"])
def test_alpha_one_is_the_unbalanced_pick_and_resume_stays_exact(tiny_teacher, unbalanced_shards, mode):
    plain = make_data(tiny_teacher, unbalanced_shards, mode)
    one = make_data(tiny_teacher, unbalanced_shards, mode, language_temperature=1.0)

    def batches(data, epoch, start=0):
        return [(b["lang"], b["input_ids"].tolist()) for b in data.train_batches(epoch, start_batch=start)]

    assert one.balance is None and batches(one, 1) == batches(plain, 1)
    balanced = make_data(tiny_teacher, unbalanced_shards, mode, language_temperature=0.3)
    full = batches(balanced, 1)
    assert full != batches(plain, 1)
    assert batches(balanced, 1, start=2) == full[2:]
    again = make_data(tiny_teacher, unbalanced_shards, mode, language_temperature=0.3)
    assert batches(again, 1) == full


def test_an_unreachable_target_is_approached_and_said(tiny_teacher, unbalanced_shards, caplog):
    # Equal languages would need ja on 25 % of images, but only 4 of 32 images (12.5 %) have a ja caption.
    data = make_data(tiny_teacher, unbalanced_shards, "cached", language_temperature=0.0)
    assert data.balance.target == pytest.approx({lang: 0.25 for lang in LANGS})
    assert data.balance.achieved["ja"] == pytest.approx(0.125, abs=1e-3)
    assert "the captions allow language shares only within" in caplog.text
    with pytest.raises(ValueError, match="language_temperature needs data.languages"):
        make_data(tiny_teacher, unbalanced_shards, "cached", language_temperature=0.5, languages=None)
