"""The frozen image side, computed once: a caption index of a shard set plus its cached image embeddings.

Phase 2 freezes the image side, so the embedding of an image can never change during training. This module
reads every image of a WebDataset shard set once, preprocesses it with the teacher family's own image
processor, embeds it with the family's frozen image side (`Teacher.load_image_encoder`: what the phase-2
model's `get_image_features` computes) and stores the result, so a cached phase-2 run reads only captions
and float16 vectors. The key holds the teacher's family and hash and the preprocessing's fingerprint.

Two on-disk pieces, both in the chunked `cache_entry.CacheEntry` format (every rank fills disjoint chunks; a
killed build resumes at its unfinished chunks; a corrupt chunk is rebuilt alone; see that module for what is
verified when):

- the shard index, `<cache_dir>/image_index/<key>/`: one row per usable image, in shard order, with its sample
  key and all its captions (lang + text), one Arrow file per group of shards. It is keyed by the exact shard
  contents (resolved path, size and mtime of every shard; the url for remote ones) and the default caption
  language, and read memory-mapped, so DataLoader workers share it instead of copying it.
- the embeddings, an `EmbeddingCache` entry `<cache_dir>/image_embeds/<key>/` keyed by the image model's
  fingerprint, the preprocessing, the compute dtype, the shard contents and the ordered sample keys. An image
  that fails to decode gets a row of NaN: it is counted as "corrupt_image" and never trained on.

When both are complete, nothing is decoded and the image model is never loaded. `cache_dir` defaults to
`<dir of the first local shard>/.altclip_cache`, so the cache travels with the data.

    altclip-train cache-images 'shards/shard-{00000..00099}.tar' --image-model openai/clip-vit-large-patch14
    accelerate launch -m altclip_train cache-images SHARDS --image-model DIR   # one share per GPU
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import IterableDataset, get_worker_info

from altclip_train.data.cache_entry import CacheEntry, Region, hash_region, ranks_of
from altclip_train.data.embedding_cache import DATA_FILE, EmbeddingCache, hash_strings
from altclip_train.data.loading import make_loader
from altclip_train.data.images import BadImageError, ImagePreprocessor, decode_image
from altclip_train.models.teachers import image_preprocessor
from altclip_train.data.shards import default_cache_dir, expand_shard_urls, shard_fingerprints
from altclip_train.data.webdataset import iter_image_text_records, normalize_lang

log = logging.getLogger(__name__)

# Bumped whenever the index layout or the meaning of a cached image vector changes.
INDEX_VERSION = "image-text-index-v1"
EMBEDDING_TARGET = "clip-image-projected-v1"
INDEX_SCHEMA = pa.schema([("key", pa.string()), ("langs", pa.list_(pa.string())), ("texts", pa.list_(pa.string()))])
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CORRUPT_WARNINGS = 20


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------- shard index
class ShardIndex:
    """Every usable image of a shard set, in shard order: sample key and captions, memory-mapped from disk.

    A `CacheEntry` whose chunk c scans shards [c * shards_per_chunk, ...) into `chunk-NNNNNN.arrow` (one record
    batch per shard) plus `chunk-NNNNNN.json` (rows, key hash and skips per shard). Ranks scan disjoint
    chunks; the complete index is those Arrow files read as one zero-copy table.
    """

    SHARDS_PER_CHUNK = 64

    def __init__(self, entry: CacheEntry, urls: Sequence[str], description: dict):
        self.entry = entry
        self.dir = entry.dir
        chunks = [json.loads((self.dir / f"chunk-{c:06d}.json").read_text()) for c in range(entry.num_chunks)]
        shard_rows = [rows for chunk in chunks for rows in chunk["shard_rows"]]
        skipped: Counter = Counter()
        for chunk in chunks:
            skipped.update(chunk["skipped"])
        self.meta = {**description, "key": self.dir.name, "num_rows": sum(shard_rows), "shard_rows": shard_rows,
                     "num_captions": sum(chunk["num_captions"] for chunk in chunks),
                     "keys_hash": hash_strings([h for chunk in chunks for h in chunk["key_hashes"]]),
                     "skipped": dict(sorted(skipped.items()))}
        self._table = None
        self._rows = None
        self.shard_bounds = np.concatenate([[0], np.cumsum(shard_rows)]).astype(np.int64)

    # pyarrow tables over a memory map must not be pickled into DataLoader workers (that copies the data).
    def __getstate__(self):
        return {**self.__dict__, "_table": None, "_rows": None}

    @property
    def table(self):
        if self._table is None:
            tables = [pa.ipc.open_file(pa.memory_map(str(self.dir / f"chunk-{c:06d}.arrow"))).read_all()
                      for c in range(self.entry.num_chunks)]
            self._table = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()
        return self._table

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def num_rows(self) -> int:
        return int(self.meta["num_rows"])

    @property
    def urls(self) -> list[str]:
        return [entry[0] for entry in self.meta["shards"]]

    @property
    def default_lang(self) -> str:
        return self.meta["default_lang"]

    @property
    def skipped(self) -> Counter:
        """Samples the scan dropped (missing image or caption, broken shard, undecodable when verified)."""
        return Counter(self.meta["skipped"])

    def keys(self, start: int, stop: int) -> list[str]:
        return self.table.column("key").slice(start, stop - start).to_pylist()

    def captions(self, rows: Sequence[int]) -> list[list[tuple[str, str]]]:
        """All (lang, text) captions of each row, in stored order."""
        if self._rows is None:
            self._rows = CaptionLists(self.table)
        return self._rows.captions(rows)

    def usable_caption_counts(self, languages: set[str] | None) -> np.ndarray:
        """Per row, how many of its captions are in `languages` (all of them when None)."""
        langs = self.table.column("langs")
        if languages is None:
            return pc.list_value_length(langs).to_numpy().astype(np.int64)
        keep = pc.is_in(pc.list_flatten(langs), value_set=pa.array(sorted(languages), pa.string()))
        parents = _list_parents(langs)
        return np.bincount(parents[keep.to_numpy()], minlength=self.num_rows)

    def estimated_caption_tokens(self, tokenizer, languages: set[str] | None, sample: int = 1000,
                                 seed: int = 0) -> np.ndarray:
        """Per row, the mean token count of its captions in `languages` (0 when none), for length bucketing.

        Tokenising every caption would cost minutes at LAION scale, so each caption's UTF-8 size is scaled
        by its language's tokens-per-byte, measured on up to `sample` captions of that language.
        """
        texts, langs = self.table.column("texts"), self.table.column("langs")
        parents = _list_parents(texts)
        flat_texts = pc.list_flatten(texts)
        sizes = pc.binary_length(flat_texts).to_numpy().astype(np.float64)
        encoded = pc.dictionary_encode(pc.list_flatten(langs)).combine_chunks()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        rng = np.random.default_rng(seed)
        keep = np.zeros(len(sizes), dtype=bool)
        for code, lang in enumerate(encoded.dictionary.to_pylist()):
            if languages is not None and lang not in languages:
                continue
            where = np.flatnonzero(codes == code)
            picked = rng.choice(where, size=min(sample, len(where)), replace=False)
            tokens = tokenizer(flat_texts.take(pa.array(picked)).to_pylist())["input_ids"]
            sizes[where] *= sum(len(ids) for ids in tokens) / max(sizes[picked].sum(), 1.0)
            keep[where] = True
        counts = np.bincount(parents[keep], minlength=self.num_rows)
        return np.bincount(parents[keep], weights=sizes[keep], minlength=self.num_rows) / np.maximum(counts, 1)

    # ---------------------------------------------------------------- building and loading
    @staticmethod
    def describe(urls: Sequence[str], default_lang: str, verify_images: bool) -> tuple[str, dict]:
        shards = shard_fingerprints(urls)
        description = {"version": INDEX_VERSION, "shards": shards, "default_lang": default_lang,
                       "verify_images": verify_images}
        return _digest(description)[:32], description

    @classmethod
    def load_or_build(cls, urls: Sequence[str], cache_dir: str | Path, default_lang: str = "en",
                      verify_images: bool = False, accelerator=None, verify: str = "stat",
                      shards_per_chunk: int | None = None) -> "ShardIndex":
        """The index of `urls`, scanned on first use (each rank its chunks; a killed scan resumes), then read."""
        default_lang = normalize_lang(default_lang) or "en"
        key, description = cls.describe(urls, default_lang, verify_images)
        per_chunk = int(shards_per_chunk or cls.SHARDS_PER_CHUNK)
        entry = CacheEntry(Path(cache_dir).expanduser() / "image_index" / key, -(-len(urls) // per_chunk),
                           {"format": INDEX_VERSION, "shards_per_chunk": per_chunk, "shards": len(urls)})
        rank, _ = ranks_of(accelerator)
        if rank == 0 and not entry.is_complete() and any(shard[1] is None for shard in description["shards"]):
            log.warning("remote shards are identified by url only: rewrite one and its cached index goes stale")
        show = getattr(accelerator, "is_local_main_process", True)

        def scan(chunk: int):
            chunk_urls = urls[chunk * per_chunk:(chunk + 1) * per_chunk]
            return _scan_shards(chunk_urls, entry.dir, chunk, default_lang, verify_images, show)

        entry.build(scan, accelerator, verify=verify, desc="indexing shards")
        index = cls(entry, urls, description)
        if rank == 0 and entry.report.chunks_reused < entry.num_chunks:
            skipped = index.skipped
            log.info("indexed %d images (%d captions) in %d shards into %s%s", index.num_rows,
                     index.meta["num_captions"], len(urls), entry.dir, f"; skipped: {dict(skipped)}" if skipped else "")
        return index


class CaptionLists:
    """Zero-copy numpy views of the index's `langs` and `texts` list<string> columns, batch by batch.

    `pa.Table.take` on a table of many record batches first concatenates each column (a copy of the whole
    caption index per training batch, seconds at LAION scale); reading a row straight out of its batch's
    buffers costs the same whatever the index size.
    """

    def __init__(self, table: pa.Table):
        self.columns = {name: [_string_list_buffers(batch.column(batch.schema.get_field_index(name)))
                               for batch in table.to_batches()] for name in ("langs", "texts")}
        self.starts = np.cumsum([0] + [batch.num_rows for batch in table.to_batches()])

    def captions(self, rows: Sequence[int]) -> list[list[tuple[str, str]]]:
        rows = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = []
        for batch, row in zip(which.tolist(), (rows - self.starts[which]).tolist()):
            langs = _strings_of_row(self.columns["langs"][batch], row)
            texts = _strings_of_row(self.columns["texts"][batch], row)
            out.append(list(zip(langs, texts)))
        return out


def _string_list_buffers(array: pa.ListArray) -> tuple[np.ndarray, np.ndarray, memoryview]:
    """(list offsets, string offsets, utf-8 bytes) of a list<string> array, without copying."""
    strings = array.values
    offsets = array.offsets.to_numpy()
    string_offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[strings.offset:strings.offset + len(strings) + 1]
    data = memoryview(strings.buffers()[2]) if strings.buffers()[2] is not None else memoryview(b"")
    return offsets, string_offsets, data


def _strings_of_row(buffers: tuple[np.ndarray, np.ndarray, memoryview], row: int) -> list[str]:
    offsets, string_offsets, data = buffers
    lo, hi = int(offsets[row]), int(offsets[row + 1])
    bounds = string_offsets[lo:hi + 1].tolist()
    return [str(data[a:b], "utf-8") for a, b in zip(bounds, bounds[1:])]


def _list_parents(lists) -> np.ndarray:
    """For a (chunked) list column, the row each flattened element belongs to."""
    if isinstance(lists, pa.ChunkedArray):
        parts, base = [], 0
        for chunk in lists.chunks:
            parts.append(pc.list_parent_indices(chunk).to_numpy() + base)
            base += len(chunk)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return pc.list_parent_indices(lists).to_numpy()


def _scan_shards(urls: Sequence[str], directory: Path, chunk: int, default_lang: str, verify_images: bool,
                 show_progress: bool) -> list[tuple[Region, str]]:
    """Write one chunk of the index: `chunk-N.arrow` (a record batch per shard) and `chunk-N.json`."""
    skipped: Counter = Counter()
    shard_rows, key_hashes, num_captions = [], [], 0
    arrow_path = directory / f"chunk-{chunk:06d}.arrow"
    with pa.OSFile(str(arrow_path), "wb") as sink, pa.ipc.new_file(sink, INDEX_SCHEMA) as writer:
        for url in urls:
            keys, langs, texts = [], [], []
            for record in iter_image_text_records([url], decode=verify_images, default_lang=default_lang,
                                                  skip_counts=skipped):
                keys.append(record["key"])
                langs.append([lang for lang, _ in record["captions"]])
                texts.append([text for _, text in record["captions"]])
            writer.write_batch(pa.record_batch([keys, langs, texts], schema=INDEX_SCHEMA))
            shard_rows.append(len(keys))
            key_hashes.append(hash_strings(keys))
            num_captions += sum(map(len, texts))
    summary = json.dumps({"shard_rows": shard_rows, "key_hashes": key_hashes, "num_captions": num_captions,
                          "skipped": dict(skipped)}).encode()
    summary_path = directory / f"chunk-{chunk:06d}.json"
    summary_path.write_bytes(summary)
    regions = []
    for path in (arrow_path, summary_path):
        with path.open("rb+") as handle:
            os.fsync(handle.fileno())
        size = path.stat().st_size
        regions.append((Region(path.name, 0, size), hash_region(path, 0, size)))
    return regions


# --------------------------------------------------------------------------------------- reading images back
def _rows_between(rows: range | np.ndarray, lo: int, hi: int) -> np.ndarray:
    if isinstance(rows, range):
        return np.arange(max(lo, rows.start), min(hi, rows.stop), dtype=np.int64)
    return rows[np.searchsorted(rows, lo):np.searchsorted(rows, hi)]


class IndexedImages(IterableDataset):
    """The preprocessed images of chosen index rows: yields (row, pixels), pixels None when undecodable.

    Only shards holding a wanted row are opened; DataLoader workers split them. `rows` is a `range` (cheap
    to send to workers for a whole cache build) or a sorted array. A shard whose samples no longer match
    the index is a one-line error, never a silent misalignment of images and captions.
    """

    def __init__(self, index: ShardIndex, rows: range | np.ndarray, transform: ImagePreprocessor):
        self.index = index
        self.rows = rows if isinstance(rows, range) else np.unique(np.asarray(rows, dtype=np.int64))
        self.transform = transform

    def shards(self) -> np.ndarray:
        bounds = self.index.shard_bounds
        if isinstance(self.rows, range):
            if not len(self.rows):
                return np.zeros(0, dtype=np.int64)
            first, last = np.searchsorted(bounds, [self.rows.start, self.rows.stop - 1], side="right") - 1
            return np.arange(first, last + 1)
        return np.unique(np.searchsorted(bounds, self.rows, side="right") - 1)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor | None]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard in self.shards()[worker::workers]:
            yield from self._read_shard(int(shard))

    def _read_shard(self, shard: int) -> Iterator[tuple[int, torch.Tensor | None]]:
        lo, hi = int(self.index.shard_bounds[shard]), int(self.index.shard_bounds[shard + 1])
        wanted = _rows_between(self.rows, lo, hi)
        if not len(wanted):
            return
        keys = self.index.keys(lo, hi)
        url = self.index.urls[shard]
        position, offset = 0, -1
        records = iter_image_text_records([url], decode=False, default_lang=self.index.default_lang)
        for offset, record in enumerate(records):
            if offset >= len(keys) or record["key"] != keys[offset]:
                break
            if wanted[position] == lo + offset:
                position += 1
                yield lo + offset, self._pixels(record)
                if position == len(wanted):
                    return
        else:
            offset += 1  # the shard ended early
        expected = f"expected key '{keys[offset]}'" if offset < len(keys) else "more samples than indexed"
        raise ValueError(f"shard {url} no longer matches its index at sample {offset} ({expected}); "
                         f"delete {self.index.dir} to re-index it")

    def _pixels(self, record: dict) -> torch.Tensor | None:
        name = f"{record['url']}:{record['key']}"
        try:
            return self.transform(decode_image(record["image_bytes"], name=name))
        except (BadImageError, OSError, ValueError) as error:
            log.debug("%s: %s", name, error)
            return None


def collate_rows(items: list[tuple[int, torch.Tensor | None]]):
    """(rows, stacked pixels of the decodable ones or None, decodable mask) for a list of IndexedImages items."""
    rows = torch.tensor([row for row, _ in items], dtype=torch.long)
    ok = torch.tensor([pixels is not None for _, pixels in items], dtype=torch.bool)
    pixels = [pixels for _, pixels in items if pixels is not None]
    return rows, (torch.stack(pixels) if pixels else None), ok


# --------------------------------------------------------------------------------------- the image model
def image_embedding_dim(image_model: str, trust_remote_code: bool = False) -> int:
    """Width of the frozen image embedding, from the config alone (no weights are read)."""
    from altclip_train.models.teachers import load_teacher

    return load_teacher(image_model, trust_remote_code=trust_remote_code).image_dim


def load_image_encoder(image_model: str, device: str | torch.device = "cpu", trust_remote_code: bool = False):
    """The teacher family's frozen image side: `module(pixel_values) -> embedding`, eval mode, gradients off."""
    from altclip_train.models.teachers import load_teacher

    return load_teacher(image_model, trust_remote_code=trust_remote_code).load_image_encoder(device)


def describe_image_encoder(image_model: str, transform: ImagePreprocessor, dtype: str) -> str:
    """The string every image-embedding cache key is derived from."""
    from altclip_train.models.teachers import load_teacher

    teacher = load_teacher(image_model)
    return json.dumps({"image_model": teacher.fingerprint(), "family": teacher.family,
                       "transform": transform.fingerprint(),
                       "dtype": dtype, "target": EMBEDDING_TARGET}, sort_keys=True)


# --------------------------------------------------------------------------------------- the cache
@dataclass
class ImageCache:
    """A complete cache: the shard index and one float16 embedding row per index row (NaN = undecodable)."""

    index: ShardIndex
    embeddings: np.ndarray
    entry: Path

    def __post_init__(self):
        self.decodable = ~np.isnan(np.asarray(self.embeddings[:, 0], dtype=np.float32))

    @property
    def num_corrupt(self) -> int:
        return int((~self.decodable).sum())

    @property
    def embeddings_path(self) -> Path:
        return self.entry / DATA_FILE

    def skipped(self) -> Counter:
        """Everything left out: what the index scan dropped plus the images that failed to decode."""
        counts = self.index.skipped
        if self.num_corrupt:
            counts["corrupt_image"] += self.num_corrupt
        return counts


def load_or_build_image_cache(urls: Sequence[str], image_model: str, transform: ImagePreprocessor,
                              cache_dir: str | Path, accelerator=None, batch_size: int = 256, num_workers: int = 4,
                              default_lang: str = "en", dtype: str = "float32", device=None,
                              trust_remote_code: bool = False, verify: str = "stat",
                              chunk_rows: int | None = None, shards_per_chunk: int | None = None) -> ImageCache:
    """Index and embed `urls` once; later calls only stat-check and memory-map (the model is never loaded).

    Every rank embeds its share of the missing chunks straight into the shared entry; a killed build
    resumes at the chunks it had not finished, and a corrupt chunk is re-embedded alone.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown cache dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    index = ShardIndex.load_or_build(urls, cache_dir, default_lang, accelerator=accelerator, verify=verify,
                                     shards_per_chunk=shards_per_chunk)
    inputs_id = _digest({"shards": index.meta["shards"], "keys": index.meta["keys_hash"]})
    cache = EmbeddingCache(cache_dir, "image_embeds", describe_image_encoder(image_model, transform, dtype),
                           inputs_id, index.num_rows, image_embedding_dim(image_model, trust_remote_code),
                           chunk_rows=chunk_rows)
    if device is None:
        device = accelerator.device if accelerator is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    embedder = ImageEmbedder(index, image_model, transform, device, batch_size, num_workers, dtype, trust_remote_code)
    embeddings = cache.load_or_build(embedder, accelerator, verify=verify, desc="embedding images")
    if embedder.rows:
        log.info("image cache: %d images embedded on this rank (%.3g images/s, %.0f%% of the time inside the "
                 "image forward)", embedder.rows, embedder.rows / max(cache.report.seconds, 1e-9),
                 100 * embedder.forward_s / max(cache.report.seconds, 1e-9))
    embedder.close()
    return ImageCache(index, embeddings, cache.dir)


class ImageEmbedder:
    """`compute(start, stop)` for the image cache: one chunk of rows embedded, NaN where an image is undecodable.

    The model is loaded on the first chunk only, so a complete cache never loads it. Images are read and
    preprocessed ahead in DataLoader workers, so the forward is what the build waits on.
    """

    def __init__(self, index: ShardIndex, image_model: str, transform: ImagePreprocessor, device, batch_size: int,
                 num_workers: int, dtype: str = "float32", trust_remote_code: bool = False):
        self.index, self.image_model, self.transform = index, image_model, transform
        self.device = torch.device(device)
        self.batch_size, self.num_workers, self.dtype = batch_size, num_workers, dtype
        self.trust_remote_code = trust_remote_code
        self.model = None
        self.dim = image_embedding_dim(image_model, trust_remote_code)
        self.rows, self.corrupt, self.forward_s = 0, 0, 0.0

    def __call__(self, start: int, stop: int) -> np.ndarray:
        if self.model is None:
            self.model = load_image_encoder(self.image_model, self.device, self.trust_remote_code)
        out = np.full((stop - start, self.dim), np.nan, dtype=np.float32)
        autocast_dtype = DTYPES[self.dtype]
        loader = make_loader(IndexedImages(self.index, range(start, stop), self.transform), seed=start,
                             batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate_rows,
                             pin_memory=self.device.type == "cuda")
        for batch_rows, pixels, ok in loader:
            bad = int((~ok).sum())
            if bad:
                if self.corrupt < _CORRUPT_WARNINGS:
                    log.warning("undecodable image(s) at index rows %s of %s", batch_rows[~ok].tolist(), self.index.dir)
                self.corrupt += bad
            if pixels is None:
                continue
            began = time.perf_counter()
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=autocast_dtype,
                                                        enabled=autocast_dtype != torch.float32):
                features = self.model(pixels.to(self.device, non_blocking=True)).float().cpu().numpy()
            self.forward_s += time.perf_counter() - began
            # NaN marks an undecodable image, so a real vector must survive the float16 cache intact.
            if not np.isfinite(features.astype(np.float16)).all():
                raise ValueError(f"{self.image_model} gave non-finite image embeddings in {self.dtype} (index rows "
                                 f"{batch_rows[ok].tolist()[:5]}...); cache them with dtype float32")
            out[(batch_rows[ok] - start).numpy()] = features
        self.rows += stop - start
        return out

    def close(self) -> None:
        if self.model is not None:
            self.model = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # training starts on this device next
        if self.corrupt:
            log.warning("%d images could not be decoded; they are left out (corrupt_image)", self.corrupt)


def build_image_cache(shards: str | Iterable[str], image_model: str, image_processor: str | None = None,
                      cache_dir: str | Path | None = None, batch_size: int = 256, device: str | None = None,
                      num_workers: int = 4, default_lang: str = "en", dtype: str = "float32",
                      trust_remote_code: bool = False, accelerator=None, verify: str = "stat",
                      chunk_rows: int | None = None) -> ImageCache:
    """Embed every image of `shards` once with the frozen image side of `image_model` (a CLIP or AltCLIP dir
    or hub id); preprocessing comes from `image_processor` (default: the image model's own)."""
    urls = expand_shard_urls(shards)
    transform = image_preprocessor(image_processor or image_model)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(urls)
    return load_or_build_image_cache(urls, image_model, transform, root, accelerator=accelerator,
                                     batch_size=batch_size, num_workers=num_workers, default_lang=default_lang,
                                     dtype=dtype, device=device, trust_remote_code=trust_remote_code, verify=verify,
                                     chunk_rows=chunk_rows)


# --------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="altclip-train cache-images",
        description="Embed every image of a WebDataset shard set once with a frozen CLIP/AltCLIP image tower, "
                    "so phase 2 with data.image_cache=true reads only captions and cached vectors.")
    parser.add_argument("shards", help="shard spec: brace range, glob, directory, or '::'-joined list")
    parser.add_argument("--image-model", required=True, help="CLIP or AltCLIP checkpoint (dir or hub id) whose "
                                                             "frozen image side makes the embeddings")
    parser.add_argument("--image-processor", default=None, help="dir/hub id with preprocessor_config.json "
                                                                "(default: the image model's)")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: <first shard's dir>/.altclip_cache)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    parser.add_argument("--num-workers", type=int, default=4, help="image decoding processes (default: 4)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="compute precision (part of the cache key; default: float32)")
    parser.add_argument("--default-lang", default="en", help="language of captions that name none (default: en)")
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="images per cache chunk, the unit of resume (default: ~32 MB of vectors)")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash every chunk of an existing cache (default: a stat check of its files)")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point for `altclip-train cache-images`; under `accelerate launch` each process embeds a share."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    cache = build_image_cache(args.shards, args.image_model, args.image_processor, args.cache_dir,
                              batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                              default_lang=args.default_lang, dtype=args.dtype,
                              trust_remote_code=args.trust_remote_code, accelerator=accelerator,
                              verify="full" if args.verify else "stat", chunk_rows=args.chunk_rows)
    if accelerator is None or accelerator.is_main_process:
        skipped = ", ".join(f"{reason}={count}" for reason, count in sorted(cache.skipped().items())) or "none"
        print(f"image embeddings: {cache.entry}")
        print(f"caption index:    {cache.index.dir}")
        print(f"images: {int(cache.decodable.sum())} embedded ({cache.embeddings.shape[1]}-d), "
              f"captions: {cache.index.meta['num_captions']}, shards: {len(cache.index.urls)}; skipped: {skipped}")
    return 0
