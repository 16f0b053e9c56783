"""Features the README promises that no other test reached: a hub corpus with dotted struct columns (the
OPUS layout, `source_column: translation.en`), per-corpus `weight:` through the phase-1 data module,
`altclip-train cache-images --verify`, and `altclip-train export --license`.

The hub corpus is a local dataset repository (README front matter naming a config, Parquet under it),
which `datasets.load_dataset` reads exactly as it reads a downloaded hub dataset, with no network."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from altclip_train.data.corpora import CorpusSpec, iter_pairs
from altclip_train.data.parallel import ParallelTextData
from altclip_train.models.tiny import SAMPLE_CAPTIONS
from conftest import FakeAccelerator

LANGS = ["en", "zh", "fr", "ja"]


def make_data(teacher, student, corpora, cache_dir, **options) -> ParallelTextData:
    settings = dict(languages=LANGS, batch_size=8, student=str(student), teacher=str(teacher),
                    cache_dir=str(cache_dir), val_size=0, num_workers=0, tokenize_num_proc=1)
    settings.update(options)
    data = ParallelTextData(corpora=corpora, **settings)
    data.setup(FakeAccelerator())
    return data


# ---------------------------------------------------------------- hub corpus, dotted struct columns
def opus_like_repo(root: Path) -> Path:
    """A dataset repo laid out like Helsinki-NLP/opus-100: config `en-zh`, one struct column `translation`
    with `en` and `zh` fields, a train and a validation split."""
    pairs = list(zip(SAMPLE_CAPTIONS["en"], SAMPLE_CAPTIONS["zh"]))
    for split, rows in (("train", pairs[:6]), ("validation", pairs[6:])):
        (root / "en-zh").mkdir(parents=True, exist_ok=True)
        table = pa.table({"translation": pa.array([{"en": en, "zh": zh} for en, zh in rows])})
        pq.write_table(table, root / "en-zh" / f"{split}-00000-of-00001.parquet")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: en-zh\n  data_files:\n  - split: train\n    path: en-zh/train-*\n"
        "  - split: validation\n    path: en-zh/validation-*\n---\n", encoding="utf-8")
    return root


def hub_entry(repo: Path, **extra) -> dict:
    return {"lang": "zh", "hub": str(repo), "subset": "en-zh", "source_column": "translation.en",
            "target_column": "translation.zh", **extra}


def test_hub_corpus_reads_dotted_struct_columns(tmp_path):
    repo = opus_like_repo(tmp_path / "opus")
    skipped: Counter = Counter()
    rows = []
    for batch in iter_pairs(CorpusSpec(**hub_entry(repo)), LANGS, skipped, str(tmp_path / "datasets")):
        rows += list(zip(*(batch.column(i).to_pylist() for i in range(3))))
    assert rows == [(en, zh, "zh") for en, zh in zip(SAMPLE_CAPTIONS["en"][:6], SAMPLE_CAPTIONS["zh"][:6])]
    assert not skipped
    validation = CorpusSpec(**hub_entry(repo, split="validation"))
    assert [b.num_rows for b in iter_pairs(validation, LANGS, skipped, str(tmp_path / "datasets"))] == [2]
    with pytest.raises(ValueError, match=r"unknown column 'translations\.en' \(columns: translation\)"):
        list(iter_pairs(CorpusSpec(**hub_entry(repo, source_column="translations.en")), LANGS, skipped,
                        str(tmp_path / "datasets")))


def test_hub_corpus_through_the_data_module(tiny_teacher, tiny_student, tmp_path):
    repo = opus_like_repo(tmp_path / "opus")
    data = make_data(tiny_teacher, tiny_student, [hub_entry(repo)], tmp_path / "cache", batch_size=2)
    assert sorted(data.source_texts()) == sorted(SAMPLE_CAPTIONS["en"][:6])
    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    expected = dict(zip(SAMPLE_CAPTIONS["en"][:6], SAMPLE_CAPTIONS["zh"][:6]))
    seen = {}
    for batch in data.train_batches(0):
        pairs = len(batch["lang"]) // 2
        english = data.source_texts(batch["source_index"][:pairs].numpy())
        for row, en in enumerate(english):
            ids = batch["student_input_ids"][pairs + row][batch["student_attention_mask"][pairs + row].bool()]
            seen[en] = tokenizer.decode(ids, skip_special_tokens=True)
        assert batch["lang"][pairs:] == ["zh"] * pairs
    assert seen == expected


# ---------------------------------------------------------------- per-corpus weight
def test_corpus_weight_sets_the_rows_an_epoch_draws(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    """32 pairs each: weight 1.5 draws every zh pair once and 16 of them a second time, 0.5 draws 16 distinct
    fr pairs, 0 draws no ja pair; 48 + 16 = 64 rows, 8 batches of 8."""
    weights = {"zh": 1.5, "fr": 0.5, "ja": 0.0}
    corpora = [{"lang": lang, "path": str(parallel_dir / f"{lang}.tsv"), "weight": weight}
               for lang, weight in weights.items()]
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path, bucket_by_length=False)
    for epoch in (0, 1):
        assert data.num_train_batches(epoch) == 8
        drawn = Counter()
        for batch in data.train_batches(epoch):
            pairs = len(batch["lang"]) // 2
            drawn.update(zip(batch["source_index"][:pairs].tolist(), batch["lang"][pairs:]))
        per_lang = Counter(lang for (_, lang), times in drawn.items() for _ in range(times))
        assert per_lang == {"zh": 48, "fr": 16}
        assert sorted(Counter(times for (_, lang), times in drawn.items() if lang == "zh").items()) == [(1, 16), (2, 16)]
        assert set(Counter(times for (_, lang), times in drawn.items() if lang == "fr")) == {1}


# ---------------------------------------------------------------- cache-images: parity and --verify
def test_cached_image_vectors_are_what_plain_transformers_computes(tiny_teacher, tmp_path, capsys):
    """Each cached vector is CLIPVisionModelWithProjection(CLIPProcessor(image)).image_embeds of one of the
    shards' images, computed here with transformers alone: the preprocessing is the exported processor's.
    Rows are matched by nearest neighbour, so the test leaves the cache's row order to the cache."""
    import torch
    from PIL import Image
    from transformers import CLIPProcessor, CLIPVisionModelWithProjection

    from altclip_train.data.image_cache import main as cache_images
    from launching import NUM_IMAGES, build_pair_shards

    shards = build_pair_shards(tmp_path / "pairs")
    assert cache_images([str(shards), "--image-model", str(tiny_teacher), "--cache-dir", str(tmp_path / "cache"),
                         "--num-workers", "0"]) == 0
    entry = Path(capsys.readouterr().out.split("image embeddings:")[1].split()[0])
    processor = CLIPProcessor.from_pretrained(tiny_teacher)
    tower = CLIPVisionModelWithProjection.from_pretrained(tiny_teacher).eval()
    images = [Image.open(tmp_path / "pairs" / f"img{i}.png") for i in range(NUM_IMAGES)]
    with torch.no_grad():
        reference = tower(**processor(images=images, return_tensors="pt")).image_embeds
    cached = torch.from_numpy(np.fromfile(entry / "embeddings.f16", dtype=np.float16).astype(np.float32))
    cached = cached.reshape(-1, reference.shape[1])[:NUM_IMAGES]
    distance = torch.cdist(cached, reference)
    nearest = distance.argmin(dim=1)
    assert sorted(nearest.tolist()) == list(range(NUM_IMAGES))  # one image each
    assert distance.min(dim=1).values.max() < 2e-3 * reference.abs().max()  # fp16 rounding, nothing more


def test_cache_images_verify_rehashes_and_rebuilds_a_flip_a_stat_check_misses(tiny_teacher, tmp_path, capsys,
                                                                             caplog):
    import logging

    from altclip_train.data.image_cache import main as cache_images
    from launching import build_pair_shards

    shards = str(build_pair_shards(tmp_path / "pairs"))
    args = [shards, "--image-model", str(tiny_teacher), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "4",
            "--num-workers", "0"]
    assert cache_images(args) == 0
    entry = Path(capsys.readouterr().out.split("image embeddings:")[1].split()[0])
    vectors = entry / "embeddings.f16"
    good, stat = vectors.read_bytes(), vectors.stat()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    vectors.write_bytes(bytes(flipped))
    os.utime(vectors, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot: same size, same mtime

    assert cache_images(args) == 0
    assert vectors.read_bytes() != good  # the default stat check cannot see it, by design
    with caplog.at_level(logging.WARNING):
        assert cache_images([*args, "--verify"]) == 0
    assert "do not match their checksums" in caplog.text
    assert vectors.read_bytes() == good
    assert "images: 16 embedded" in capsys.readouterr().out


# ---------------------------------------------------------------- export --license
def test_export_license_reaches_the_model_card_front_matter(tiny_teacher, tiny_student, parallel_dir, tmp_path,
                                                            capsys):
    from huggingface_hub import ModelCard

    from altclip_train.cli import compose_config, main as cli_main
    from altclip_train.train import train
    from conftest import distill_overrides

    run_dir = tmp_path / "run"
    train(compose_config("distill", distill_overrides(tiny_teacher, tiny_student, parallel_dir, run_dir,
                                                      "trainer.max_steps=3", "trainer.eval_every=0")))
    assert ModelCard.load(run_dir / "final" / "README.md").data.license == "mit"  # the default

    cli_main(["export", str(run_dir), "--license", "apache-2.0"])
    assert ModelCard.load(run_dir / "final" / "README.md").data.license == "apache-2.0"
    checkpoint = run_dir / "checkpoints" / "step-00000003"
    cli_main(["export", str(checkpoint), "--output", str(tmp_path / "out"), "--license", "cc-by-4.0"])
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "cc-by-4.0" and (tmp_path / "out" / "model.safetensors").is_file()
    assert "exported" in capsys.readouterr().out
    # save_every=3 is the last step: the checkpoint's export is the final model, tensor for tensor.
    from safetensors.torch import load_file

    exported, final = load_file(tmp_path / "out" / "model.safetensors"), load_file(run_dir / "final" / "model.safetensors")
    assert exported.keys() == final.keys() and all((exported[k] == final[k]).all() for k in final)
