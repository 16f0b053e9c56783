"""Image-text WebDataset shards for phase 2: shard lists, caption extraction, a training stream and its collate.

Shards follow the img2dataset layout: `KEY.jpg|jpeg|png|webp` (image), `KEY.txt` (caption), `KEY.json`
(metadata with an optional `lang`), plus optional extra captions as `KEY.<lang>.txt` files and/or a
`"captions": [{"text": ..., "lang": ...}, ...]` list in the json. `altclip-train prepare-wds` writes this layout.

Two readers share one extraction step:

- `iter_image_text_records`: single process, shard order, every caption of every image; for building
  embedding caches and for evaluation.
- `ImageTextWebDataset`: the training stream; shards are shuffled per epoch (seed + epoch), split by rank
  and by DataLoader worker, samples go through a shuffle buffer and come out with one caption each.

Bad samples never stop a run: each dropped sample is counted once, under the first reason that applies
(missing_image, then bad_json / bad_caption_encoding / bad_caption_entry when they leave it no caption,
missing_caption, empty_caption, unknown_language, then corrupt_image: the image is decoded only for a sample
whose captions are usable), plus one "shard_error" per unreadable shard. A caption dropped from a sample that
keeps another one is not a skipped sample. The counts ride on the next sample under "skipped" (then summed per
batch by `collate_image_text`), so they survive worker processes.

Do not pass a DataLoader over `ImageTextWebDataset` through `accelerator.prepare`: Accelerate would either
read everything on rank 0 and broadcast (dispatch_batches) or shard the stream a second time. The dataset
already splits by rank; move batches to the device with `accelerate.utils.send_to_device`.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import braceexpand
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from altclip_train.data.images import BadImageError, ImagePreprocessor, decode_image
from altclip_train.data.shards import expand_shard_urls, is_remote, local_path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_CHOICES = ("random", "first")

# A per-language caption file is `KEY.<lang>.txt`; webdataset hands it to us under the suffix `<lang>.txt`.
_LANG_TXT_SUFFIX = re.compile(r"([a-z]{2,3}(?:[-_][a-z0-9]+)?)\.txt")
_warned_uneven: set[tuple[int, int]] = set()


# ---------------------------------------------------------------------------------------------- shard lists


def check_shard_count(n_shards: int, world_size: int, num_workers: int, resampled: bool) -> None:
    """Refuse a split that would leave some rank or worker without shards (a DDP hang or a silent gap)."""
    readers = max(1, world_size) * max(1, num_workers)
    if not resampled and n_shards < readers:
        raise ValueError(
            f"{n_shards} shard(s) cannot feed {world_size} rank(s) x {max(1, num_workers)} dataloader worker(s) "
            f"= {readers} readers without resampling; write more shards (prepare-wds --shard-size smaller), "
            f"use fewer workers, or set data.resampled=true"
        )
    # Only ranks must agree on their number of batches (DDP collectives); workers of one rank may differ.
    if not resampled and world_size > 1 and n_shards % world_size and (n_shards, world_size) not in _warned_uneven:
        _warned_uneven.add((n_shards, world_size))
        logger.warning(
            "%d shards do not divide evenly over %d ranks: ranks will see different numbers of samples per "
            "epoch; cap the steps per epoch or use data.resampled=true",
            n_shards, world_size,
        )


def distributed_rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


# ------------------------------------------------------------------------------------------ caption parsing


def normalize_lang(lang: object) -> str | None:
    """ISO 639-1 style code: lower case primary subtag (`zh-CN` -> `zh`), None when empty."""
    if not isinstance(lang, str):
        return None
    lang = lang.strip().lower().replace("_", "-").split("-")[0]
    return lang or None


def _decode_text(data: bytes | str, skip_counts: Counter | None) -> str | None:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if skip_counts is not None:
            skip_counts["bad_caption_encoding"] += 1
        return None


def _sample_metadata(sample: dict, skip_counts: Counter | None) -> dict:
    raw = sample.get("json")
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        if skip_counts is not None:
            skip_counts["bad_json"] += 1
        return {}
    return meta


def _caption_candidates(sample: dict, default_lang: str, skip_counts: Counter | None) -> list[tuple[str, str]]:
    """Every caption a sample carries, de-duplicated, empties included (the caller filters and counts)."""
    meta = _sample_metadata(sample, skip_counts)
    base_lang = normalize_lang(meta.get("lang")) or default_lang
    candidates: list[tuple[str, str]] = []
    if "txt" in sample:
        text = _decode_text(sample["txt"], skip_counts)
        if text is not None:
            candidates.append((base_lang, text))
    elif isinstance(meta.get("caption"), str):
        candidates.append((base_lang, meta["caption"]))

    listed = meta.get("captions")
    for entry in listed if isinstance(listed, list) else []:
        if isinstance(entry, str):
            candidates.append((base_lang, entry))
        elif isinstance(entry, dict) and isinstance(entry.get("text", entry.get("caption")), str):
            candidates.append((normalize_lang(entry.get("lang")) or base_lang, entry.get("text", entry.get("caption"))))
        elif skip_counts is not None:
            skip_counts["bad_caption_entry"] += 1

    for suffix in sorted(sample):
        match = _LANG_TXT_SUFFIX.fullmatch(suffix) if isinstance(suffix, str) else None
        if match:
            text = _decode_text(sample[suffix], skip_counts)
            if text is not None:
                candidates.append((normalize_lang(match.group(1)) or default_lang, text))

    # prepare-wds (and other writers) store the same caption as KEY.txt, in the json list and as KEY.<lang>.txt;
    # counting it three times would skew caption sampling towards it.
    seen: set[tuple[str, str]] = set()
    unique = []
    for lang, text in candidates:
        item = (lang, text.strip())
        if item not in seen:
            seen.add(item)
            unique.append(item)
    return unique


def _usable_captions(
    candidates: list[tuple[str, str]], languages: set[str] | None, skip_counts: Counter | None
) -> list[tuple[str, str]]:
    kept = []
    for lang, text in candidates:
        if not text:
            reason = "empty_caption"
        elif languages is not None and lang not in languages:
            reason = "unknown_language"
        else:
            kept.append((lang, text))
            continue
        if skip_counts is not None:
            skip_counts[reason] += 1
    return kept


def _normalize_languages(languages: Iterable[str] | None) -> set[str] | None:
    if languages is None:
        return None
    if isinstance(languages, str):
        languages = [languages]
    return {code for code in (normalize_lang(lang) for lang in languages) if code}


def sample_captions(
    sample: dict,
    default_lang: str = "en",
    languages: Iterable[str] | None = None,
    skip_counts: Counter | None = None,
) -> list[tuple[str, str]]:
    """All usable (lang, text) captions of a raw webdataset sample.

    Sources, in order: `txt` (language from the json `lang`, else `default_lang`), the json `captions`
    list, then `<lang>.txt` entries. Empty captions are dropped and counted as "empty_caption"; captions
    whose language is not in `languages` (when given) are dropped and counted as "unknown_language".
    """
    default_lang = normalize_lang(default_lang) or "en"
    candidates = _caption_candidates(sample, default_lang, skip_counts)
    return _usable_captions(candidates, _normalize_languages(languages), skip_counts)


# ------------------------------------------------------------------------------------------ shard reading


def _open_url(url: str) -> str:
    # webdataset's gopen has no s3 handler; the AWS CLI streaming to stdout is the usual way in.
    if url.startswith("s3://"):
        return f"pipe:aws s3 cp {url} -"
    return url


def _raw_shard_samples(url: str, skip_counts: Counter) -> Iterator[dict]:
    """Raw samples of one shard; a truncated or unreadable shard is warned about and counted, not raised."""

    failed = False

    def warn_and_continue(error: Exception) -> bool:
        # webdataset reports one broken tar from several layers; count and warn once per shard.
        nonlocal failed
        if isinstance(error, OSError) and error.strerror:
            message = error.strerror
        else:
            message = error.args[0] if error.args else error
        if failed:
            logger.debug("shard %s: %s: %s", url, type(error).__name__, message)
        else:
            failed = True
            skip_counts["shard_error"] += 1
            logger.warning("shard %s: %s: %s (skipping the rest of it)", url, type(error).__name__, message)
        return True

    try:
        stream = gopen(_open_url(url))
    except Exception as error:  # gopen raises OSError for files, ValueError/IOError for pipes and unknown schemes
        warn_and_continue(error)
        return
    # webdataset's own url_opener leaves streams to the garbage collector; over a long run that leaks descriptors.
    try:
        files = tar_file_expander([{"url": url, "stream": stream}], handler=warn_and_continue)
        yield from group_by_keys(files, handler=warn_and_continue)
    finally:
        try:
            stream.close()
        except OSError as error:  # a pipe closed early exits non-zero; the samples read so far are fine
            logger.debug("closing shard %s: %s", url, error)


def _extract_record(sample: dict, url: str, default_lang: str, languages: set[str] | None, skip_counts: Counter):
    """(record, had_caption_source): the image bytes and usable captions of a sample, or None if it is skipped.

    A skipped sample adds exactly one count, under the first reason that applies; problems of a sample that is
    kept (a broken json beside a good KEY.txt, one empty caption among several) are not skips.
    """
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if image_ext is None:
        skip_counts["missing_image"] += 1
        return None, bool(_caption_candidates(sample, default_lang, None))
    problems: Counter = Counter()
    candidates = _caption_candidates(sample, default_lang, problems)
    if not candidates:
        skip_counts[next(iter(problems), "missing_caption")] += 1
        return None, bool(problems)
    captions = _usable_captions(candidates, languages, None)
    if not captions:
        skip_counts["unknown_language" if any(text for _, text in candidates) else "empty_caption"] += 1
        return None, True
    record = {
        "key": sample["__key__"],
        "url": url,
        "image_bytes": sample[image_ext],
        "image_ext": image_ext,
        "captions": captions,
    }
    return record, True


def _iter_shard_records(
    url: str, default_lang: str, languages: set[str] | None, skip_counts: Counter
) -> Iterator[dict]:
    samples = 0
    with_captions = 0
    for sample in _raw_shard_samples(url, skip_counts):
        samples += 1
        record, had_captions = _extract_record(sample, url, default_lang, languages, skip_counts)
        with_captions += had_captions
        if record is not None:
            yield record
    if samples and not with_captions:
        logger.warning("shard %s has no captions at all: its %d samples were skipped as missing_caption", url, samples)


def _decode_record_image(record: dict, skip_counts: Counter):
    try:
        return decode_image(record["image_bytes"], name=f"{record['url']}:{record['key']}.{record['image_ext']}")
    except BadImageError as error:
        skip_counts["corrupt_image"] += 1
        logger.debug("%s", error)
        return None


def iter_image_text_records(
    urls: str | Iterable[str],
    *,
    decode: bool = True,
    default_lang: str = "en",
    languages: Iterable[str] | None = None,
    skip_counts: Counter | None = None,
) -> Iterator[dict]:
    """Every usable image of the shards, in shard order, in this process.

    Yields {"key", "image" (decoded PIL image, or None when decode=False), "image_bytes",
    "captions": [(lang, text), ...], "url"}. Each skipped sample adds one count to `skip_counts`, under its
    first reason (see the module docstring; "corrupt_image" is only checked when decoding), and each
    unreadable shard one "shard_error". Only a spec matching no shards raises.
    """
    shard_urls = expand_shard_urls(urls)
    default_lang = normalize_lang(default_lang) or "en"
    languages = _normalize_languages(languages)
    skip_counts = Counter() if skip_counts is None else skip_counts
    for url in shard_urls:
        for record in _iter_shard_records(url, default_lang, languages, skip_counts):
            image = None
            if decode:
                image = _decode_record_image(record, skip_counts)
                if image is None:
                    continue
            yield {
                "key": record["key"],
                "image": image,
                "image_bytes": record["image_bytes"],
                "captions": record["captions"],
                "url": url,
            }


# ---------------------------------------------------------------------------------------- training stream


def _buffer_shuffle(items: Iterator[dict], buffer_size: int, rng: random.Random) -> Iterator[dict]:
    """Approximate shuffle of a stream: keep `buffer_size` items, emit a random one as each new one arrives."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


class ImageTextWebDataset(IterableDataset):
    """Training stream of {"pixel_values", "caption", "lang", "key", "skipped"}, one caption per image.

    Without resampling, each epoch shuffles the shard list with seed + epoch (identically on every rank),
    then rank r of R takes shards r, r+R, ... and DataLoader worker w of W takes every W-th of those, so
    each sample is read exactly once per epoch across all ranks and workers. With `resampled=True` every
    reader draws shards with replacement from its own seeded generator, forever or for
    `samples_per_epoch` samples in total per epoch (a reader counts a redrawn shard's skips once).

    `caption_choice="random"` draws one usable caption uniformly, or, with `language_weights`
    ({lang: weight}), with probability proportional to its language's weight (phase 2's
    `data.language_temperature`); the draw comes from the reader's seeded generator, so a replayed stream
    draws the same captions.

    Rank and world size come from the arguments, else torch.distributed (when initialised), else the
    RANK/WORLD_SIZE environment. Build the dataset after the process group is up.
    The epoch lives in shared memory, so `set_epoch` also reaches persistent DataLoader workers.
    """

    def __init__(
        self,
        urls: str | Iterable[str],
        transform: ImagePreprocessor,
        *,
        default_lang: str = "en",
        languages: Iterable[str] | None = None,
        seed: int = 0,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        caption_choice: str = "random",
        samples_per_epoch: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        language_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        if language_weights is not None and (not language_weights or min(language_weights.values()) <= 0):
            raise ValueError(f"language_weights must be positive for every language, got {language_weights}")
        if caption_choice not in CAPTION_CHOICES:
            raise ValueError(f"caption_choice must be one of {', '.join(CAPTION_CHOICES)}, got '{caption_choice}'")
        if samples_per_epoch is not None and not resampled:
            raise ValueError("samples_per_epoch only applies with resampled=true (without it an epoch is one pass)")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be positive, got {samples_per_epoch}")
        if (rank is None) != (world_size is None):
            raise ValueError("pass rank and world_size together, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.urls = expand_shard_urls(urls)
        self.transform = transform
        self.default_lang = normalize_lang(default_lang) or "en"
        self.languages = _normalize_languages(languages)
        self.seed = seed
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.caption_choice = caption_choice
        self.samples_per_epoch = samples_per_epoch
        self.language_weights = None if language_weights is None else dict(language_weights)
        self._explicit_rank = None if rank is None else (rank, world_size)
        self._rank_at_build = distributed_rank_and_world_size()
        # Shared memory that torch pickles for fork and spawn workers alike (a multiprocessing.Value's lock
        # cannot cross into a spawn context), so set_epoch reaches persistent workers.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def num_shards(self) -> int:
        return len(self.urls)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    def rank_and_world_size(self) -> tuple[int, int]:
        if self._explicit_rank is not None:
            return self._explicit_rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        # A spawned DataLoader worker has no process group; the values seen when the dataset was built hold.
        return self._rank_at_build

    def _shards_for(self, rank: int, world_size: int, worker: int, num_workers: int, epoch: int) -> Iterator[str]:
        if self.resampled:
            rng = random.Random(f"resample-{self.seed}-{epoch}-{rank}-{worker}")
            while True:
                yield rng.choice(self.urls)
        shards = list(self.urls)
        random.Random(f"shards-{self.seed}-{epoch}").shuffle(shards)
        yield from shards[rank::world_size][worker::num_workers]

    def _records(self, shards: Iterator[str], skip_counts: Counter) -> Iterator[dict]:
        # With resampling, shards that never yield anything would loop forever without a word; stop instead.
        barren_limit = max(2 * len(self.urls), 10)
        barren_in_a_row = 0
        counted: set[str] = set()
        for url in shards:
            produced = False
            # A shard drawn again (resampling) holds the same bad samples: count them the first time only.
            counts = skip_counts if url not in counted else Counter()
            counted.add(url)
            for record in _iter_shard_records(url, self.default_lang, self.languages, counts):
                produced = True
                yield record
            barren_in_a_row = 0 if produced else barren_in_a_row + 1
            if self.resampled and barren_in_a_row >= barren_limit:
                raise RuntimeError(
                    f"{barren_in_a_row} shards in a row gave no usable sample (skips so far: {dict(skip_counts)}); "
                    f"check the shards {self.urls[0]} ..."
                )

    def _training_sample(self, record: dict, rng: random.Random, skip_counts: Counter) -> dict | None:
        image = _decode_record_image(record, skip_counts)
        if image is None:
            return None
        try:
            pixel_values = self.transform(image)
        except OSError as error:
            skip_counts["corrupt_image"] += 1
            logger.debug("cannot preprocess %s:%s: %s", record["url"], record["key"], error)
            return None
        captions = record["captions"]
        if self.caption_choice == "first":
            lang, caption = captions[0]
        elif self.language_weights is not None:
            lang, caption = rng.choices(captions, weights=[self.language_weights.get(c[0], 0.0) for c in captions])[0]
        else:
            lang, caption = rng.choice(captions)
        return {"pixel_values": pixel_values, "caption": caption, "lang": lang, "key": record["key"]}

    def __iter__(self) -> Iterator[dict]:
        rank, world_size = self.rank_and_world_size()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        check_shard_count(len(self.urls), world_size, num_workers, self.resampled)
        epoch = self.epoch

        quota = None
        if self.samples_per_epoch is not None:
            quota = math.ceil(self.samples_per_epoch / (world_size * num_workers))
        rng = random.Random(f"samples-{self.seed}-{epoch}-{rank}-{worker}")
        skip_counts: Counter = Counter()
        records = self._records(self._shards_for(rank, world_size, worker, num_workers, epoch), skip_counts)

        # Hold one sample back so that skips met after the last good sample still ride on it.
        held = None
        produced = 0
        for record in _buffer_shuffle(records, self.shuffle_buffer, rng):
            sample = self._training_sample(record, rng, skip_counts)
            if sample is None:
                continue
            if held is not None:
                held["skipped"] = dict(skip_counts)
                skip_counts.clear()
                yield held
            held = sample
            produced += 1
            if quota is not None and produced >= quota:
                break
        if held is not None:
            held["skipped"] = dict(skip_counts)
            yield held
        elif skip_counts:
            logger.warning(
                "rank %d worker %d got no usable sample in epoch %d; skipped: %s", rank, worker, epoch, dict(skip_counts)
            )


def collate_image_text(
    samples: list[dict], tokenizer, max_length: int, *, pad_to_multiple_of: int | None = None
) -> dict:
    """Batch training samples: stacked pixels, captions tokenised and padded to the longest in the batch."""
    if not samples:
        raise ValueError("collate_image_text got an empty list of samples")
    tokens = tokenizer(
        [sample["caption"] for sample in samples],
        padding="longest",
        truncation=True,
        max_length=max_length,
        pad_to_multiple_of=pad_to_multiple_of,
        return_tensors="pt",
    )
    skipped: Counter = Counter()
    for sample in samples:
        skipped.update(sample.get("skipped") or {})
    return {
        "pixel_values": torch.stack([sample["pixel_values"] for sample in samples]),
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
        "lang": [sample["lang"] for sample in samples],
        "skipped": {reason: count for reason, count in skipped.items() if count},
    }
