"""Phase-1 data module: parallel corpora (English <-> translation) from the memory-mapped corpus store,
teacher targets from the chunked embedding cache, batched per length bucket and padded per batch.

Batch keys it produces (each pair gives two student rows, English first, both with the English target):

| key                        | shape / type        | what                                                  |
|----------------------------|---------------------|-------------------------------------------------------|
| `student_input_ids`        | long [2n, L]        | English rows, then their translations; L = this batch's longest |
| `student_attention_mask`   | long [2n, L]        | 1 on real tokens                                      |
| `lang`                     | list[str] (2n)      | `source_lang` for the English rows, the pair's language for the others |
| `source_index`             | long [2n]           | row of the English sentence in the store (-1: padding row) |
| `teacher_embeds`           | float16 [2n, D]     | the cached target (teacher cache on)                  |
| `teacher_input_ids`, `teacher_attention_mask` | long [n, T] | the English side for a live teacher (cache off) |

Corpora are declared in `data.corpora` (see `data/corpora.py` for the layouts). `setup()` opens or builds
the corpus store (read, deduplicated and tokenised once by one process, `data/corpus_store.py`) and the
teacher cache (chunked, filled by every rank, `data/embedding_cache.py`); a restart reads both and computes
nothing. Everything sized by the corpus is a memory map; DataLoader workers slice batches out of it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from altclip_train.data.batching import BatchPlan, language_weights, padded_rank_slice, rank_slice
from altclip_train.data.corpora import CorpusSpec
from altclip_train.data.corpus_store import CorpusStore, Tokenization, open_or_build, store_dir
from altclip_train.data.embedding_cache import EmbeddingCache
from altclip_train.data.loading import capped_max_length, make_loader, pad_flat, resolve_pad_multiple
from altclip_train.models.teachers import load_teacher

log = logging.getLogger(__name__)


def prefetched(items: Iterator, depth: int = 2) -> Iterator:
    """`items`, produced by a background thread `depth` ahead, so the next batch is gathered and padded
    (numpy, which releases the GIL) while the teacher's forward runs on this one."""
    import queue
    import threading

    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def fill() -> None:
        try:
            for item in items:
                buffer.put(item)
        except BaseException as error:  # handed over, raised in the consumer
            buffer.put(error)
        buffer.put(done)

    threading.Thread(target=fill, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


class PairRows(TorchDataset):
    """The store's pairs; indexing with (pair rows, valid mask) returns one padded batch (keys above)."""

    def __init__(self, store: CorpusStore, source_lang: str, pad_id: int, teacher: np.ndarray | None,
                 teacher_pad_id: int, pad_multiple: int = 1, student_width: int | None = None,
                 teacher_width: int | None = None):
        self.store = store
        self.source_lang = source_lang
        self.group_lang = [group["lang"] for group in store.groups]
        self.pad_id, self.teacher_pad_id = pad_id, teacher_pad_id
        self.teacher = teacher
        self.pad_multiple = pad_multiple
        self.student_width, self.teacher_width = student_width, teacher_width

    def __getstate__(self):  # the teacher matrix is a memmap: workers reopen it rather than copy it
        state = dict(self.__dict__)
        if isinstance(self.teacher, np.memmap):
            state["teacher"] = ("memmap", self.teacher.filename, self.teacher.shape)
        return state

    def __setstate__(self, state):
        teacher = state.get("teacher")
        if isinstance(teacher, tuple) and teacher and teacher[0] == "memmap":
            state["teacher"] = np.memmap(teacher[1], dtype=np.float16, mode="r", shape=teacher[2])
        self.__dict__.update(state)

    def __len__(self) -> int:
        return self.store.num_pairs

    def __getitem__(self, item: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        rows, valid = item
        rows = np.asarray(rows, dtype=np.int64)
        sources = np.asarray(self.store.pair_source[rows], dtype=np.int64)
        english, english_offsets = self.store.student_source.gather(sources)
        translated, translated_offsets = self.store.student_target.gather(rows)
        flat = np.concatenate([english, translated])
        offsets = np.concatenate([english_offsets, translated_offsets[1:] + english_offsets[-1]])
        ids, mask = pad_flat(flat, offsets, self.pad_id, self.pad_multiple, self.student_width)
        source_index = torch.from_numpy(sources)
        source_index[~torch.as_tensor(np.asarray(valid, dtype=bool))] = -1
        groups = np.asarray(self.store.pair_group[rows])
        batch = {
            "student_input_ids": ids,
            "student_attention_mask": mask,
            "lang": [self.source_lang] * len(rows) + [self.group_lang[g] for g in groups.tolist()],
            "source_index": torch.cat([source_index, source_index]),
        }
        if self.teacher is not None:
            embeds = torch.from_numpy(np.asarray(self.teacher[sources], dtype=np.float16))
            batch["teacher_embeds"] = torch.cat([embeds, embeds])
        else:
            flat, offsets = self.store.teacher_source.gather(sources)
            batch["teacher_input_ids"], batch["teacher_attention_mask"] = pad_flat(
                flat, offsets, self.teacher_pad_id, self.pad_multiple, self.teacher_width)
        return batch


def rows_whose_source_is_not(rows: np.ndarray, pair_source, held: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """`rows` minus those whose English source is marked in `held`, read in chunks of the memory-mapped
    `pair_source` so a 100M-pair corpus never materialises its source column."""
    keep = np.empty(len(rows), dtype=bool)
    for start in range(0, len(rows), chunk):
        keep[start:start + chunk] = ~held[np.asarray(pair_source[rows[start:start + chunk]])]
    return rows[keep]


class ParallelTextData:
    """Builds phase-1 batches. `setup()` opens (or builds once) the corpus store and the teacher cache."""

    def __init__(self, corpora: list[dict], languages: list[str], batch_size: int, student: str,
                 teacher: str, student_tokenizer: str | None = None, student_max_length: int = 77,
                 teacher_max_length: int | None = None, distill_target: str | None = None, teacher_cache: bool = True, cache_dir: str = "~/.cache/altclip_train",
                 val_size: int = 500, eval_batch_size: int = 256, num_workers: int = 0, bucket_by_length: bool = True,
                 seed: int = 0, source_lang: str = "en", teacher_batch_size: int = 256,
                 trust_remote_code: bool = False, pad_to_max_length: bool = False,
                 pad_to_multiple_of: int | str | None = "auto", language_temperature: float | None = None,
                 tokenize_num_proc: int | str = "auto", cache_verify: str = "stat",
                 cache_chunk_rows: int | None = None, replay: dict | None = None):
        if not corpora:
            raise ValueError("data.corpora is empty: list at least one parallel corpus")
        self.specs = [CorpusSpec.from_config(dict(corpus), position) for position, corpus in enumerate(corpora)]
        self.num_new_corpora = len(self.specs)
        self.replay_fraction = 0.0
        if replay:
            replay = dict(replay)
            unknown = sorted(set(replay) - {"corpora", "fraction"})
            if unknown:
                raise ValueError(f"data.replay.{unknown[0]}: unknown key (replay has corpora, fraction)")
            self.replay_fraction = float(replay.get("fraction", 0.0))
            if not 0 <= self.replay_fraction < 1 or not replay.get("corpora"):
                raise ValueError(f"data.replay: give corpora and a fraction in [0, 1), got fraction "
                                 f"{replay.get('fraction')} and {len(replay.get('corpora') or [])} corpora")
            self.specs += [CorpusSpec.from_config(dict(corpus), len(self.specs) + position)
                           for position, corpus in enumerate(replay["corpora"])]
        for spec in self.specs:
            if spec.lang is not None and spec.lang not in languages:
                raise ValueError(f"corpus {spec.name}: language '{spec.lang}' is not in data.languages {list(languages)}")
        if language_temperature is not None and not 0 <= float(language_temperature) <= 1:
            raise ValueError(f"data.language_temperature={language_temperature}: use an exponent in [0, 1] "
                             f"(1 keeps the natural shares, 0 makes languages uniform) or null")
        self.languages = list(languages)
        self.batch_size = batch_size
        self.student = student
        self.student_tokenizer = student_tokenizer or student
        self.teacher_name = teacher
        self.distill_target = distill_target
        self.student_max_length = student_max_length
        self.teacher_max_length = teacher_max_length
        self.use_teacher_cache = teacher_cache
        self.cache_dir = cache_dir
        self.val_size = val_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.bucket_by_length = bucket_by_length
        self.seed = seed
        self.source_lang = source_lang
        self.teacher_batch_size = teacher_batch_size
        self.trust_remote_code = trust_remote_code
        # Fixed-width padding (the original AltCLIP helpers' way) exists only to measure what per-batch
        # padding saves; see bench/phase1_distill.py.
        self.pad_to_max_length = pad_to_max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.language_temperature = language_temperature
        self.tokenize_num_proc = tokenize_num_proc
        self.cache_verify = cache_verify
        self.cache_chunk_rows = cache_chunk_rows
        self.skipped: Counter = Counter()
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- setup
    def setup(self, accelerator) -> None:
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.grad_accum = getattr(accelerator, "gradient_accumulation_steps", 1)
        if self.batch_size % (self.world_size * self.grad_accum):
            raise ValueError(f"data.batch_size={self.batch_size} does not split evenly over {self.world_size} "
                             f"processes x {self.grad_accum} accumulation steps")
        student_side, teacher_side = self.tokenizations()
        tokenizer, student_max = student_side.tokenizer, student_side.max_length
        teacher_tokenizer, teacher_max = teacher_side.tokenizer, teacher_side.max_length
        started = time.perf_counter()
        self.store = open_or_build(self.specs, self.languages, student_side, teacher_side, self.cache_dir,
                                   num_proc=self._num_proc(), accelerator=accelerator)
        self.timings["corpus_s"] = time.perf_counter() - started
        self.skipped.update(self.store.skipped)

        self.teacher_pad_id = teacher_tokenizer.pad_token_id or 0
        started = time.perf_counter()
        teacher_embeds = self._teacher_targets(accelerator, teacher_max) if self.use_teacher_cache else None
        self.timings["teacher_cache_s"] = time.perf_counter() - started
        self.rows = PairRows(
            self.store, self.source_lang, tokenizer.pad_token_id, teacher_embeds,
            teacher_pad_id=self.teacher_pad_id,
            pad_multiple=resolve_pad_multiple(self.pad_to_multiple_of, accelerator.device),
            student_width=student_max if self.pad_to_max_length else None,
            teacher_width=teacher_max if self.pad_to_max_length else None)
        self._plan_batches()

    def tokenizations(self) -> tuple[Tokenization, Tokenization]:
        """(student, teacher): how the corpus store tokenises each side, which is also what its key holds.
        Loads tokenizers and configs only (sets `self.teacher`, the adapter; no weights)."""
        from transformers import AutoConfig, AutoTokenizer

        remote = {"trust_remote_code": self.trust_remote_code}
        self.teacher = load_teacher(self.teacher_name, self.distill_target, self.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(self.student_tokenizer, **remote)
        teacher_tokenizer = self.teacher.text_tokenizer()
        student_max = capped_max_length(self.student_max_length, tokenizer, AutoConfig.from_pretrained(self.student, **remote),
                                        "data.student_max_length")
        # The family's own context length unless asked for less: SigLIP's target depends on its fixed width.
        teacher_max = self.teacher.text_max_length
        if self.teacher_max_length is not None:
            teacher_max = capped_max_length(self.teacher_max_length, teacher_tokenizer, None, "data.teacher_max_length")
            teacher_max = min(teacher_max, self.teacher.text_max_length)
        return Tokenization(tokenizer, student_max), Tokenization(teacher_tokenizer, teacher_max)

    def corpus_store_dir(self) -> Path:
        """Where `setup()` finds (or builds) this data's corpus store, without opening or building it."""
        return store_dir(self.cache_dir, self.specs, self.languages, *self.tokenizations())

    @property
    def language_roles(self) -> dict[str, str]:
        """With `data.replay`: `old` for the replayed languages (and English), `new` for the new corpora's; the
        loop then reports forgetting. Replay `fraction: 0` evaluates the old languages without replaying them."""
        if self.num_new_corpora == len(self.specs):
            return {}
        roles = {self.source_lang: "old"}
        for group in self.store.groups:
            if group["corpus"] >= self.num_new_corpora:
                roles.setdefault(group["lang"], "old")
        for group in self.store.groups:
            if group["corpus"] < self.num_new_corpora:
                roles[group["lang"]] = "new"
        return roles

    def _num_proc(self) -> int:
        if self.tokenize_num_proc == "auto":
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            return max(1, min(16, cores))
        return max(1, int(self.tokenize_num_proc))

    def _plan_batches(self) -> None:
        """Per (corpus, language) group: hold out validation rows, then plan the epochs over the rest.

        A held-out pair's English sentence is held out everywhere: the same sentence in another corpus or
        language (and its English-English row) would otherwise train the student on the very teacher target
        that validation scores it against."""
        lengths = self.store.pair_length
        val_rows, group_rows = [], []
        held_sources = np.zeros(self.store.num_sources, dtype=bool)
        for index, group in enumerate(self.store.groups):
            rows = self.store.group_rows(index)
            held_out = min(self.val_size, len(rows) // 10) if self.val_size else 0
            order = np.random.default_rng([self.seed, index]).permutation(len(rows))
            val_rows.append(np.sort(rows[order[:held_out]]))
            held_sources[np.asarray(self.store.pair_source[val_rows[-1]])] = True
            group_rows.append(rows)
        train_groups = [np.sort(rows_whose_source_is_not(rows, self.store.pair_source, held_sources))
                        if held_sources.any() else np.sort(rows) for rows in group_rows]
        # New corpora fill each batch; replay corpora (old languages) fill data.replay.fraction of it.
        streams = {}
        for replay in (False, True):
            chosen = [i for i, g in enumerate(self.store.groups) if (g["corpus"] >= self.num_new_corpora) == replay]
            weights = language_weights([len(train_groups[i]) for i in chosen],
                                       [self.store.groups[i]["lang"] for i in chosen],
                                       [self.specs[self.store.groups[i]["corpus"]].weight for i in chosen],
                                       self.language_temperature)
            streams[replay] = ([train_groups[i] for i in chosen], weights)
        self.plan = BatchPlan(lengths=lengths, groups=streams[False][0], weights=streams[False][1],
                              global_batch_size=self.batch_size, seed=self.seed, bucket_by_length=self.bucket_by_length,
                              replay_groups=streams[True][0], replay_weights=streams[True][1],
                              replay_fraction=self.replay_fraction)
        val_plan = np.concatenate(val_rows) if val_rows else np.zeros(0, dtype=np.int64)
        self.val_plan = val_plan[np.argsort(np.asarray(lengths[val_plan]), kind="stable")]
        if self.plan.num_batches(0) == 0:
            raise ValueError(f"the training split has fewer pairs than data.batch_size={self.batch_size}")
        log.info("phase-1 data: %d training pairs in %d corpora, %d held out, %d unique English sentences",
                 sum(len(g) for g in train_groups), len(self.specs), len(self.val_plan), self.store.num_sources)

    def _teacher_targets(self, accelerator, teacher_max: int) -> np.ndarray:
        store, encoder, stats = self.store, [], {"forward_s": 0.0, "rows": 0}
        identity = json.dumps({**self.teacher.identity(), "max_length": teacher_max}, sort_keys=True)
        cache = EmbeddingCache(self.cache_dir, "teacher_text", identity, store.key, store.num_sources,
                               self.teacher.text_dim, chunk_rows=self.cache_chunk_rows)
        lengths = store.source_length("teacher")
        pad_id = None

        def compute(start: int, stop: int) -> np.ndarray:
            nonlocal pad_id
            if not encoder:  # loaded on the first missing chunk only: a complete cache never loads the teacher
                encoder.append(self.teacher.load_text_encoder(accelerator.device))
                pad_id = self.teacher_pad_id
            rows = np.arange(start, stop)
            # Sorting by length inside the chunk keeps padding small; the chunk's batches are fixed, so a
            # resumed build computes exactly the vectors an uninterrupted one does.
            rows = rows[np.argsort(np.asarray(lengths[start:stop]), kind="stable")]
            out = np.empty((stop - start, cache.dim), dtype=np.float32)
            batches = [rows[lo:lo + self.teacher_batch_size] for lo in range(0, len(rows), self.teacher_batch_size)]
            padded = (pad_flat(*store.teacher_source.gather(b), pad_id) for b in batches)
            for batch_rows, (ids, mask) in zip(batches, prefetched(padded)):
                began = time.perf_counter()
                vectors = encoder[0](ids.to(accelerator.device), mask.to(accelerator.device)).cpu().numpy()
                stats["forward_s"] += time.perf_counter() - began
                out[batch_rows - start] = vectors
            stats["rows"] += stop - start
            return out

        embeddings = cache.load_or_build(compute, accelerator, verify=self.cache_verify, desc="teacher targets")
        report = cache.report
        if report.chunks_built:
            rate = stats["rows"] / max(report.seconds, 1e-9)
            log.info("teacher cache: %d of %d chunks built on this rank (%d sentences, %.3g sentences/s, %.0f%% of "
                     "the time inside the teacher forward)", report.chunks_built, cache.entry.num_chunks,
                     stats["rows"], rate, 100 * stats["forward_s"] / max(report.seconds, 1e-9))
        else:
            log.info("teacher cache: reusing %s (%d sentences)", cache.dir, store.num_sources)
        self.teacher_cache_stats = {**stats, "seconds": report.seconds, "chunks_built": report.chunks_built}
        del encoder[:]
        return embeddings

    def source_texts(self, rows: np.ndarray | None = None) -> list[str]:
        """The distinct English sentences, in the order of the teacher-target rows."""
        return self.store.source_texts(rows)

    # ---------------------------------------------------------------- batches
    def num_train_batches(self, epoch: int = 0) -> int:
        return self.plan.num_batches(epoch)

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """This rank's micro-batches of `epoch` (grad_accum of them per global batch), from global
        batch `start_batch` on. A global batch is cut into world x accum pieces; rank r takes pieces
        r*accum .. r*accum + accum - 1, so any world size sees the same samples per optimizer step."""
        pieces = self.world_size * self.grad_accum
        items = []
        for rows in self.plan.global_batches(epoch)[start_batch:]:
            for step in range(self.grad_accum):
                share = rank_slice(rows, self.rank * self.grad_accum + step, pieces)
                items.append((share, np.ones(len(share), dtype=bool)))
        return iter(make_loader(self.rows, self.seed, sampler=items, num_workers=self.num_workers))

    def val_batches(self) -> Iterator[dict[str, Any]]:
        size = self.eval_batch_size
        chunks = [self.val_plan[s:s + size] for s in range(0, len(self.val_plan), size)]
        items = [padded_rank_slice(c, self.rank, self.world_size) for c in chunks]
        return iter(make_loader(self.rows, self.seed, sampler=items, num_workers=self.num_workers))
