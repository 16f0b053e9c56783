"""Phase-2 data: multilingual image-text pairs from WebDataset shards, one caption per image per epoch.

Two modes behind the training loop's data-module contract (`setup`, `num_train_batches`, `train_batches`,
`val_batches`, `skipped`):

- **cached** (`image_cache: true`, the AltCLIP recipe: vision tower and `visual_projection` frozen). Every
  image is embedded once by `altclip_train.data.image_cache` (on first use, or ahead of time with
  `altclip-train cache-images`); from then on a run reads only the caption index and float16 vectors, and
  never decodes an image or loads the vision model. Batches carry `image_embeds`. Images are rows of a
  map-style dataset driven by `BatchPlan`: deterministic per (seed, epoch), each image exactly once per
  epoch across all ranks, its caption for the epoch a pure function of (seed, epoch, row), and resuming
  mid-epoch costs nothing.
- **streaming** (`image_cache: false`, required when the image side trains). `ImageTextWebDataset` decodes
  images on the fly in DataLoader workers (shards split by rank and worker, shuffle buffer, one random
  caption per image) and batches carry `pixel_values`. The epoch length comes from `samples_per_epoch`
  when set, else the shards' `manifest.json` (written by prepare-wds), else a one-time scan without
  decoding (cached on disk). Every rank yields the same number of batches: a rank whose shards run short
  re-reads them rather than leave the others waiting in a collective. Resuming mid-epoch replays the
  stream up to the saved position.

`batch_size` is global: pairs per optimizer step, split evenly over ranks and then over the
`gradient_accumulation_steps` micro-batches of each rank. Validation shards (optional) are split into
equal-size shares on every rank; since a contrastive loss depends on the batch size, every validation
batch has `eval_batch_size` pairs and a short tail is left out.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset

from altclip_train.data.batching import BatchPlan, rank_slice
from altclip_train.data.image_cache import IndexedImages, ShardIndex, load_or_build_image_cache
from altclip_train.data.images import ClipImageTransform
from altclip_train.data.loading import make_loader, pad_batch
from altclip_train.data.shards import default_cache_dir, expand_shard_urls, is_remote, local_path, manifest_sample_count
from altclip_train.data.webdataset import ImageTextWebDataset, check_shard_count, collate_image_text, normalize_lang

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- captions
def _splitmix64(values: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps silently, which is what this mixer wants.
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def caption_draws(seed: int, epoch: int, rows: np.ndarray) -> np.ndarray:
    """One pseudo-random uint64 per row, a pure function of (seed, epoch, row): same on every rank and worker."""
    base = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
    base = _splitmix64(base ^ np.uint64(epoch % 2**64))
    return _splitmix64(base ^ np.asarray(rows, dtype=np.uint64))


class CaptionBatcher:
    """Picks one usable caption per image and tokenises the batch, padded to its own longest caption.

    Training (`epoch` given) draws the caption from (seed, epoch, row); evaluation (`epoch` None) takes the
    first usable one, so validation pairs never change.
    """

    def __init__(self, index: ShardIndex, tokenizer, max_length: int, languages: set[str] | None, seed: int):
        self.index = index
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.languages = languages
        self.seed = seed
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, rows: np.ndarray, epoch: int | None) -> dict[str, Any]:
        draws = caption_draws(self.seed, epoch, rows) if epoch is not None else np.zeros(len(rows), dtype=np.uint64)
        langs, texts = [], []
        for captions, draw in zip(self.index.captions(rows), draws):
            usable = [c for c in captions if self.languages is None or c[0] in self.languages]
            lang, text = usable[int(draw % np.uint64(len(usable)))]
            langs.append(lang)
            texts.append(text)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        input_ids, attention_mask = pad_batch(ids, self.pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "lang": langs}


class CachedPairs(TorchDataset):
    """Images as rows over the embedding cache; indexing with (rows, epoch) returns one padded batch."""

    def __init__(self, captions: CaptionBatcher, embeddings_path: Path):
        self.captions = captions
        self.embeddings_path = Path(embeddings_path)
        self._embeddings = None

    # Workers open their own memory map instead of receiving a pickled copy of the matrix.
    def __getstate__(self):
        return {**self.__dict__, "_embeddings": None}

    @property
    def embeddings(self) -> np.ndarray:
        if self._embeddings is None:
            self._embeddings = np.load(self.embeddings_path, mmap_mode="r")
        return self._embeddings

    def __len__(self) -> int:
        return self.captions.index.num_rows

    def __getitem__(self, item: tuple[np.ndarray, int | None]) -> dict[str, Any]:
        rows, epoch = item
        embeds = torch.from_numpy(np.ascontiguousarray(self.embeddings[rows], dtype=np.float16))
        return {"image_embeds": embeds, **self.captions(rows, epoch)}


def eval_chunks(rows: np.ndarray, batch_size: int, world_size: int) -> list[np.ndarray]:
    """Equal validation batches whose size divides by the world size; the tail that fits no batch is left out."""
    size = max(world_size, batch_size - batch_size % world_size)
    if len(rows) >= size:
        return [rows[start:start + size] for start in range(0, len(rows) - size + 1, size)]
    usable = len(rows) - len(rows) % world_size
    return [rows[:usable]] if usable else []


# --------------------------------------------------------------------------------------- the data module
class ImageTextData:
    """Builds phase-2 batches; `setup()` indexes the shards and, in cached mode, fills the image cache once."""

    def __init__(self, shards: str | list[str], tokenizer: str, image_processor: str, image_model: str | None = None,
                 val_shards: str | list[str] | None = None, batch_size: int = 1024, eval_batch_size: int = 256,
                 max_length: int = 77, languages: Iterable[str] | None = None, default_lang: str = "en",
                 num_workers: int = 4, resampled: bool = False, shuffle_buffer: int = 1000,
                 samples_per_epoch: int | None = None, seed: int = 0, image_cache: bool = True,
                 cache_dir: str | None = None, cache_batch_size: int = 256, cache_dtype: str = "float32",
                 trust_remote_code: bool = False, bucket_by_length: bool = True):
        if image_cache and not image_model:
            raise ValueError("data.image_cache=true needs data.image_model (the checkpoint whose frozen image "
                             "side makes the cached embeddings)")
        if not (image_processor or image_model):
            raise ValueError("data.image_processor is required (a dir or hub id with preprocessor_config.json)")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"data.batch_size and data.eval_batch_size must be positive, got {batch_size} and "
                             f"{eval_batch_size}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"data.samples_per_epoch must be positive, got {samples_per_epoch}")
        self.shards = shards
        self.val_shards = val_shards
        self.tokenizer_name = tokenizer
        self.image_processor = image_processor or image_model
        self.image_model = image_model
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.languages = None if languages is None else {normalize_lang(lang) for lang in languages} - {None}
        self.default_lang = normalize_lang(default_lang) or "en"
        self.num_workers = num_workers
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.image_cache = image_cache
        self.cache_dir = cache_dir
        self.cache_batch_size = cache_batch_size
        self.cache_dtype = cache_dtype
        self.trust_remote_code = trust_remote_code
        self.bucket_by_length = bucket_by_length
        self.skipped: Counter = Counter()

    # ---------------------------------------------------------------- setup
    def setup(self, accelerator) -> None:
        from transformers import AutoTokenizer

        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.accum = int(getattr(accelerator, "gradient_accumulation_steps", 1) or 1)
        self.pin_memory = torch.device(accelerator.device).type == "cuda"
        readers = self.world_size * self.accum
        if self.batch_size % readers:
            raise ValueError(f"data.batch_size={self.batch_size} does not split into {self.world_size} rank(s) x "
                             f"{self.accum} accumulation step(s); use a multiple of {readers}")
        self.micro_batch_size = self.batch_size // readers
        self.urls = expand_shard_urls(self.shards)
        self.cache_root = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir(self.urls)
        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name, trust_remote_code=self.trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {self.tokenizer_name} has no pad token; phase-2 batches are padded")
        self.transform = ClipImageTransform.from_pretrained(self.image_processor)
        if self.image_cache:
            self._setup_cached(accelerator)
        else:
            self._setup_streaming(accelerator)
        self._setup_val(accelerator)

    def _open_cache(self, urls: list[str], accelerator):
        return load_or_build_image_cache(
            urls, self.image_model, self.transform, self.cache_root, accelerator=accelerator,
            batch_size=self.cache_batch_size, num_workers=self.num_workers, default_lang=self.default_lang,
            dtype=self.cache_dtype, trust_remote_code=self.trust_remote_code)

    def _usable_rows(self, index: ShardIndex, decodable: np.ndarray | None, skipped: Counter) -> np.ndarray:
        """Rows with a decodable image and at least one caption in data.languages; dropped captions are counted."""
        usable = index.usable_caption_counts(self.languages)
        dropped = int(index.usable_caption_counts(None).sum() - usable.sum())
        if dropped:
            skipped["unknown_language"] += dropped
        keep = usable > 0 if decodable is None else decodable & (usable > 0)
        return np.flatnonzero(keep)

    def _setup_cached(self, accelerator) -> None:
        cache = self._open_cache(self.urls, accelerator)
        self.skipped.update(cache.skipped())
        rows = self._usable_rows(cache.index, cache.decodable, self.skipped)
        if not len(rows):
            raise ValueError(f"no usable image-text pair in {self.shards} (skipped: {dict(self.skipped) or 'none'})")
        weight = self.samples_per_epoch / len(rows) if self.samples_per_epoch else 1.0
        # Batches pad to their longest caption, so grouping images whose captions have similar lengths
        # (estimated: the caption itself is drawn per epoch) cuts the text tower's padded tokens.
        lengths = (cache.index.estimated_caption_tokens(self.tokenizer, self.languages, seed=self.seed)
                   if self.bucket_by_length else np.zeros(cache.index.num_rows))
        self.plan = BatchPlan(lengths=lengths, groups=[rows], weights=[weight], global_batch_size=self.batch_size, seed=self.seed,
                              bucket_by_length=self.bucket_by_length)
        if self.plan.num_batches(0) == 0:
            raise ValueError(f"{len(rows)} usable pairs are fewer than data.batch_size={self.batch_size}")
        captions = CaptionBatcher(cache.index, self.tokenizer, self.max_length, self.languages, self.seed)
        self.pairs = CachedPairs(captions, cache.embeddings_path)
        log.info("phase-2 data (cached image embeddings %s): %d images, %d batches of %d per epoch%s",
                 cache.entry, len(rows), self.plan.num_batches(0), self.batch_size,
                 f"; skipped: {dict(self.skipped)}" if self.skipped else "")

    def _setup_streaming(self, accelerator) -> None:
        # Fail here, on every rank, rather than hang later with some rank or worker holding no shard.
        check_shard_count(len(self.urls), self.world_size, self.num_workers, self.resampled)
        self.stream = ImageTextWebDataset(
            self.urls, self.transform, default_lang=self.default_lang, languages=self.languages, seed=self.seed,
            resampled=self.resampled, shuffle_buffer=self.shuffle_buffer, rank=self.rank,
            world_size=self.world_size)
        self._collate = functools.partial(collate_image_text, tokenizer=self.tokenizer, max_length=self.max_length)
        source = "data.samples_per_epoch"
        self.epoch_samples = self.samples_per_epoch
        if self.epoch_samples is None:
            source, self.epoch_samples = "manifest.json", manifest_sample_count(self.urls)
        if self.epoch_samples is None:
            index = ShardIndex.load_or_build(self.urls, self.cache_root, self.default_lang, accelerator=accelerator)
            source, self.epoch_samples = f"a scan of the shards ({index.dir})", len(
                self._usable_rows(index, None, Counter()))
        if self.epoch_samples < self.batch_size:
            raise ValueError(f"{self.epoch_samples} samples per epoch (from {source}) are fewer than "
                             f"data.batch_size={self.batch_size}")
        log.info("phase-2 data (streaming, decoding images): %d samples per epoch from %s, %d batches of %d",
                 self.epoch_samples, source, self.num_train_batches(0), self.batch_size)

    def _setup_val(self, accelerator) -> None:
        self.val_chunks = None
        if not self.val_shards:
            return
        val_urls = expand_shard_urls(self.val_shards)
        skipped: Counter = Counter()
        if self.image_cache:
            cache = self._open_cache(val_urls, accelerator)
            index, decodable = cache.index, cache.decodable
            skipped.update(cache.skipped())
            self.val_pairs = CachedPairs(CaptionBatcher(index, self.tokenizer, self.max_length, self.languages,
                                                        self.seed), cache.embeddings_path)
        else:
            # Shares must stay equal on every rank, so undecodable images are found (once) while indexing.
            index = ShardIndex.load_or_build(val_urls, self.cache_root, self.default_lang, verify_images=True,
                                             accelerator=accelerator)
            decodable = None
            skipped.update(index.skipped)
            self.val_index = index
            self.val_captions = CaptionBatcher(index, self.tokenizer, self.max_length, self.languages, self.seed)
        rows = self._usable_rows(index, decodable, skipped)
        self.val_chunks = eval_chunks(rows, self.eval_batch_size, self.world_size)
        self.skipped.update({f"val_{reason}": count for reason, count in skipped.items()})
        used = sum(len(chunk) for chunk in self.val_chunks)
        log.info("validation: %d of %d usable pairs in %d batch(es)%s", used, len(rows), len(self.val_chunks),
                 f"; skipped: {dict(skipped)}" if skipped else "")

    # ---------------------------------------------------------------- batches
    def num_train_batches(self, epoch: int = 0) -> int:
        if self.image_cache:
            return self.plan.num_batches(epoch)
        return self.epoch_samples // self.batch_size

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """This rank's micro-batches of `epoch` (accumulation steps of them per global batch), from global
        batch `start_batch` on."""
        if not self.image_cache:
            return self._streamed_train(epoch, start_batch)
        items = []
        for rows in self.plan.global_batches(epoch)[start_batch:]:
            share = rank_slice(rows, self.rank, self.world_size)
            items += [(micro, epoch) for micro in np.array_split(share, self.accum)]
        return iter(self._loader(self.pairs, items))

    def val_batches(self) -> Iterator[dict[str, Any]] | None:
        if self.val_chunks is None:
            return None
        shares = [rank_slice(chunk, self.rank, self.world_size) for chunk in self.val_chunks]
        if self.image_cache:
            return iter(self._loader(self.val_pairs, [(rows, None) for rows in shares]))
        return self._streamed_val(shares)

    def _loader(self, dataset: TorchDataset, items: list) -> DataLoader:
        return DataLoader(dataset, sampler=items, batch_size=None, num_workers=self.num_workers,
                          pin_memory=self.pin_memory)

    def _streamed_train(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        total = self.num_train_batches(epoch) * self.accum
        replay = start_batch * self.accum
        if replay:
            log.info("resuming streaming epoch %d at batch %d: re-reading the %d micro-batches before it",
                     epoch, start_batch, replay)
        produced = 0
        while produced < total:
            self.stream.set_epoch(epoch)
            loader = DataLoader(self.stream, batch_size=self.micro_batch_size, num_workers=self.num_workers,
                                collate_fn=self._collate, drop_last=True, pin_memory=self.pin_memory)
            this_pass = 0
            for batch in loader:
                this_pass += 1
                produced += 1
                # Replayed batches were trained on (and their skips counted) before the checkpoint.
                if produced > replay:
                    yield batch
                if produced >= total:
                    return
            if this_pass == 0:
                raise RuntimeError(f"rank {self.rank} got no batch of {self.micro_batch_size} usable samples from "
                                   f"its shards of {self.shards}")
            log.warning("rank %d ran out of samples after %d of %d micro-batches in epoch %d (fewer usable samples "
                        "than counted, or shards split unevenly over ranks); re-reading its shards to keep all "
                        "ranks in step", self.rank, produced, total, epoch)

    def _streamed_val(self, shares: list[np.ndarray]) -> Iterator[dict[str, Any]]:
        wanted = np.concatenate(shares) if shares else np.zeros(0, dtype=np.int64)
        loader = DataLoader(IndexedImages(self.val_index, wanted, self.transform), batch_size=None,
                            num_workers=self.num_workers)
        ready: dict[int, torch.Tensor] = {}
        pending = iter(shares)
        current = next(pending, None)
        for row, pixels in loader:
            if pixels is None:
                raise ValueError(f"validation image at row {row} of {self.val_index.dir} decoded when indexed but "
                                 f"cannot be preprocessed now")
            ready[int(row)] = pixels
            # Workers interleave shards, so a batch is complete only once all its rows have arrived.
            while current is not None and all(int(r) in ready for r in current):
                pixel_values = torch.stack([ready.pop(int(r)) for r in current])
                yield {"pixel_values": pixel_values, **self.val_captions(current, None)}
                current = next(pending, None)
