"""WebDataset layer: prepare-wds round trips and skips, shard specs, caption extraction, rank/worker split, collate."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast
from webdataset import TarWriter

from altclip_train.data.images import clip_preprocessor
from altclip_train.data.prepare_wds import main as prepare_wds_main
from altclip_train.data.prepare_wds import prepare_wds
from altclip_train.data.webdataset import (
    ImageTextWebDataset,
    check_shard_count,
    collate_image_text,
    expand_shard_urls,
    iter_image_text_records,
    sample_captions,
)

TRANSFORM = clip_preprocessor(8)


def image_bytes(seed: int, fmt: str = "PNG", size=(10, 12)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_images(directory, count: int, fmt: str = "PNG", ext: str = "png") -> list[str]:
    names = []
    for index in range(count):
        name = f"img{index}.{ext}"
        (directory / name).write_bytes(image_bytes(index, fmt))
        names.append(name)
    return names


def shard_members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers()}


def write_shard(path, samples: list[dict]) -> str:
    with open(path, "wb") as handle, TarWriter(handle, encoder=False) as writer:
        for sample in samples:
            writer.write({
                key: value.encode() if isinstance(value, str) and key != "__key__" else value
                for key, value in sample.items()
            })
    return str(path)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = ["[PAD]", "[UNK]", "a", "cat", "dog", "on", "the", "mat", "red", "big"]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture
def eight_shards(tmp_path):
    """8 images, 2 per shard -> 4 shards, one caption each."""
    names = write_images(tmp_path, 8)
    rows = "".join(f"{name},caption {i},en\n" for i, name in enumerate(names))
    (tmp_path / "pairs.csv").write_text("image,caption,lang\n" + rows)
    prepare_wds(tmp_path / "pairs.csv", tmp_path / "shards", shard_size=2)
    return str(tmp_path / "shards" / "shard-{00000..00003}.tar")


# ------------------------------------------------------------------------------------------- prepare-wds


def test_prepare_csv_round_trip_groups_captions_and_keeps_image_bytes(tmp_path):
    write_images(tmp_path, 2)
    (tmp_path / "photo.jpg").write_bytes(image_bytes(7, "JPEG"))
    (tmp_path / "pairs.csv").write_text(
        "image,caption,lang\n"
        "img0.png,a red cat,en\n"
        "img1.png,a dog,en\n"
        "img0.png,一只红猫,zh\n"
        'photo.jpg,"un chat, rouge",fr\n'
        "img0.png,gato rojo,es\n"
        "img0.png,a big red cat,en\n",
        encoding="utf-8",
    )
    summary = prepare_wds(tmp_path / "pairs.csv", tmp_path / "out", shard_size=2)

    assert summary["num_samples"] == 3 and summary["num_rows"] == 6
    assert summary["captions_per_lang"] == {"en": 3, "es": 1, "fr": 1, "zh": 1}
    assert [shard["name"] for shard in summary["shards"]] == ["shard-00000.tar", "shard-00001.tar"]
    assert [shard["samples"] for shard in summary["shards"]] == [2, 1]
    assert summary["skipped"] == {}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_captions"] == 6 and manifest["shards"] == summary["shards"]

    members = shard_members(tmp_path / "out" / "shard-00000.tar")
    key = "000000000"
    assert members[f"{key}.png"] == (tmp_path / "img0.png").read_bytes()
    assert members[f"{key}.txt"].decode() == "a red cat"
    assert members[f"{key}.zh.txt"].decode() == "一只红猫"
    # one KEY.<lang>.txt per language: the first caption of that language
    assert members[f"{key}.en.txt"].decode() == "a red cat"
    meta = json.loads(members[f"{key}.json"])
    assert meta["lang"] == "en"
    assert [c["text"] for c in meta["captions"]] == ["a red cat", "一只红猫", "gato rojo", "a big red cat"]
    jpeg_members = shard_members(tmp_path / "out" / "shard-00001.tar")
    assert jpeg_members["000000002.jpg"] == (tmp_path / "photo.jpg").read_bytes()

    records = list(iter_image_text_records(str(tmp_path / "out")))
    assert [record["key"] for record in records] == ["000000000", "000000001", "000000002"]
    assert records[0]["captions"] == [("en", "a red cat"), ("zh", "一只红猫"), ("es", "gato rojo"), ("en", "a big red cat")]
    assert records[2]["captions"] == [("fr", "un chat, rouge")]
    assert records[0]["image"].size == (10, 12)


def test_prepare_jsonl_and_tsv_with_default_language_and_caption_lists(tmp_path):
    (tmp_path / "images").mkdir()
    write_images(tmp_path / "images", 3)
    lines = [
        {"path": "img0.png", "text": ["a cat", "the cat on the mat"]},
        {"path": "img1.png", "text": "犬", "language": "ja"},
        {"path": "img0.png", "text": "un gato", "language": "es-MX"},
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n\n")
    summary = prepare_wds(
        tmp_path / "pairs.jsonl", tmp_path / "out", image_root=tmp_path / "images",
        image_column="path", caption_column="text", lang_column="language", default_lang="fr",
    )
    assert summary["captions_per_lang"] == {"es": 1, "fr": 2, "ja": 1}
    records = list(iter_image_text_records(str(tmp_path / "out" / "*.tar"), decode=False))
    assert records[0]["captions"] == [("fr", "a cat"), ("fr", "the cat on the mat"), ("es", "un gato")]
    assert records[1]["captions"] == [("ja", "犬")] and records[1]["image"] is None

    # a TSV without any lang column: every caption gets the default language
    (tmp_path / "pairs.tsv").write_text("image\tcaption\nimg2.png\ta big dog\n")
    summary = prepare_wds(tmp_path / "pairs.tsv", tmp_path / "tsv", image_root=tmp_path / "images")
    assert summary["captions_per_lang"] == {"en": 1}


def test_prepare_counts_and_names_bad_rows(tmp_path, caplog):
    write_images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(image_bytes(5)[:40])
    (tmp_path / "pairs.csv").write_text(
        "image,caption,lang\n"
        "img0.png,a cat,en\n"
        "broken.png,a truncated image,en\n"
        "missing.png,no such file,en\n"
        "img1.png,   ,en\n"
        "img1.png,a dog,en\n"
        "img1.png,a dog,en\n"
    )
    with caplog.at_level(logging.WARNING, logger="altclip_train.data.prepare_wds"):
        summary = prepare_wds(tmp_path / "pairs.csv", tmp_path / "out")
    assert summary["num_samples"] == 2
    assert summary["skipped"] == {"corrupt_image": 1, "missing_image": 1, "empty_caption": 1, "duplicate_caption": 1}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"] == summary["skipped"]
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    csv_path = tmp_path / "pairs.csv"
    assert f"{csv_path}:3" in warnings and "broken.png" in warnings
    assert f"{csv_path}:4" in warnings and "missing.png" in warnings
    assert f"{csv_path}:5: empty caption" in warnings


def test_prepare_input_errors_are_one_line(tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "pairs.csv").write_text("image,caption\nimg0.png,a cat\n")
    with pytest.raises(ValueError, match=r"no column 'url' \(columns: image, caption\)") as error:
        prepare_wds(tmp_path / "pairs.csv", tmp_path / "out", image_column="url")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="no column 'language'"):
        prepare_wds(tmp_path / "pairs.csv", tmp_path / "out", lang_column="language")
    with pytest.raises(FileNotFoundError, match="input file not found: .*nope.csv"):
        prepare_wds(tmp_path / "nope.csv", tmp_path / "out")

    prepare_wds(tmp_path / "pairs.csv", tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_wds(tmp_path / "pairs.csv", tmp_path / "out")
    assert prepare_wds(tmp_path / "pairs.csv", tmp_path / "out", overwrite=True)["num_samples"] == 1


def test_prepare_main_entry_point(tmp_path, capsys):
    write_images(tmp_path, 3)
    (tmp_path / "pairs.csv").write_text("file,text\nimg0.png,a\nimg1.png,b\nimg2.png,c\n")
    code = prepare_wds_main(
        [str(tmp_path / "pairs.csv"), str(tmp_path / "out"), "--columns", "file,text", "--shard-size", "2",
         "--default-lang", "de"]
    )
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_shards"] == 2 and manifest["captions_per_lang"] == {"de": 3}

    assert prepare_wds_main([str(tmp_path / "pairs.csv"), str(tmp_path / "other")]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("altclip-train prepare-wds: error:") and "no column 'image'" in message
    assert "\n" not in message


# -------------------------------------------------------------------------------------------- shard specs


def test_expand_shard_urls(tmp_path, eight_shards):
    shard_dir = tmp_path / "shards"
    names = [str(shard_dir / f"shard-{i:05d}.tar") for i in range(4)]
    assert expand_shard_urls(eight_shards) == names
    assert expand_shard_urls(str(shard_dir / "*.tar")) == names
    assert expand_shard_urls(str(shard_dir)) == names
    assert expand_shard_urls(f"{names[0]}::{names[3]}") == [names[0], names[3]]
    assert expand_shard_urls([names[1], f"{names[2]}::{names[0]}"]) == [names[1], names[2], names[0]]
    remote = ["https://host/data-{000..002}.tar", "pipe:curl -s http://x/a.tar", "s3://bucket/b.tar"]
    assert expand_shard_urls(remote) == [
        "https://host/data-000.tar", "https://host/data-001.tar", "https://host/data-002.tar",
        "pipe:curl -s http://x/a.tar", "s3://bucket/b.tar",
    ]


def test_no_shards_is_a_one_line_error(tmp_path, eight_shards):
    with pytest.raises(FileNotFoundError, match=r"^no shards match '.*nothing-\*\.tar'$"):
        expand_shard_urls(str(tmp_path / "nothing-*.tar"))
    # an explicit range with a hole names the missing shard
    with pytest.raises(FileNotFoundError, match=r"no shards match '.*shard-00004.tar' \(from '.*\{00000..00004\}"):
        expand_shard_urls(str(tmp_path / "shards" / "shard-{00000..00004}.tar"))
    with pytest.raises(FileNotFoundError, match="no shards match"):
        ImageTextWebDataset(str(tmp_path / "empty-dir" / "*.tar"), TRANSFORM)
    with pytest.raises(FileNotFoundError, match="no shards match"):
        list(iter_image_text_records([]))


def test_shard_count_check(eight_shards):
    check_shard_count(4, world_size=2, num_workers=2, resampled=False)
    check_shard_count(2, world_size=2, num_workers=4, resampled=True)
    with pytest.raises(ValueError, match=r"3 shard\(s\) cannot feed 2 rank\(s\) x 2 dataloader worker\(s\).*resampled=true"):
        check_shard_count(3, world_size=2, num_workers=2, resampled=False)
    # the dataset checks at iteration time, against the real world size and worker count
    dataset = ImageTextWebDataset(eight_shards, TRANSFORM, rank=1, world_size=8)
    with pytest.raises(ValueError, match="4 shard"):
        next(iter(dataset))


# ------------------------------------------------------------------------------------- caption extraction


def test_multilingual_caption_extraction_from_lang_files_and_json_lists():
    sample = {
        "__key__": "0001",
        "jpg": b"...",
        "txt": b"a cat on a mat",
        "zh.txt": "垫子上的猫".encode(),
        "ja.txt": b"  ",
        "json": json.dumps(
            {"lang": "en", "captions": [
                {"text": "a cat on a mat", "lang": "en"},
                {"text": "un chat", "lang": "fr-FR"},
                {"text": "кот", "lang": "ru"},
                "no language given",
            ]}
        ).encode(),
    }
    counts = Counter()
    captions = sample_captions(sample, default_lang="en", skip_counts=counts)
    assert captions == [
        ("en", "a cat on a mat"), ("fr", "un chat"), ("ru", "кот"), ("en", "no language given"), ("zh", "垫子上的猫"),
    ]
    assert counts == {"empty_caption": 1}

    counts = Counter()
    assert sample_captions(sample, languages={"zh", "fr"}, skip_counts=counts) == [("fr", "un chat"), ("zh", "垫子上的猫")]
    assert counts == {"empty_caption": 1, "unknown_language": 3}

    # the json lang decides the language of KEY.txt; without it, default_lang does
    assert sample_captions({"txt": b"hola", "json": b'{"lang": "es"}'}, default_lang="en") == [("es", "hola")]
    assert sample_captions({"txt": b"hallo"}, default_lang="de") == [("de", "hallo")]


def test_records_count_skips_and_warn_about_caption_less_shards(tmp_path, caplog):
    good = image_bytes(1)
    first = write_shard(tmp_path / "a.tar", [
        {"__key__": "k0", "png": good, "txt": "a cat"},
        {"__key__": "k1", "png": image_bytes(2)[:30], "txt": "truncated"},
        {"__key__": "k2", "txt": "no image here"},
        {"__key__": "k3", "png": good, "txt": "   "},
        {"__key__": "k4", "png": good, "json": '{"captions": [{"text": "un chien", "lang": "fr"}]}', "de.txt": "ein Hund"},
    ])
    second = write_shard(tmp_path / "b.tar", [{"__key__": "m0", "png": good}, {"__key__": "m1", "jpg": good}])
    counts = Counter()
    with caplog.at_level(logging.WARNING, logger="altclip_train.data.webdataset"):
        records = list(iter_image_text_records([first, second], skip_counts=counts))
    assert [record["key"] for record in records] == ["k0", "k4"]
    assert records[1]["captions"] == [("fr", "un chien"), ("de", "ein Hund")]
    assert records[1]["url"] == first and records[1]["image_bytes"] == good
    assert counts == {"corrupt_image": 1, "missing_image": 1, "empty_caption": 1, "missing_caption": 2}
    assert any("b.tar has no captions at all" in record.getMessage() for record in caplog.records)

    # without decoding the truncated image is not detected, everything else is the same
    counts = Counter()
    assert len(list(iter_image_text_records([first], decode=False, skip_counts=counts))) == 3
    assert "corrupt_image" not in counts


def test_broken_shards_are_warned_counted_and_skipped(tmp_path, eight_shards, caplog):
    first, second, third, _ = expand_shard_urls(eight_shards)
    data = (tmp_path / "shards" / "shard-00000.tar").read_bytes()
    with tarfile.open(first) as tar:
        second_image = tar.getmember("000000001.png")
    # cut inside a member's data: a cut at or inside a header looks like a complete, shorter tar to a stream reader
    (tmp_path / "truncated.tar").write_bytes(data[: second_image.offset_data + second_image.size // 2])
    dataset = ImageTextWebDataset([str(tmp_path / "truncated.tar"), second, third], TRANSFORM, shuffle_buffer=0)
    (tmp_path / "shards" / "shard-00002.tar").unlink()  # vanishes between listing and reading
    with caplog.at_level(logging.WARNING, logger="altclip_train.data.webdataset"):
        samples = list(dataset)
    totals = sum((Counter(sample["skipped"]) for sample in samples), Counter())
    assert {"000000002", "000000003"} <= {sample["key"] for sample in samples} and len(samples) <= 3
    assert totals["shard_error"] == 2
    warnings = [record.getMessage() for record in caplog.records]
    assert sum("truncated.tar" in message for message in warnings) == 1
    assert any("shard-00002.tar: FileNotFoundError: No such file or directory" in message for message in warnings)

    # resampling over shards that never give a sample stops with an error instead of spinning forever
    (tmp_path / "junk.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(RuntimeError, match="shards in a row gave no usable sample"):
        next(iter(ImageTextWebDataset(str(tmp_path / "junk.tar"), TRANSFORM, resampled=True)))


# ------------------------------------------------------------------------------------------ training stream


def loader_keys(dataset, num_workers: int) -> list[str]:
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    return [sample["key"] for sample in loader]


def test_every_sample_exactly_once_across_two_ranks_and_two_workers(eight_shards, monkeypatch):
    seen = []
    for rank in (0, 1):
        dataset = ImageTextWebDataset(eight_shards, TRANSFORM, rank=rank, world_size=2, seed=3, shuffle_buffer=4)
        seen.append(loader_keys(dataset, num_workers=2))
    assert len(seen[0]) == len(seen[1]) == 4
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"{i:09d}" for i in range(8)]

    # the same split when rank and world size come from the launcher's environment
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        dataset = ImageTextWebDataset(eight_shards, TRANSFORM, seed=3, shuffle_buffer=4)
        assert dataset.rank_and_world_size() == (rank, 2)
        assert sorted(loader_keys(dataset, num_workers=2)) == sorted(seen[rank])


def test_set_epoch_reshuffles_deterministically(eight_shards):
    def epoch_order(epoch: int) -> list[str]:
        dataset = ImageTextWebDataset(eight_shards, TRANSFORM, seed=0, shuffle_buffer=0)
        dataset.set_epoch(epoch)
        return [sample["key"] for sample in dataset]

    assert epoch_order(0) == epoch_order(0)
    assert epoch_order(0) != epoch_order(1)
    assert sorted(epoch_order(1)) == sorted(epoch_order(0))

    # set_epoch reaches persistent workers too
    dataset = ImageTextWebDataset(eight_shards, TRANSFORM, seed=0, shuffle_buffer=0)
    loader = DataLoader(dataset, batch_size=None, num_workers=1, persistent_workers=True)
    first = [sample["key"] for sample in loader]
    dataset.set_epoch(1)
    assert [sample["key"] for sample in loader] == epoch_order(1) and first == epoch_order(0)


def test_training_samples_and_skip_counts_survive_workers(tmp_path):
    good = image_bytes(1)
    shards = []
    for index in range(2):
        shards.append(write_shard(tmp_path / f"s{index}.tar", [
            {"__key__": f"{index}a", "png": good, "txt": "a cat", "zh.txt": "猫"},
            {"__key__": f"{index}b", "png": good[:30], "txt": "broken"},
            {"__key__": f"{index}c", "png": good, "txt": ""},
            {"__key__": f"{index}d", "png": good, "txt": "the dog", "json": '{"lang": "en"}'},
            {"__key__": f"{index}e", "png": good[:30], "txt": "broken at the end"},
        ]))
    dataset = ImageTextWebDataset(shards, TRANSFORM, languages=["en", "zh"], seed=1)
    loader = DataLoader(
        dataset, batch_size=3, num_workers=2, collate_fn=partial(collate_image_text, tokenizer=tiny_tokenizer(), max_length=8)
    )
    totals = Counter()
    langs = []
    images = 0
    for batch in loader:
        totals.update(batch.pop("skipped"))
        assert batch["pixel_values"].shape[1:] == (3, 8, 8)
        langs += batch["lang"]
        images += len(batch["lang"])
    assert images == 4
    assert set(langs) <= {"en", "zh"}
    assert totals == {"corrupt_image": 4, "empty_caption": 2}

    sample = next(iter(ImageTextWebDataset(shards[:1], TRANSFORM, caption_choice="first", shuffle_buffer=0)))
    assert (sample["key"], sample["caption"], sample["lang"]) == ("0a", "a cat", "en")
    assert torch.equal(sample["pixel_values"], TRANSFORM(good))


def test_resampled_epoch_length(eight_shards):
    dataset = ImageTextWebDataset(eight_shards, TRANSFORM, resampled=True, samples_per_epoch=20, rank=0, world_size=2)
    keys = [sample["key"] for sample in dataset]
    assert len(keys) == 10
    with pytest.raises(ValueError, match="samples_per_epoch only applies with resampled"):
        ImageTextWebDataset(eight_shards, TRANSFORM, samples_per_epoch=20)


def test_collate_pads_per_batch_and_sums_skips():
    tokenizer = tiny_tokenizer()
    pixels = torch.zeros(3, 8, 8)
    samples = [
        {"pixel_values": pixels, "caption": "a cat", "lang": "en", "key": "1", "skipped": {"corrupt_image": 2}},
        {"pixel_values": pixels + 1, "caption": "the big red dog", "lang": "fr", "key": "2", "skipped": {}},
        {"pixel_values": pixels, "caption": "cat", "lang": "zh", "key": "3", "skipped": {"corrupt_image": 1, "empty_caption": 1}},
    ]
    batch = collate_image_text(samples, tokenizer, max_length=16)
    assert batch["input_ids"].shape == (3, 4)  # the longest caption, not max_length
    assert batch["attention_mask"].sum(dim=1).tolist() == [2, 4, 1]
    assert batch["input_ids"][0, 2:].tolist() == [tokenizer.pad_token_id] * 2
    assert batch["pixel_values"].shape == (3, 3, 8, 8) and batch["pixel_values"][1].eq(1).all()
    assert batch["lang"] == ["en", "fr", "zh"]
    assert batch["skipped"] == {"corrupt_image": 3, "empty_caption": 1}

    short = collate_image_text(samples[:1], tokenizer, max_length=16)
    assert short["input_ids"].shape == (1, 2)
    truncated = collate_image_text(samples, tokenizer, max_length=3)
    assert truncated["input_ids"].shape == (3, 3)
