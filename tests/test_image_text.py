"""Phase-2 data: the frozen-image-embedding cache and both data modes (cached embeddings, streamed pixels).

A tiny CLIP and eight tiny PNGs with an English and a Chinese caption each, in four shards of two. Several
ranks are simulated in one process with a stand-in accelerator; pairs are identified by their tokens.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPModel, PreTrainedModel
from webdataset import TarWriter

import altclip_train.data.image_cache as image_cache
import altclip_train.data.webdataset as webdataset
from altclip_train.data.image_cache import build_image_cache, main as cache_images_main
from altclip_train.data.image_text import ImageTextData
from altclip_train.data.images import ImagePreprocessor
from altclip_train.data.prepare_wds import prepare_wds
from altclip_train.models.tiny import SAMPLE_CAPTIONS, SAMPLE_SENTENCES, build_tiny_clip
from altclip_train.tasks.contrastive import ContrastiveTask
from conftest import FakeAccelerator

NUM_IMAGES = 8
LANGS = ("en", "zh")


def png_bytes(seed: int, size=(40, 36)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def pair_dir(tmp_path_factory):
    """img{i}.png with an en and a zh caption each -> shards/shard-0000{0..3}.tar (+ manifest.json)."""
    root = tmp_path_factory.mktemp("pairs")
    with open(root / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "lang"])
        for i in range(NUM_IMAGES):
            (root / f"img{i}.png").write_bytes(png_bytes(i))
            for lang in LANGS:
                writer.writerow([f"img{i}.png", SAMPLE_CAPTIONS[lang][i], lang])
    prepare_wds(root / "pairs.csv", root / "shards", shard_size=2)
    return root


@pytest.fixture
def shards(pair_dir, tmp_path):
    """A private copy of the shards (so each test's cache, next to the data, starts empty)."""
    shutil.copytree(pair_dir / "shards", tmp_path / "shards")
    return str(tmp_path / "shards" / "shard-{00000..00003}.tar")


@pytest.fixture(scope="session")
def tokenizer(tiny_teacher):
    return AutoTokenizer.from_pretrained(tiny_teacher)


@pytest.fixture(scope="session")
def pair_of_tokens(tokenizer):
    """token ids of a caption -> (image number, lang), to read pairs back out of batches."""
    lookup = {}
    for i in range(NUM_IMAGES):
        for lang in LANGS:
            ids = tokenizer(SAMPLE_CAPTIONS[lang][i], truncation=True, max_length=77)["input_ids"]
            lookup[tuple(ids)] = (i, lang)
    assert len(lookup) == NUM_IMAGES * len(LANGS)
    return lookup


def pairs(batch, lookup) -> list[tuple[int, str]]:
    found = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        found.append(lookup[tuple(ids[mask.bool()].tolist())])
    assert [lang for _, lang in found] == batch["lang"]
    return found


def make_data(tiny_teacher, shards, **overrides) -> ImageTextData:
    options = dict(shards=shards, tokenizer=str(tiny_teacher), image_processor=str(tiny_teacher),
                   image_model=str(tiny_teacher), batch_size=4, eval_batch_size=4, languages=list(LANGS),
                   num_workers=0, shuffle_buffer=1, seed=3, image_cache=True, cache_batch_size=3)
    options.update(overrides)
    return ImageTextData(**options)


def setup_ranks(tiny_teacher, shards, world: int, accum: int = 1, **overrides) -> list[ImageTextData]:
    ranks = []
    for rank in range(world):
        data = make_data(tiny_teacher, shards, **overrides)
        data.setup(FakeAccelerator(rank, world, accum))
        ranks.append(data)
    return ranks


@pytest.fixture
def simulated_collectives(monkeypatch):
    """Ranks set up one after another here, so they cannot build a cache together: each test fills the
    cache with one process first, and the collective then reports what rank 0 sees: a complete entry."""
    # With the chunked cache entry, ranks agree through the files on disk (no broadcast), so a complete
    # entry needs nothing simulated; the fixture stays as documentation of that assumption.


def forbid_image_work(monkeypatch):
    """Make any model load or image decode fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("the image side must not be loaded or run when the cache is complete")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(image_cache, "load_image_encoder", refuse)
    monkeypatch.setattr(image_cache, "decode_image", refuse)
    monkeypatch.setattr(webdataset, "decode_image", refuse)


def contrastive_task(tiny_teacher) -> ContrastiveTask:
    task = ContrastiveTask(model=CLIPModel.from_pretrained(tiny_teacher), tokenizer=str(tiny_teacher),
                           image_processor=str(tiny_teacher),
                           freeze=[r"vision_model\..*", r"visual_projection\..*"])
    return task.eval()


# --------------------------------------------------------------------------------------- the cache
def test_cached_embeddings_give_the_live_frozen_tower_loss(tiny_teacher, shards, pair_dir, pair_of_tokens):
    data = make_data(tiny_teacher, shards, batch_size=8)
    data.setup(FakeAccelerator())
    batch = next(data.train_batches(0))
    assert batch["image_embeds"].dtype == torch.float16 and batch["image_embeds"].shape == (8, 64)
    transform = ImagePreprocessor.from_pretrained(str(tiny_teacher))
    images = [i for i, _ in pairs(batch, pair_of_tokens)]
    pixel_values = torch.stack([transform(Image.open(pair_dir / f"img{i}.png")) for i in images])
    live = {k: v for k, v in batch.items() if k != "image_embeds"} | {"pixel_values": pixel_values}

    task = contrastive_task(tiny_teacher)
    with torch.no_grad():
        live_embeds = task.image_embeddings(live)
        cached_loss, live_loss = task(batch)["loss"], task(live)["loss"]
    torch.testing.assert_close(batch["image_embeds"].float(), live_embeds, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(cached_loss, live_loss, rtol=1e-3, atol=1e-4)


def test_cli_fills_the_cache_then_training_never_loads_or_decodes(tiny_teacher, shards, monkeypatch, capsys,
                                                                  pair_of_tokens):
    assert cache_images_main([shards, "--image-model", str(tiny_teacher), "--batch-size", "3",
                              "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    entry = out.split("image embeddings:")[1].split()[0]
    assert os.path.isfile(os.path.join(entry, "embeddings.f16")) and os.path.isfile(os.path.join(entry, "complete.json"))
    assert "images: 8 embedded (64-d), captions: 16, shards: 4; skipped: none" in out

    forbid_image_work(monkeypatch)
    data = make_data(tiny_teacher, shards, val_shards=shards)
    data.setup(FakeAccelerator())
    seen = [pair for batch in data.train_batches(0) for pair in pairs(batch, pair_of_tokens)]
    assert sorted(i for i, _ in seen) == list(range(NUM_IMAGES))
    val = list(data.val_batches())
    assert [len(b["lang"]) for b in val] == [4, 4] and all("image_embeds" in b for b in val)
    assert not data.skipped


def test_corrupt_cache_entry_or_index_is_rebuilt(tiny_teacher, shards, tmp_path, caplog, monkeypatch):
    first = build_image_cache(shards, str(tiny_teacher), cache_dir=tmp_path / "cache", batch_size=3, num_workers=0)
    reference = np.array(first.embeddings)
    embeddings_file = first.entry / "embeddings.f16"
    damaged = bytearray(embeddings_file.read_bytes())
    damaged[-5] ^= 0xFF
    embeddings_file.write_bytes(bytes(damaged))
    loads = Counter()
    real_loader = image_cache.load_image_encoder
    monkeypatch.setattr(image_cache, "load_image_encoder",
                        lambda *a, **k: loads.update(["model"]) or real_loader(*a, **k))

    with caplog.at_level(logging.WARNING):
        again = build_image_cache(shards, str(tiny_teacher), cache_dir=tmp_path / "cache", batch_size=3,
                                  num_workers=0)
    assert "do not match their checksums" in caplog.text and loads["model"] == 1
    assert again.entry == first.entry and np.array_equal(np.array(again.embeddings), reference)

    (again.index.dir / "chunk-000000.arrow").write_bytes(b"not arrow at all")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rebuilt = build_image_cache(shards, str(tiny_teacher), cache_dir=tmp_path / "cache", batch_size=3,
                                    num_workers=0)
    assert str(again.index.dir) in caplog.text and "rebuilding" in caplog.text
    assert rebuilt.index.num_rows == NUM_IMAGES and rebuilt.entry == first.entry
    assert loads["model"] == 1  # the index is rebuilt from the shards; the vectors were still intact


def test_cache_key_follows_the_image_model_and_the_shard_contents(tiny_teacher, shards, tmp_path):
    cache_dir = tmp_path / "cache"
    base = build_image_cache(shards, str(tiny_teacher), cache_dir=cache_dir, batch_size=8, num_workers=0)
    assert build_image_cache(shards, str(tiny_teacher), cache_dir=cache_dir, num_workers=0).entry == base.entry

    other_model = build_tiny_clip(tmp_path / "other_clip", SAMPLE_SENTENCES, seed=1)
    other = build_image_cache(shards, str(other_model), image_processor=str(tiny_teacher), cache_dir=cache_dir,
                              batch_size=8, num_workers=0)
    assert other.entry != base.entry and other.index.dir == base.index.dir
    assert not np.allclose(np.array(other.embeddings), np.array(base.embeddings))

    first_shard = tmp_path / "shards" / "shard-00000.tar"
    stat = first_shard.stat()
    os.utime(first_shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = build_image_cache(shards, str(tiny_teacher), cache_dir=cache_dir, batch_size=8, num_workers=0)
    assert touched.index.dir != base.index.dir and touched.entry != base.entry

    fewer = build_image_cache(str(tmp_path / "shards" / "shard-{00000..00002}.tar"), str(tiny_teacher),
                              cache_dir=cache_dir, batch_size=8, num_workers=0)
    assert fewer.entry not in {base.entry, touched.entry} and fewer.index.num_rows == 6


# --------------------------------------------------------------------------------------- epochs and ranks
@pytest.mark.parametrize("mode", ["cached", "streaming"])
@pytest.mark.parametrize("accum", [1, 2])
def test_every_image_exactly_once_per_epoch_across_two_ranks(tiny_teacher, shards, pair_of_tokens,
                                                             simulated_collectives, mode, accum):
    cached = mode == "cached"
    if cached:
        build_image_cache(shards, str(tiny_teacher), batch_size=8, num_workers=0)
    ranks = setup_ranks(tiny_teacher, shards, world=2, accum=accum, image_cache=cached)
    key = "image_embeds" if cached else "pixel_values"
    for epoch in (0, 1):
        per_rank = [list(data.train_batches(epoch)) for data in ranks]
        assert [data.num_train_batches(epoch) for data in ranks] == [2, 2]
        assert [len(batches) for batches in per_rank] == [2 * accum, 2 * accum]
        micro = 4 // (2 * accum)
        assert all(len(b["lang"]) == micro and b[key].shape[0] == micro for bs in per_rank for b in bs)
        seen = [pair for batches in per_rank for batch in batches for pair in pairs(batch, pair_of_tokens)]
        assert sorted(i for i, _ in seen) == list(range(NUM_IMAGES))
    if cached:
        # deterministic: the same (seed, epoch) gives the same batches and captions; another epoch differs
        again = [pairs(b, pair_of_tokens) for b in ranks[0].train_batches(0)]
        assert again == [pairs(b, pair_of_tokens) for b in ranks[0].train_batches(0)]
        assert again != [pairs(b, pair_of_tokens) for b in ranks[0].train_batches(1)]
        captions_by_epoch = [{i: lang for data in ranks for b in data.train_batches(epoch)
                              for i, lang in pairs(b, pair_of_tokens)} for epoch in range(4)]
        assert len({tuple(sorted(c.items())) for c in captions_by_epoch}) > 1
        assert {lang for c in captions_by_epoch for lang in c.values()} == set(LANGS)


@pytest.mark.parametrize("mode", ["cached", "streaming"])
def test_resume_skips_exactly_the_batches_already_trained(tiny_teacher, shards, pair_of_tokens, mode):
    data = make_data(tiny_teacher, shards, image_cache=mode == "cached", batch_size=2)
    data.setup(FakeAccelerator(gradient_accumulation_steps=2))
    full = [pairs(b, pair_of_tokens) for b in data.train_batches(1)]
    assert len(full) == 2 * data.num_train_batches(1) == 8
    for start in (1, 3):
        resumed = [pairs(b, pair_of_tokens) for b in data.train_batches(1, start_batch=start)]
        assert resumed == full[2 * start:]


def test_too_few_shards_for_ranks_and_workers_is_an_error_up_front(tiny_teacher, shards):
    data = make_data(tiny_teacher, shards, image_cache=False, num_workers=3)
    with pytest.raises(ValueError, match=r"4 shard\(s\) cannot feed 2 rank\(s\) x 3 dataloader worker"):
        data.setup(FakeAccelerator(0, 2))
    data = make_data(tiny_teacher, shards, batch_size=6)
    with pytest.raises(ValueError, match="batch_size=6 does not split into 2 rank"):
        data.setup(FakeAccelerator(0, 2, 2))


def test_validation_shares_are_equal_and_cover_each_pair_once(tiny_teacher, shards, pair_dir, pair_of_tokens,
                                                              simulated_collectives):
    transform = ImagePreprocessor.from_pretrained(str(tiny_teacher))
    for cached in (True, False):
        make_data(tiny_teacher, shards, image_cache=cached, val_shards=shards).setup(FakeAccelerator())
        ranks = setup_ranks(tiny_teacher, shards, world=2, image_cache=cached, val_shards=shards, eval_batch_size=6)
        shares = [list(data.val_batches()) for data in ranks]
        # 8 pairs, batches of 6: one batch of 3 per rank (a contrastive loss needs equal batches; 2 left out)
        assert [[len(b["lang"]) for b in batches] for batches in shares] == [[3], [3]]
        seen = [pairs(b, pair_of_tokens) for batches in shares for b in batches]
        assert [i for rank in seen for i, _ in rank] == list(range(6))
        assert all(lang == "en" for rank in seen for _, lang in rank)  # validation takes the first caption
        if not cached:
            batch = shares[1][0]
            expected = torch.stack([transform(Image.open(pair_dir / f"img{i}.png")) for i, _ in seen[1]])
            assert torch.equal(batch["pixel_values"], expected)


def write_shard(path, samples: list[tuple[str, bytes, str]]) -> str:
    with open(path, "wb") as handle, TarWriter(handle, encoder=False) as writer:
        for key, image, caption in samples:
            writer.write({"__key__": key, "png": image, "txt": caption.encode()})
    return str(path)


@pytest.mark.parametrize("mode", ["cached", "streaming"])
def test_corrupt_images_are_skipped_and_counted(tiny_teacher, tmp_path, pair_of_tokens, mode):
    good = [(f"k{i}", png_bytes(i), SAMPLE_CAPTIONS["en"][i]) for i in range(4)]
    broken = ("broken", png_bytes(9)[:60], SAMPLE_CAPTIONS["en"][5])
    shard = write_shard(tmp_path / "mixed.tar", good[:2] + [broken] + good[2:])
    data = make_data(tiny_teacher, shard, image_cache=mode == "cached", batch_size=2)
    data.setup(FakeAccelerator())
    batches = list(data.train_batches(0))
    seen = sorted(i for b in batches for i, _ in pairs(b, pair_of_tokens))
    assert seen == [0, 1, 2, 3]
    # Both modes count skips once, while setting up (streaming: in the decoding scan that sizes the epoch).
    assert data.skipped == Counter(corrupt_image=1)
    assert all(not b.get("skipped") for b in batches)


def write_samples(path, samples: list[dict]) -> str:
    with open(path, "wb") as handle, TarWriter(handle, encoder=False) as writer:
        for sample in samples:
            writer.write({key: value.encode() if isinstance(value, str) and key != "__key__" else value
                          for key, value in sample.items()})
    return str(path)


@pytest.fixture
def bad_sample_shards(tmp_path):
    """Two shards, 11 samples: 6 usable; 2 corrupt images, 2 empty captions (one of them also with a corrupt
    image: counted once, as empty_caption), 1 caption in a language outside data.languages."""
    def good(i):
        return {"__key__": f"g{i}", "png": png_bytes(i), "txt": SAMPLE_CAPTIONS["en"][i]}

    first = write_samples(tmp_path / "bad-0.tar", [
        good(0),
        {"__key__": "corrupt", "png": png_bytes(20)[:60], "txt": SAMPLE_CAPTIONS["en"][6]},
        {"__key__": "empty", "png": png_bytes(21), "txt": "   "},
        good(1),
        {"__key__": "corrupt_and_empty", "png": png_bytes(22)[:60], "txt": ""},
    ])
    second = write_samples(tmp_path / "bad-1.tar", [
        good(2),
        {"__key__": "german", "png": png_bytes(23), "txt": "ein Hund", "json": '{"lang": "de"}'},
        good(3), {"__key__": "corrupt2", "png": png_bytes(24)[:60], "txt": SAMPLE_CAPTIONS["en"][7]}, good(4), good(5),
    ])
    return f"{first}::{second}"


BAD_SAMPLE_SKIPS = Counter(corrupt_image=2, empty_caption=2, unknown_language=1)


@pytest.mark.parametrize("mode", ["cached", "streaming"])
def test_each_bad_sample_counts_once_and_the_epoch_has_the_steps_its_usable_samples_fill(
        tiny_teacher, bad_sample_shards, pair_of_tokens, mode, caplog):
    workers = 2 if mode == "streaming" else 0
    data = make_data(tiny_teacher, bad_sample_shards, image_cache=mode == "cached", batch_size=2,
                     num_workers=workers)
    data.setup(FakeAccelerator())
    assert data.skipped == BAD_SAMPLE_SKIPS
    assert data.num_train_batches(0) == 3  # 6 usable samples (a non-decoding count said 8)
    with caplog.at_level(logging.WARNING):
        epochs = [list(data.train_batches(epoch)) for epoch in (0, 1)]
    assert "ran out of samples" not in caplog.text  # every usable sample fills a batch: no worker drops a tail
    for batches in epochs:
        assert len(batches) == 3
        assert sorted(i for b in batches for i, _ in pairs(b, pair_of_tokens)) == list(range(6))
        assert all(not b.get("skipped") for b in batches)  # counted once, at setup; not again per epoch
    if mode == "cached":
        # Spawned workers get the dataset pickled: a memory map travels as its file name, not as a copy.
        clone = pickle.loads(pickle.dumps(data.pairs))
        assert np.array_equal(np.asarray(clone.embeddings), np.asarray(data.pairs.embeddings), equal_nan=True)
        if isinstance(data.pairs.embeddings, np.memmap):
            assert isinstance(clone.embeddings, np.memmap)


def test_streamed_skip_counts_come_from_the_first_pass_only(tiny_teacher, bad_sample_shards, pair_of_tokens,
                                                            caplog):
    # With samples_per_epoch there is no scan: the stream counts, and 10 samples per epoch out of 6 usable ones
    # make the rank re-read its shards within the epoch.
    data = make_data(tiny_teacher, bad_sample_shards, image_cache=False, batch_size=2, samples_per_epoch=10)
    data.setup(FakeAccelerator())
    assert data.skipped == Counter() and data.num_train_batches(0) == 5
    with caplog.at_level(logging.WARNING):
        batches = list(data.train_batches(0)) + list(data.train_batches(1))
    assert "re-reading its shards" in caplog.text
    assert len(batches) == 10
    assert sum((Counter(b.get("skipped") or {}) for b in batches), Counter()) == BAD_SAMPLE_SKIPS


# --------------------------------------------------------------------------------------- real ranks
def _two_rank_worker(rank: int, port: int, shards: str, model_dir: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    data = make_data(model_dir, shards, val_shards=shards, eval_batch_size=8)
    data.setup(accelerator)  # both ranks embed half of the images; rank 0 assembles the entry
    batches = list(data.train_batches(0)) + list(data.val_batches())
    tokens = [[tuple(ids[mask.bool()].tolist()) for ids, mask in zip(b["input_ids"], b["attention_mask"])]
              for b in batches]
    torch.save({"tokens": tokens, "embeds": [b["image_embeds"] for b in batches]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_two_real_ranks_build_one_cache_and_split_every_epoch(tiny_teacher, shards, tmp_path, pair_of_tokens):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(port, shards, str(tiny_teacher), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    train = [[pair_of_tokens[ids] for b in r["tokens"][:2] for ids in b] for r in results]
    val = [[pair_of_tokens[ids] for ids in r["tokens"][2]] for r in results]
    assert sorted(i for rank in train for i, _ in rank) == list(range(NUM_IMAGES))
    assert [i for rank in val for i, _ in rank] == list(range(NUM_IMAGES))

    single = build_image_cache(shards, str(tiny_teacher), cache_dir=tmp_path / "single", num_workers=0)
    cache_root = tmp_path / "shards" / ".altclip_cache" / "image_embeds"
    assert [p.name for p in cache_root.iterdir()] == [single.entry.name]  # same key; no parts left behind
    for rank, result in enumerate(results):
        rows = [i for i, _ in train[rank][:2]]
        torch.testing.assert_close(result["embeds"][0].float(), torch.from_numpy(single.embeddings[rows]).float(),
                                   rtol=1e-3, atol=1e-3)


def test_a_rank_with_fewer_samples_rereads_its_shards_instead_of_leaving_others_waiting(
        tiny_teacher, tmp_path, pair_dir, caplog):
    shutil.copytree(pair_dir / "shards", tmp_path / "shards")
    three = str(tmp_path / "shards" / "shard-{00000..00002}.tar")  # 6 samples: 4 on one rank, 2 on the other
    ranks = setup_ranks(tiny_teacher, three, world=2, image_cache=False, batch_size=2)
    with caplog.at_level(logging.WARNING):
        counts = [len(list(data.train_batches(0))) for data in ranks]
    assert counts == [3, 3] and ranks[0].num_train_batches(0) == 3
    assert "re-reading its shards to keep all ranks in step" in caplog.text


def test_config_instantiates_the_data_module_with_every_argument(tiny_teacher, shards):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import REPO

    data_cfg = OmegaConf.load(REPO / "configs" / "data" / "image_text.yaml")
    root = OmegaConf.create({"seed": 7, "data": data_cfg,
                             "model": {"tokenizer": str(tiny_teacher), "image_processor": str(tiny_teacher),
                                       "image_model": str(tiny_teacher)}})
    root.data.shards = shards
    data = instantiate(root.data, _convert_="all")
    assert isinstance(data, ImageTextData) and data.seed == 7 and data.image_cache and data.cache_dir is None
    assert data.languages == {"en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it"}
