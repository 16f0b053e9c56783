"""Paying for real tokens: phase-2 length bucketing over cached embeddings, its token estimate, and the
fixed-width padding the phase-1 data module keeps for the naive benchmark recipe."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from altclip_train.data.image_cache import ShardIndex
from altclip_train.data.image_text import ImageTextData
from altclip_train.data.parallel import ParallelTextData
from altclip_train.data.prepare_wds import prepare_wds
from altclip_train.models.tiny import SAMPLE_CAPTIONS
from conftest import FakeAccelerator

NUM_IMAGES = 24


def caption(i: int, lang: str) -> str:
    """1 to 4 aligned sample sentences, so caption lengths spread the way real ones do."""
    sentences = SAMPLE_CAPTIONS[lang]
    joiner = "" if lang == "zh" else " "
    return joiner.join(sentences[(i + k) % len(sentences)] for k in range(1 + i % 4))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """NUM_IMAGES tiny JPEGs, each with one caption, English or Chinese, of 1-4 sentences."""
    root = tmp_path_factory.mktemp("bucketing")
    with open(root / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "lang"])
        for i in range(NUM_IMAGES):
            pixels = np.random.default_rng(i).integers(0, 256, size=(36, 36, 3), dtype=np.uint8)
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, format="JPEG")
            (root / f"{i}.jpg").write_bytes(out.getvalue())
            lang = ("en", "zh")[(i // 4) % 2]
            writer.writerow([f"{i}.jpg", caption(i, lang), lang])
    prepare_wds(root / "pairs.csv", root / "shards", shard_size=8)
    return str(root / "shards" / "shard-{00000..00002}.tar")


def test_estimated_tokens_match_each_languages_total_and_skip_other_languages(shards, tiny_teacher, tmp_path):
    from altclip_train.data.shards import expand_shard_urls

    index = ShardIndex.load_or_build(expand_shard_urls(shards), tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    estimate = index.estimated_caption_tokens(tokenizer, None, sample=NUM_IMAGES)
    true = np.array([len(tokenizer(captions[0][1])["input_ids"]) for captions in index.captions(range(index.num_rows))])
    langs = np.array([captions[0][0] for captions in index.captions(range(index.num_rows))])
    for lang in ("en", "zh"):
        # Every caption sampled: the language's tokens-per-byte is exact, so its totals agree.
        assert estimate[langs == lang].sum() == pytest.approx(true[langs == lang].sum())
    assert np.corrcoef(estimate, true)[0, 1] > 0.9
    only_english = index.estimated_caption_tokens(tokenizer, {"en"}, sample=NUM_IMAGES)
    assert (only_english[langs == "zh"] == 0).all() and (only_english[langs == "en"] > 0).all()


def padded_and_real_tokens(data: ImageTextData) -> tuple[int, int, list[str]]:
    padded = real = 0
    captions = []
    for batch in data.train_batches(epoch=0):
        padded += batch["attention_mask"].numel()
        real += int(batch["attention_mask"].sum())
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            captions.append(tuple(ids[mask.bool()].tolist()))
    return padded, real, captions


def test_cached_batches_bucketed_by_length_pad_less_and_still_cover_every_image_once(shards, tiny_teacher, tmp_path):
    def data(bucket: bool) -> ImageTextData:
        module = ImageTextData(shards=shards, tokenizer=str(tiny_teacher), image_processor=str(tiny_teacher),
                               image_model=str(tiny_teacher), batch_size=4, num_workers=0, seed=1,
                               cache_dir=str(tmp_path), cache_batch_size=8, bucket_by_length=bucket)
        module.setup(FakeAccelerator())
        return module

    bucketed_padded, bucketed_real, bucketed = padded_and_real_tokens(data(True))
    plain_padded, plain_real, plain = padded_and_real_tokens(data(False))
    assert sorted(bucketed) == sorted(plain) and len(bucketed) == NUM_IMAGES  # same pairs, each once
    assert bucketed_real == plain_real
    assert bucketed_padded < 0.85 * plain_padded


def test_pad_to_max_length_pads_student_and_teacher_to_their_max_lengths(parallel_dir, tiny_teacher, tiny_student):
    corpora = [{"lang": lang, "path": str(parallel_dir / f"{lang}.tsv")} for lang in ("zh", "fr")]
    data = ParallelTextData(corpora=corpora, languages=["en", "zh", "fr"], batch_size=8, student=str(tiny_student),
                            teacher=str(tiny_teacher), student_max_length=40, teacher_max_length=30,
                            teacher_cache=False, val_size=0, num_workers=0, pad_to_max_length=True)
    data.setup(FakeAccelerator())
    batch = next(iter(data.train_batches(epoch=0)))
    assert batch["student_input_ids"].shape == (16, 40) and batch["teacher_input_ids"].shape == (8, 30)
    assert 0 < int(batch["student_attention_mask"].sum()) < 16 * 40
