"""The frozen image side, computed once: a caption index of a shard set plus its cached image embeddings.

Phase 2 freezes the vision tower and `visual_projection`, so the projected embedding of an image can never
change during training. This module reads every image of a WebDataset shard set once, embeds it with the
frozen image side (`model.get_image_features(pixel_values).pooler_output`, the very call the contrastive
task makes) and stores the result, so a cached phase-2 run reads only captions and float16 vectors.

Two on-disk pieces, both written atomically and checksum-verified on every load:

- the shard index, `<cache_dir>/image_index/<key>/` (`index.arrow` + `meta.json`): one row per usable image,
  in shard order, with its sample key and all its captions (lang + text). It is keyed by the exact shard
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
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from altclip_train.data import embedding_cache
from altclip_train.data.embedding_cache import EmbeddingCache, file_sha256, hash_strings
from altclip_train.data.images import BadImageError, ClipImageTransform, decode_image
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
    """Every usable image of a shard set, in shard order: sample key and captions, memory-mapped from disk."""

    FILE = "index.arrow"

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        self._table = None
        self.shard_bounds = np.concatenate([[0], np.cumsum(self.meta["shard_rows"])]).astype(np.int64)

    # pyarrow tables over a memory map must not be pickled into DataLoader workers (that copies the data).
    def __getstate__(self):
        return {**self.__dict__, "_table": None}

    @property
    def table(self):
        if self._table is None:
            self._table = pa.ipc.open_file(pa.memory_map(str(self.dir / self.FILE))).read_all()
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
        taken = self.table.take(pa.array(np.asarray(rows, dtype=np.int64)))
        return [list(zip(langs, texts)) for langs, texts in
                zip(taken.column("langs").to_pylist(), taken.column("texts").to_pylist())]

    def usable_caption_counts(self, languages: set[str] | None) -> np.ndarray:
        """Per row, how many of its captions are in `languages` (all of them when None)."""
        langs = self.table.column("langs")
        if languages is None:
            return pc.list_value_length(langs).to_numpy(zero_copy_only=False).astype(np.int64)
        keep = pc.is_in(pc.list_flatten(langs), value_set=pa.array(sorted(languages), pa.string()))
        parents = pc.list_parent_indices(langs).to_numpy(zero_copy_only=False)
        return np.bincount(parents[keep.to_numpy(zero_copy_only=False)], minlength=self.num_rows)

    def estimated_caption_tokens(self, tokenizer, languages: set[str] | None, sample: int = 1000,
                                 seed: int = 0) -> np.ndarray:
        """Per row, the mean token count of its captions in `languages` (0 when none), for length bucketing.

        Tokenising every caption would cost minutes at LAION scale, so each caption's UTF-8 size is scaled
        by its language's tokens-per-byte, measured on up to `sample` captions of that language.
        """
        texts, langs = self.table.column("texts"), self.table.column("langs")
        parents = pc.list_parent_indices(texts).to_numpy(zero_copy_only=False)
        flat_texts = pc.list_flatten(texts)
        sizes = pc.binary_length(flat_texts).to_numpy(zero_copy_only=False).astype(np.float64)
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
    def load(cls, directory: Path, key: str) -> "ShardIndex | None":
        """The index in `directory`, or None when absent; a corrupt one is reported and deleted."""
        if not (directory / "meta.json").is_file():
            return None
        try:
            index = cls(directory)
            problem = None
            if index.key != key:
                problem = "key mismatch"
            elif file_sha256(directory / cls.FILE) != index.meta["sha256"]:
                problem = "checksum mismatch"
            elif index.table.num_rows != index.num_rows:
                problem = f"{index.table.num_rows} rows where its metadata says {index.num_rows}"
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
            problem = f"unreadable ({error})"
        if problem:
            log.warning("image-text index %s is corrupt (%s); rebuilding it", directory, problem)
            shutil.rmtree(directory, ignore_errors=True)
            return None
        return index

    @classmethod
    def build(cls, urls: Sequence[str], directory: Path, key: str, description: dict,
              verify_images: bool = False, accelerator=None) -> "ShardIndex":
        """Scan the shards once (reading, not decoding, unless `verify_images`) and write the index atomically.

        With several processes each rank scans a contiguous share of the shards and rank 0 joins the parts.
        """
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        directory.parent.mkdir(parents=True, exist_ok=True)
        parts_dir = directory.parent / f".{key}.parts"
        parts_dir.mkdir(exist_ok=True)
        bounds = np.linspace(0, len(urls), world + 1).astype(int)
        _scan_shards(urls[bounds[rank]:bounds[rank + 1]], parts_dir / f"rank{rank:05d}", description["default_lang"],
                     verify_images, show_progress=getattr(accelerator, "is_local_main_process", True))
        if world > 1:
            accelerator.wait_for_everyone()
        if rank == 0:
            _join_parts([parts_dir / f"rank{r:05d}" for r in range(world)], directory, key, description)
            shutil.rmtree(parts_dir, ignore_errors=True)
        if world > 1:
            accelerator.wait_for_everyone()
        index = cls.load(directory, key)
        if index is None:
            raise FileNotFoundError(f"rank {rank} cannot see the image-text index {directory} that rank 0 wrote; "
                                    f"put data.cache_dir on a filesystem every node shares")
        if rank == 0:
            skipped = index.skipped
            log.info("indexed %d images (%d captions) in %d shards into %s%s", index.num_rows,
                     index.meta["num_captions"], len(urls), directory, f"; skipped: {dict(skipped)}" if skipped else "")
        return index

    @classmethod
    def load_or_build(cls, urls: Sequence[str], cache_dir: str | Path, default_lang: str = "en",
                      verify_images: bool = False, accelerator=None) -> "ShardIndex":
        """The index of `urls`, scanned on first use; every rank then reads the same files."""
        default_lang = normalize_lang(default_lang) or "en"
        key, description = cls.describe(urls, default_lang, verify_images)
        directory = Path(cache_dir).expanduser() / "image_index" / key
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        index = cls.load(directory, key) if rank == 0 else None
        complete = index is not None
        if world > 1:
            # All ranks must take the same branch: they meet in the barriers of build().
            complete = embedding_cache._broadcast_flag(complete, accelerator)
        if complete:
            if world > 1:
                accelerator.wait_for_everyone()
            index = index or cls.load(directory, key)
            if index is None:
                raise FileNotFoundError(f"rank {rank} cannot see the image-text index {directory} that rank 0 "
                                        f"found; put data.cache_dir on a filesystem every node shares")
            return index
        if rank == 0 and any(entry[1] is None for entry in description["shards"]):
            log.warning("remote shards are identified by url only: rewrite one and its cached index goes stale")
        return cls.build(urls, directory, key, description, verify_images, accelerator)


def _scan_shards(urls: Sequence[str], part: Path, default_lang: str, verify_images: bool,
                 show_progress: bool) -> None:
    """Write `part.arrow` (one record batch per shard) and `part.json` (row counts, key hashes, skips)."""
    skipped: Counter = Counter()
    shard_rows, key_hashes, num_captions = [], [], 0
    with pa.OSFile(f"{part}.arrow", "wb") as sink, pa.ipc.new_file(sink, INDEX_SCHEMA) as writer:
        for url in tqdm(urls, desc="indexing shards", unit="shard", disable=not show_progress):
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
    summary = {"shard_rows": shard_rows, "key_hashes": key_hashes, "num_captions": num_captions,
               "skipped": dict(skipped)}
    Path(f"{part}.json").write_text(json.dumps(summary))


def _join_parts(parts: Sequence[Path], directory: Path, key: str, description: dict) -> None:
    """Concatenate the scanned parts, in order, into a complete index entry (staged, then renamed)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=directory.parent))
    shard_rows, key_hashes, num_captions, skipped = [], [], 0, Counter()
    try:
        with pa.OSFile(str(staging / ShardIndex.FILE), "wb") as sink, \
                pa.ipc.new_file(sink, INDEX_SCHEMA) as writer:
            for part in parts:
                reader = pa.ipc.open_file(pa.memory_map(f"{part}.arrow"))
                for batch in range(reader.num_record_batches):
                    writer.write_batch(reader.get_batch(batch))
                summary = json.loads(Path(f"{part}.json").read_text())
                shard_rows += summary["shard_rows"]
                key_hashes += summary["key_hashes"]
                num_captions += summary["num_captions"]
                skipped.update(summary["skipped"])
        meta = {"key": key, "num_rows": sum(shard_rows), "num_captions": num_captions, "shard_rows": shard_rows,
                "keys_hash": hash_strings(key_hashes), "skipped": dict(sorted(skipped.items())),
                "sha256": file_sha256(staging / ShardIndex.FILE), **description}
        (staging / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        if not directory.exists():  # else another writer finished first: identical by construction
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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

    def __init__(self, index: ShardIndex, rows: range | np.ndarray, transform: ClipImageTransform):
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
    """Width of the projected image embedding, from the config alone (no weights are read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(image_model, trust_remote_code=trust_remote_code)
    dim = getattr(config, "projection_dim", None)
    if dim is None:
        raise ValueError(f"{image_model}: its config has no projection_dim; point image_model at a CLIP or AltCLIP "
                         f"checkpoint")
    return int(dim)


def load_image_encoder(image_model: str, device: str | torch.device = "cpu", trust_remote_code: bool = False):
    """The two-tower model whose `get_image_features` makes the cached vectors, in eval mode, gradients off."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(image_model, trust_remote_code=trust_remote_code, attn_implementation="sdpa")
    if not hasattr(model, "get_image_features"):
        raise ValueError(f"{image_model}: a {type(model).__name__} has no image tower; point image_model at a CLIP "
                         f"or AltCLIP checkpoint")
    return model.eval().requires_grad_(False).to(device)


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings, exactly as the contrastive task computes them live."""
    output = model.get_image_features(pixel_values=pixel_values)
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def describe_image_encoder(image_model: str, transform: ClipImageTransform, dtype: str) -> str:
    """The string every image-embedding cache key is derived from."""
    from altclip_train.models.teacher import model_fingerprint

    return json.dumps({"image_model": model_fingerprint(image_model), "transform": transform.fingerprint(),
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
        return self.entry / "embeddings.npy"

    def skipped(self) -> Counter:
        """Everything left out: what the index scan dropped plus the images that failed to decode."""
        counts = self.index.skipped
        if self.num_corrupt:
            counts["corrupt_image"] += self.num_corrupt
        return counts


def load_or_build_image_cache(urls: Sequence[str], image_model: str, transform: ClipImageTransform,
                              cache_dir: str | Path, accelerator=None, batch_size: int = 256, num_workers: int = 4,
                              default_lang: str = "en", dtype: str = "float32", device=None,
                              trust_remote_code: bool = False) -> ImageCache:
    """Index and embed `urls` once; later calls only verify and memory-map (the model is never loaded)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown cache dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    index = ShardIndex.load_or_build(urls, cache_dir, default_lang, accelerator=accelerator)
    inputs_hash = _digest({"shards": index.meta["shards"], "keys": index.meta["keys_hash"]})
    cache = EmbeddingCache(cache_dir, "image_embeds", describe_image_encoder(image_model, transform, dtype),
                           inputs_hash, index.num_rows)
    if device is None:
        device = accelerator.device if accelerator is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    show_progress = getattr(accelerator, "is_local_main_process", True)

    def compute(start: int, stop: int) -> np.ndarray:
        out = np.full((stop - start, image_embedding_dim(image_model, trust_remote_code)), np.nan, dtype=np.float32)
        if stop > start:
            corrupt = embed_rows(index, range(start, stop), out, image_model, transform, device, batch_size,
                                 num_workers, dtype, trust_remote_code, show_progress)
            if corrupt:
                log.warning("%d of %d images in rows %d..%d could not be decoded; they are left out (corrupt_image)",
                            corrupt, stop - start, start, stop)
        return out

    embeddings = cache.load_or_build(compute, accelerator)
    return ImageCache(index, embeddings, cache.dir)


def embed_rows(index: ShardIndex, rows: range, out: np.ndarray, image_model: str, transform: ClipImageTransform,
               device, batch_size: int, num_workers: int, dtype: str = "float32", trust_remote_code: bool = False,
               show_progress: bool = True) -> int:
    """Fill out[row - rows.start] with each row's projected embedding; returns how many failed to decode."""
    model = load_image_encoder(image_model, device, trust_remote_code)
    device = torch.device(device)
    autocast_dtype = DTYPES[dtype]
    loader = DataLoader(IndexedImages(index, rows, transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_rows, pin_memory=device.type == "cuda")
    corrupt = 0
    with tqdm(total=len(rows), desc="embedding images", unit="img", disable=not show_progress) as progress:
        for batch_rows, pixels, ok in loader:
            bad = (~ok).sum().item()
            if bad:
                corrupt += bad
                if corrupt - bad < _CORRUPT_WARNINGS:
                    log.warning("undecodable image(s) at index rows %s of %s", batch_rows[~ok].tolist(), index.dir)
            if pixels is not None:
                with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype,
                                                            enabled=autocast_dtype != torch.float32):
                    features = image_features(model, pixels.to(device, non_blocking=True))
                features = features.float().cpu().numpy()
                # NaN marks an undecodable image, so a real vector must survive the float16 cache intact.
                if not np.isfinite(features.astype(np.float16)).all():
                    raise ValueError(f"{image_model} gave non-finite image embeddings in {dtype} (index rows "
                                     f"{batch_rows[ok].tolist()[:5]}...); cache them with dtype float32")
                out[(batch_rows[ok] - rows.start).numpy()] = features
            progress.update(len(batch_rows))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()  # training starts on this device next
    return corrupt


def build_image_cache(shards: str | Iterable[str], image_model: str, image_processor: str | None = None,
                      cache_dir: str | Path | None = None, batch_size: int = 256, device: str | None = None,
                      num_workers: int = 4, default_lang: str = "en", dtype: str = "float32",
                      trust_remote_code: bool = False, accelerator=None) -> ImageCache:
    """Embed every image of `shards` once with the frozen image side of `image_model` (a CLIP or AltCLIP dir
    or hub id); preprocessing comes from `image_processor` (default: the image model's own)."""
    urls = expand_shard_urls(shards)
    transform = ClipImageTransform.from_pretrained(image_processor or image_model)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(urls)
    return load_or_build_image_cache(urls, image_model, transform, root, accelerator=accelerator,
                                     batch_size=batch_size, num_workers=num_workers, default_lang=default_lang,
                                     dtype=dtype, device=device, trust_remote_code=trust_remote_code)


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
                              trust_remote_code=args.trust_remote_code, accelerator=accelerator)
    if accelerator is None or accelerator.is_main_process:
        skipped = ", ".join(f"{reason}={count}" for reason, count in sorted(cache.skipped().items())) or "none"
        print(f"image embeddings: {cache.entry}")
        print(f"caption index:    {cache.index.dir}")
        print(f"images: {int(cache.decodable.sum())} embedded ({cache.embeddings.shape[1]}-d), "
              f"captions: {cache.index.meta['num_captions']}, shards: {len(cache.index.urls)}; skipped: {skipped}")
    return 0
