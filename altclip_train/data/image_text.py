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
  caption per image) and batches carry `pixel_values`. Workers hand over samples and the main process cuts
  them into micro-batches, so no worker drops a short tail. The epoch length comes from `samples_per_epoch`
  when set, else the shards' `manifest.json` (written by prepare-wds, which drops undecodable images) when
  every language it lists is in `languages`, else a one-time scan that decodes every image (cached on disk,
  shared with validation): an epoch has exactly as many steps as its usable samples fill. Every rank yields
  the same number of batches: a rank whose shards run short re-reads them rather than leave the others
  waiting in a collective. Resuming mid-epoch replays the stream up to the saved position.

Skipped samples are counted once each, under one reason (`altclip_train.data.webdataset` lists them): from
the index in cached mode and whenever the streaming scan ran, else from the stream's first pass of epoch 0
(later passes and epochs re-read the same samples). Captions longer than the text tower holds are cut at
`capped_max_length` (the text tower's config comes from `text_model`, default: the tokenizer's dir).

`language_temperature` (alpha) balances caption languages (see `fit_language_weights`). Every DataLoader
here has its own seeded generator (`make_loader`), so building one never moves the global torch RNG and a
resumed run draws the same dropout masks as an uninterrupted one.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset

from altclip_train.data.batching import BatchPlan, rank_slice
from altclip_train.data.image_cache import IndexedImages, ShardIndex, load_or_build_image_cache
from altclip_train.models.teachers import image_preprocessor
from altclip_train.data.loading import capped_max_length, make_loader, pad_batch, tempered_language_shares
from altclip_train.data.shards import default_cache_dir, expand_shard_urls, local_path, manifest_sample_count
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


def loader_seed(seed: int, epoch: int, salt: int) -> int:
    """The seed of one DataLoader's private generator: a pure function of (seed, epoch, which loader)."""
    return int(caption_draws(seed, epoch, np.array([salt]))[0] % np.uint64(2**63))


@dataclass
class LanguageBalance:
    """Per-language caption weights and the caption-language shares they give (see `fit_language_weights`)."""

    weights: dict[str, float]
    natural: dict[str, float]   # shares of a uniform pick among each image's usable captions (alpha = 1)
    target: dict[str, float]    # tempered_language_shares(natural, alpha)
    achieved: dict[str, float]  # shares the weights give on these rows (the target, where the captions allow)


def fit_language_weights(index: ShardIndex, rows: np.ndarray, languages: set[str], alpha: float,
                         iterations: int = 1000, tolerance: float = 1e-6) -> LanguageBalance:
    """Caption weights per language so that one caption drawn per image follows p(lang) ∝ n_lang^alpha.

    Every image is trained on once per epoch, so balancing can only choose *which* of an image's captions it
    trains on: an image picks its caption c with probability w(lang_c) / sum of w over its usable captions.
    n_lang is the number of captions in lang that the unweighted pick (today's alpha = 1 behaviour) draws per
    epoch in expectation, so alpha = 1 leaves every weight at 1, alpha = 0 asks for equal languages, and the
    target is XLM-R's tempered distribution over that natural mix. The weights are fitted by iterative
    proportional scaling over the images' caption-language signatures (a handful of distinct count vectors,
    however many images). Where the captions cannot reach the target (a language whose images carry no
    caption in another language cannot be drawn less), the fit gets as close as they allow; `achieved` says
    how close. The result depends only on the index, so every rank and a resumed run get the same weights.
    """
    langs = sorted(languages)
    rows = np.asarray(rows, dtype=np.int64)
    # A row's signature is its vector of per-language caption counts; a random 64-bit mix names it.
    salts = _splitmix64(np.arange(1, len(langs) + 1, dtype=np.uint64))
    signature = np.zeros(len(rows), dtype=np.uint64)
    for lang, salt in zip(langs, salts):
        signature += index.usable_caption_counts({lang})[rows].astype(np.uint64) * salt
    _, first, images = np.unique(signature, return_index=True, return_counts=True)
    counts = np.stack([index.usable_caption_counts({lang})[rows[first]] for lang in langs], axis=1).astype(float)
    images = images.astype(float)

    def shares(weights: np.ndarray) -> np.ndarray:
        weighted = counts * weights
        return (images[:, None] * weighted / weighted.sum(axis=1, keepdims=True)).sum(axis=0) / images.sum()

    natural = shares(np.ones(len(langs)))
    present = natural > 0
    target = np.zeros(len(langs))
    tempered = tempered_language_shares({lang: n for lang, n, ok in zip(langs, natural, present) if ok}, alpha)
    target[present] = [tempered[lang] for lang, ok in zip(langs, present) if ok]
    weights = np.ones(len(langs))
    if alpha != 1:
        for _ in range(iterations):
            got = shares(weights)
            if np.abs(got - target).max() < tolerance:
                break
            weights[present] *= target[present] / got[present]
            # Keep weights in a sane range: an unreachable target would push one towards 0 or infinity.
            weights = np.clip(weights / weights[present].max(), 1e-12, 1.0)
    achieved = shares(weights)
    return LanguageBalance(weights=dict(zip(langs, weights.tolist())), natural=dict(zip(langs, natural.tolist())),
                           target=dict(zip(langs, target.tolist())), achieved=dict(zip(langs, achieved.tolist())))


class CaptionBatcher:
    """Picks one usable caption per image and tokenises the batch, padded to its own longest caption.

    Training (`epoch` given) draws the caption from (seed, epoch, row): uniformly among the image's usable
    captions, or in proportion to `language_weights` when given; evaluation (`epoch` None) takes the first
    usable one, so validation pairs never change. `max_length` must already be capped to the text tower.
    """

    def __init__(self, index: ShardIndex, tokenizer, max_length: int, languages: set[str] | None, seed: int,
                 language_weights: dict[str, float] | None = None):
        self.index = index
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.languages = languages
        self.seed = seed
        self.language_weights = language_weights
        self.pad_id = tokenizer.pad_token_id

    def pick(self, usable: list[tuple[str, str]], draw: np.uint64) -> tuple[str, str]:
        if self.language_weights is None:
            return usable[int(draw % np.uint64(len(usable)))]
        cumulative = np.cumsum([self.language_weights[lang] for lang, _ in usable])
        # The top 53 bits of the draw as a uniform number in [0, 1).
        point = float(draw >> np.uint64(11)) * 2.0 ** -53 * cumulative[-1]
        return usable[min(int(np.searchsorted(cumulative, point, side="right")), len(usable) - 1)]

    def __call__(self, rows: np.ndarray, epoch: int | None) -> dict[str, Any]:
        draws = caption_draws(self.seed, epoch, rows) if epoch is not None else None
        langs, texts = [], []
        for i, captions in enumerate(self.index.captions(rows)):
            usable = [c for c in captions if self.languages is None or c[0] in self.languages]
            lang, text = usable[0] if draws is None else self.pick(usable, draws[i])
            langs.append(lang)
            texts.append(text)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        input_ids, attention_mask = pad_batch(ids, self.pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "lang": langs}


class CachedPairs(TorchDataset):
    """Images as rows over the embedding cache; indexing with (rows, epoch) returns one padded batch."""

    def __init__(self, captions: CaptionBatcher, embeddings):
        self.captions = captions
        self.embeddings = embeddings

    # Workers open their own memory map of a whole-file mapping instead of receiving a pickled copy of it.
    def __getstate__(self):
        state = dict(self.__dict__)
        embeddings = state["embeddings"]
        if (isinstance(embeddings, np.memmap) and embeddings.filename
                and embeddings.offset + embeddings.nbytes == Path(embeddings.filename).stat().st_size):
            state["embeddings"] = ("memmap", embeddings.filename, embeddings.dtype.str, embeddings.shape,
                                   embeddings.offset, "F" if embeddings.flags.f_contiguous and embeddings.ndim > 1
                                   else "C")
        return state

    def __setstate__(self, state):
        embeddings = state["embeddings"]
        if isinstance(embeddings, tuple) and embeddings and embeddings[0] == "memmap":
            _, filename, dtype, shape, offset, order = embeddings
            state["embeddings"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", shape=tuple(shape),
                                            offset=offset, order=order)
        self.__dict__.update(state)

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
                 trust_remote_code: bool = False, bucket_by_length: bool = True, text_model: str | None = None,
                 language_temperature: float | None = None, new_languages: Iterable[str] | None = None):
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
        self.text_model = text_model
        if language_temperature is not None and float(language_temperature) < 0:
            raise ValueError(f"data.language_temperature must be >= 0 (or null), got {language_temperature}")
        self.language_temperature = None if language_temperature is None else float(language_temperature)
        self.new_languages = {normalize_lang(lang) for lang in new_languages or ()} - {None}
        unknown = sorted(self.new_languages - (self.languages or self.new_languages))
        if unknown:
            raise ValueError(f"data.new_languages={unknown} are not in data.languages={sorted(self.languages)}")
        if self.balances_languages and self.languages is None:
            raise ValueError("data.language_temperature needs data.languages: the languages to balance")
        self.skipped: Counter = Counter()
        self.balance: LanguageBalance | None = None

    @property
    def language_roles(self) -> dict[str, str]:
        """With `data.new_languages` (a run continuing a model to them): `new` for those, `old` for the rest of
        `data.languages`; the loop then evaluates before the first step and writes the forgetting report from
        the evaluator's per-language metrics (`model.evaluator`)."""
        if not self.new_languages:
            return {}
        return {lang: "new" if lang in self.new_languages else "old"
                for lang in sorted((self.languages or set()) | self.new_languages)}

    @property
    def balances_languages(self) -> bool:
        return self.language_temperature not in (None, 1.0)

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
        self.text_max_length = capped_max_length(self.max_length, self.tokenizer, self._text_config(),
                                                 what="phase-2 captions (data.max_length)")
        self.transform = image_preprocessor(self.image_processor, self.trust_remote_code)
        if self.image_cache:
            self._setup_cached(accelerator)
        else:
            self._setup_streaming(accelerator)
        self._setup_val(accelerator)

    def _text_config(self):
        """The text tower's config, for its position limit: `text_model`'s, else the tokenizer dir's if it has one."""
        from transformers import AutoConfig

        source = self.text_model or self.tokenizer_name
        try:
            return AutoConfig.from_pretrained(source, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as error:
            if self.text_model:
                raise ValueError(f"data.text_model={self.text_model}: cannot read its config.json "
                                 f"({str(error).splitlines()[0]})") from None
            log.debug("no model config beside tokenizer %s (%s); capping captions by the tokenizer only", source,
                      error)
            return None

    def _balance(self, index: ShardIndex, rows: np.ndarray) -> dict[str, float] | None:
        """Fit the caption-language weights for data.language_temperature (None: the uniform pick)."""
        if not self.balances_languages:
            return None
        self.balance = fit_language_weights(index, rows, self.languages, self.language_temperature)
        shown = ", ".join(f"{lang} {self.balance.natural[lang]:.3f}->{self.balance.achieved[lang]:.3f}"
                          for lang in sorted(self.balance.natural) if self.balance.natural[lang] > 0)
        log.info("caption languages balanced with data.language_temperature=%g (natural->drawn share): %s",
                 self.language_temperature, shown)
        gap = max(abs(self.balance.achieved[lang] - self.balance.target[lang]) for lang in self.balance.target)
        if gap > 0.01:
            log.warning("the captions allow language shares only within %.3f of n^%g (an image is trained on "
                        "once per epoch, and only its own captions can be swapped)", gap, self.language_temperature)
        return self.balance.weights

    def _open_cache(self, urls: list[str], accelerator):
        return load_or_build_image_cache(
            urls, self.image_model, self.transform, self.cache_root, accelerator=accelerator,
            batch_size=self.cache_batch_size, num_workers=self.num_workers, default_lang=self.default_lang,
            dtype=self.cache_dtype, trust_remote_code=self.trust_remote_code)

    def _usable_rows(self, index: ShardIndex, decodable: np.ndarray | None, skipped: Counter) -> np.ndarray:
        """Rows with a decodable image and at least one caption in data.languages.

        A decodable row without such a caption counts once as "unknown_language"; undecodable rows are counted
        (as "corrupt_image") by the cache, whatever their captions, so no row is counted twice.
        """
        has_caption = index.usable_caption_counts(self.languages) > 0
        decodable = np.ones(index.num_rows, dtype=bool) if decodable is None else np.asarray(decodable, dtype=bool)
        unknown = int((decodable & ~has_caption).sum())
        if unknown:
            skipped["unknown_language"] += unknown
        return np.flatnonzero(decodable & has_caption)

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
        captions = CaptionBatcher(cache.index, self.tokenizer, self.text_max_length, self.languages, self.seed,
                                  language_weights=self._balance(cache.index, rows))
        self.pairs = CachedPairs(captions, cache.embeddings)
        log.info("phase-2 data (cached image embeddings %s): %d images, %d batches of %d per epoch%s",
                 cache.entry, len(rows), self.plan.num_batches(0), self.batch_size,
                 f"; skipped: {dict(self.skipped)}" if self.skipped else "")

    def _setup_streaming(self, accelerator) -> None:
        # Fail here, on every rank, rather than hang later with some rank or worker holding no shard.
        check_shard_count(len(self.urls), self.world_size, self.num_workers, self.resampled)
        source, self.epoch_samples = "data.samples_per_epoch", self.samples_per_epoch
        if self.epoch_samples is None and self._manifest_is_exact():
            source, self.epoch_samples = "manifest.json", manifest_sample_count(self.urls)
        weights = None
        # Skips come from one decoding scan when it runs; otherwise from the stream's first pass of epoch 0.
        self.stream_counts_skips = True
        if self.epoch_samples is None or self.balances_languages:
            index = self._verified_index(self.urls, accelerator)
            rows = self._usable_rows(index, None, self.skipped)
            self.skipped.update(index.skipped)
            self.stream_counts_skips = False
            weights = self._balance(index, rows)
            if self.epoch_samples is None:
                source, self.epoch_samples = f"a decoding scan of the shards ({index.dir})", len(rows)
        self.stream = ImageTextWebDataset(
            self.urls, self.transform, default_lang=self.default_lang, languages=self.languages, seed=self.seed,
            resampled=self.resampled, shuffle_buffer=self.shuffle_buffer, rank=self.rank,
            world_size=self.world_size, language_weights=weights)
        self._collate = functools.partial(collate_image_text, tokenizer=self.tokenizer,
                                          max_length=self.text_max_length)
        if self.epoch_samples < self.batch_size:
            raise ValueError(f"{self.epoch_samples} usable samples per epoch (from {source}) are fewer than "
                             f"data.batch_size={self.batch_size}"
                             f"{f' (skipped: {dict(self.skipped)})' if self.skipped else ''}")
        log.info("phase-2 data (streaming, decoding images): %d samples per epoch from %s, %d batches of %d%s",
                 self.epoch_samples, source, self.num_train_batches(0), self.batch_size,
                 f"; skipped: {dict(self.skipped)}" if self.skipped else "")

    def _verified_index(self, urls: list[str], accelerator) -> ShardIndex:
        """The index of the samples whose image decodes (one decoding scan, cached on disk)."""
        return ShardIndex.load_or_build(urls, self.cache_root, self.default_lang, verify_images=True,
                                        accelerator=accelerator)

    def _manifest_is_exact(self) -> bool:
        """Whether prepare-wds' manifest.json counts exactly the usable samples: it lists every shard (checked by
        `manifest_sample_count`) and no caption language that data.languages would drop."""
        if manifest_sample_count(self.urls) is None:
            return False
        if self.languages is None:
            return True
        for directory in {Path(local_path(url)).parent for url in self.urls}:
            try:
                listed = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))["captions_per_lang"]
            except (OSError, ValueError, KeyError, TypeError):
                return False
            if not isinstance(listed, dict) or not {normalize_lang(lang) for lang in listed} <= self.languages:
                return False
        return True

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
            self.val_pairs = CachedPairs(CaptionBatcher(index, self.tokenizer, self.text_max_length,
                                                        self.languages, self.seed), cache.embeddings)
        else:
            # Shares must stay equal on every rank, so undecodable images are found (once) while indexing.
            index = self._verified_index(val_urls, accelerator)
            decodable = None
            skipped.update(index.skipped)
            self.val_index = index
            self.val_captions = CaptionBatcher(index, self.tokenizer, self.text_max_length, self.languages,
                                               self.seed)
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
        return iter(self._loader(self.pairs, items, loader_seed(self.seed, epoch, 0)))

    def val_batches(self) -> Iterator[dict[str, Any]] | None:
        if self.val_chunks is None:
            return None
        shares = [rank_slice(chunk, self.rank, self.world_size) for chunk in self.val_chunks]
        if self.image_cache:
            return iter(self._loader(self.val_pairs, [(rows, None) for rows in shares], loader_seed(self.seed, 0, 1)))
        return self._streamed_val(shares)

    def _loader(self, dataset: TorchDataset, items: list, seed: int) -> DataLoader:
        return make_loader(dataset, seed, sampler=items, batch_size=None, num_workers=self.num_workers,
                           pin_memory=self.pin_memory)

    def _streamed_train(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        total = self.num_train_batches(epoch) * self.accum
        replay = start_batch * self.accum
        if replay:
            log.info("resuming streaming epoch %d at batch %d: re-reading the %d micro-batches before it",
                     epoch, start_batch, replay)
        produced, passes = 0, 0
        pending: list[dict] = []
        while produced < total:
            self.stream.set_epoch(epoch)
            # Workers hand over lists of samples (a short one at the end of their shards); cutting micro-batches
            # here means no worker drops a tail, so the epoch holds every usable sample it counted.
            loader = make_loader(self.stream, loader_seed(self.seed, epoch, 2 + passes),
                                 batch_size=self.micro_batch_size, num_workers=self.num_workers, collate_fn=list)
            # A later pass (or epoch) reads the same bad samples again: count them the first time only.
            count_skips = self.stream_counts_skips and epoch == 0 and passes == 0
            this_pass = 0
            for samples in loader:
                this_pass += len(samples)
                if not count_skips:
                    for sample in samples:
                        sample.pop("skipped", None)
                pending += samples
                while len(pending) >= self.micro_batch_size:
                    micro, pending = pending[:self.micro_batch_size], pending[self.micro_batch_size:]
                    produced += 1
                    # Replayed batches were trained on (and their skips counted) before the checkpoint.
                    if produced > replay:
                        yield self._pinned(self._collate(micro))
                    if produced >= total:
                        return
            passes += 1
            if this_pass == 0:
                raise RuntimeError(f"rank {self.rank} got no usable sample from its shards of {self.shards}")
            log.warning("rank %d ran out of samples after %d of %d micro-batches in epoch %d (fewer usable samples "
                        "than counted, or shards split unevenly over ranks); re-reading its shards to keep all "
                        "ranks in step", self.rank, produced, total, epoch)

    def _pinned(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.pin_memory:
            batch["pixel_values"] = batch["pixel_values"].pin_memory()
        return batch

    def _streamed_val(self, shares: list[np.ndarray]) -> Iterator[dict[str, Any]]:
        wanted = np.concatenate(shares) if shares else np.zeros(0, dtype=np.int64)
        loader = make_loader(IndexedImages(self.val_index, wanted, self.transform), loader_seed(self.seed, 0, 1),
                             batch_size=None, num_workers=self.num_workers)
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
