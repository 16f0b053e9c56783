"""Phase-1 data: parallel corpora (English <-> translation) read with `datasets`, tokenised once,
with teacher targets from the on-disk cache, batched per length bucket and padded per batch.

A corpus is declared in config as one of:
  {lang: zh, path: en-zh.tsv}                          TSV / CSV / JSONL / Parquet (format from suffix)
  {lang: zh, source_path: c.en, target_path: c.zh}     Moses / OPUS aligned text files
  {lang: zh, hub: Helsinki-NLP/opus-100, subset: en-zh, source_column: translation.en, target_column: translation.zh}
Column names default to `en` and the corpus language; `weight` scales how many of its rows an
epoch draws. A fixed number of rows per corpus is held out for validation.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset

from altclip_train.data.batching import BatchPlan, padded_rank_slice, rank_slice
from altclip_train.data.embedding_cache import EmbeddingCache, hash_strings
from altclip_train.data.loading import pad_batch

log = logging.getLogger(__name__)

_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class CorpusSpec:
    lang: str
    path: str | None = None
    source_path: str | None = None
    target_path: str | None = None
    hub: str | None = None
    subset: str | None = None
    split: str = "train"
    format: str | None = None
    source_column: str = "en"
    target_column: str | None = None
    weight: float = 1.0
    max_rows: int | None = None

    @property
    def name(self) -> str:
        return self.path or self.target_path or f"{self.hub}:{self.subset or ''}"


@dataclass
class Corpus:
    spec: CorpusSpec
    source: list[str]
    target: list[str]
    skipped: Counter = field(default_factory=Counter)


def load_corpus(spec: CorpusSpec, source_lang: str = "en") -> Corpus:
    """Read one corpus into (source, target) sentence lists, dropping and counting empty rows."""
    target_column = spec.target_column or spec.lang
    source_column = spec.source_column
    if spec.source_path or spec.target_path:
        source, target = _read_moses(spec)
    else:
        table = _read_table(spec)
        for column in (source_column, target_column):
            if _column(table, column) is None:
                raise ValueError(f"corpus {spec.name}: unknown column '{column}' "
                                 f"(columns: {', '.join(table.column_names)})")
        source, target = _column(table, source_column), _column(table, target_column)
    corpus = Corpus(spec, [], [])
    for row, (src, tgt) in enumerate(zip(source, target)):
        src, tgt = ("" if src is None else str(src)).strip(), ("" if tgt is None else str(tgt)).strip()
        if not src or not tgt:
            corpus.skipped["empty_sentence"] += 1
            continue
        corpus.source.append(src)
        corpus.target.append(tgt)
        if spec.max_rows and len(corpus.source) >= spec.max_rows:
            break
    if corpus.skipped:
        log.warning("corpus %s: skipped %d rows with an empty sentence", spec.name, corpus.skipped["empty_sentence"])
    if not corpus.source:
        raise ValueError(f"corpus {spec.name}: no usable sentence pairs")
    return corpus


def _column(table, dotted: str):
    """A column by name; `translation.en` reaches into a struct column (the OPUS hub layout)."""
    head, _, rest = dotted.partition(".")
    if head not in table.column_names:
        return None
    values = table[head]
    if rest:
        values = [(value or {}).get(rest) for value in values]
    return values


def _read_table(spec: CorpusSpec):
    import datasets

    if spec.hub:
        return datasets.load_dataset(spec.hub, spec.subset, split=spec.split)
    path = Path(spec.path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    fmt = spec.format or _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"corpus {path}: cannot tell the format from '{path.suffix}'; set format: tsv|csv|json|parquet")
    kwargs: dict[str, Any] = {}
    if fmt == "tsv":
        fmt, kwargs = "csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    if fmt == "csv":
        kwargs.update(keep_default_na=False, na_filter=False)
    return datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)


def _read_moses(spec: CorpusSpec) -> tuple[list[str], list[str]]:
    if not (spec.source_path and spec.target_path):
        raise ValueError(f"corpus {spec.name}: Moses corpora need both source_path and target_path")
    sides = []
    for path in (Path(spec.source_path), Path(spec.target_path)):
        if not path.is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")
        sides.append(path.read_text(encoding="utf-8").splitlines())
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"Moses corpus {spec.source_path} has {len(sides[0])} lines but "
                         f"{spec.target_path} has {len(sides[1])}; aligned files must match line for line")
    return sides[0], sides[1]


class PairRows(TorchDataset):
    """Tokenised pairs; indexing with a list of pair rows returns one padded batch."""

    def __init__(self, student_ids: list[list[int]], source_ids: np.ndarray, target_ids: list[list[int]],
                 langs: list[str], source_lang: str, pad_id: int, teacher: np.ndarray | None,
                 teacher_row: np.ndarray, teacher_tokens: list[list[int]] | None, teacher_pad_id: int,
                 student_width: int | None = None, teacher_width: int | None = None):
        self.student_width = student_width
        self.teacher_width = teacher_width
        self.student_source = student_ids
        self.student_target = target_ids
        self.source_index = source_ids
        self.langs = langs
        self.source_lang = source_lang
        self.pad_id = pad_id
        self.teacher = teacher
        self.teacher_row = teacher_row
        self.teacher_tokens = teacher_tokens
        self.teacher_pad_id = teacher_pad_id

    def __len__(self) -> int:
        return len(self.langs)

    def __getitem__(self, item: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        rows, valid = item
        # English rows first, then their translations; both learn the English target.
        sequences = [self.student_source[r] for r in rows] + [self.student_target[r] for r in rows]
        ids, mask = pad_batch(sequences, self.pad_id, self.student_width)
        source_index = torch.as_tensor(self.source_index[rows], dtype=torch.long)
        source_index[~torch.as_tensor(valid)] = -1
        batch = {
            "student_input_ids": ids,
            "student_attention_mask": mask,
            "lang": [self.source_lang] * len(rows) + [self.langs[r] for r in rows],
            "source_index": torch.cat([source_index, source_index]),
        }
        if self.teacher is not None:
            embeds = torch.from_numpy(np.asarray(self.teacher[self.teacher_row[rows]], dtype=np.float16))
            batch["teacher_embeds"] = torch.cat([embeds, embeds])
        else:
            batch["teacher_input_ids"], batch["teacher_attention_mask"] = pad_batch(
                [self.teacher_tokens[r] for r in rows], self.teacher_pad_id, self.teacher_width)
        return batch


class ParallelTextData:
    """Builds phase-1 batches. `setup()` reads, tokenises and fills the teacher cache once."""

    def __init__(self, corpora: list[dict], languages: list[str], batch_size: int, student: str,
                 teacher: str, student_tokenizer: str | None = None, student_max_length: int = 77, teacher_max_length: int = 77,
                 teacher_cache: bool = True, cache_dir: str = "~/.cache/altclip_train", val_size: int = 500,
                 eval_batch_size: int = 256, num_workers: int = 0, bucket_by_length: bool = True,
                 seed: int = 0, source_lang: str = "en", teacher_batch_size: int = 256,
                 trust_remote_code: bool = False, pad_to_max_length: bool = False):
        if not corpora:
            raise ValueError("data.corpora is empty: list at least one parallel corpus")
        self.specs = [CorpusSpec(**dict(corpus)) for corpus in corpora]
        for spec in self.specs:
            if spec.lang not in languages:
                raise ValueError(f"corpus {spec.name}: language '{spec.lang}' is not in data.languages {list(languages)}")
        self.languages = list(languages)
        self.batch_size = batch_size
        self.student_tokenizer = student_tokenizer or student
        self.teacher = teacher
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
        self.skipped: Counter = Counter()

    # ---------------------------------------------------------------- setup
    def setup(self, accelerator) -> None:
        from transformers import AutoTokenizer

        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.grad_accum = getattr(accelerator, "gradient_accumulation_steps", 1)
        if self.batch_size % (self.world_size * self.grad_accum):
            raise ValueError(f"data.batch_size={self.batch_size} does not split evenly over {self.world_size} "
                             f"processes x {self.grad_accum} accumulation steps")
        corpora = [load_corpus(spec, self.source_lang) for spec in self.specs]
        for corpus in corpora:
            self.skipped.update(corpus.skipped)
        tokenizer = AutoTokenizer.from_pretrained(self.student_tokenizer, trust_remote_code=self.trust_remote_code)

        sources, targets, langs, corpus_of_row, group_rows, val_rows = [], [], [], [], [], []
        for index, corpus in enumerate(corpora):
            start = len(sources)
            rows = np.arange(start, start + len(corpus.source))
            held_out = min(self.val_size, len(rows) // 10) if self.val_size else 0
            order = np.random.default_rng([self.seed, index]).permutation(rows)
            val_rows.append(np.sort(order[:held_out]))
            group_rows.append(np.sort(order[held_out:]))
            sources += corpus.source
            targets += corpus.target
            langs += [corpus.spec.lang] * len(corpus.source)
            corpus_of_row += [index] * len(corpus.source)

        unique_sources, source_index = np.unique(np.asarray(sources, dtype=object), return_inverse=True)
        self.unique_sources = unique_sources = unique_sources.tolist()
        student_ids = self._tokenize(tokenizer, unique_sources, self.student_max_length, "student (English)")
        target_ids = self._tokenize(tokenizer, targets, self.student_max_length, "student (translations)")
        teacher_embeds, teacher_tokens, teacher_pad = None, None, 0
        if self.use_teacher_cache:
            teacher_embeds = self._teacher_targets(unique_sources, accelerator)
        else:
            teacher_tokenizer = AutoTokenizer.from_pretrained(self.teacher, trust_remote_code=self.trust_remote_code)
            teacher_tokens = [teacher_tokenizer(s, truncation=True, max_length=self.teacher_max_length)["input_ids"]
                              for s in sources]
            teacher_pad = teacher_tokenizer.pad_token_id or 0
        self.rows = PairRows(
            student_ids=[student_ids[i] for i in source_index], source_ids=source_index, target_ids=target_ids,
            langs=langs, source_lang=self.source_lang, pad_id=tokenizer.pad_token_id, teacher=teacher_embeds,
            teacher_row=source_index, teacher_tokens=teacher_tokens, teacher_pad_id=teacher_pad,
            student_width=self.student_max_length if self.pad_to_max_length else None,
            teacher_width=self.teacher_max_length if self.pad_to_max_length else None)
        lengths = np.array([max(len(self.rows.student_source[i]), len(target_ids[i])) for i in range(len(langs))])
        self.plan = BatchPlan(lengths=lengths, groups=group_rows, weights=[s.weight for s in self.specs],
                              global_batch_size=self.batch_size, seed=self.seed,
                              bucket_by_length=self.bucket_by_length)
        self.val_plan = np.concatenate(val_rows) if val_rows else np.zeros(0, dtype=np.int64)
        self.val_plan = self.val_plan[np.argsort(lengths[self.val_plan], kind="stable")]
        if self.plan.num_batches(0) == 0:
            raise ValueError(f"the training split has fewer pairs than data.batch_size={self.batch_size}")
        log.info("phase-1 data: %d training pairs in %d corpora, %d held out, %d unique English sentences",
                 sum(len(g) for g in group_rows), len(corpora), len(self.val_plan), len(unique_sources))

    def _tokenize(self, tokenizer, texts: list[str], max_length: int, what: str) -> list[list[int]]:
        out = []
        for start in range(0, len(texts), 10_000):
            out += tokenizer(texts[start:start + 10_000], truncation=True, max_length=max_length)["input_ids"]
        return out

    def _teacher_targets(self, unique_sources: list[str], accelerator) -> np.ndarray:
        from altclip_train.models.teacher import TeacherTextEncoder, describe_teacher

        cache = EmbeddingCache(self.cache_dir, "teacher_text", describe_teacher(self.teacher, self.teacher_max_length),
                               hash_strings(unique_sources), len(unique_sources))

        def compute(start: int, stop: int) -> np.ndarray:
            encoder = TeacherTextEncoder(self.teacher, self.teacher_max_length, accelerator.device,
                                         trust_remote_code=self.trust_remote_code)
            return encoder.encode(unique_sources[start:stop], self.teacher_batch_size,
                                  show_progress=accelerator.is_local_main_process)

        return cache.load_or_build(compute, accelerator)

    def rows_source_texts(self) -> list[str]:
        """The distinct English sentences, in the order of the teacher-target rows."""
        return self.unique_sources

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
        return iter(self._loader(items))

    def val_batches(self) -> Iterator[dict[str, Any]]:
        size = self.eval_batch_size
        chunks = [self.val_plan[s:s + size] for s in range(0, len(self.val_plan), size)]
        return iter(self._loader([padded_rank_slice(c, self.rank, self.world_size) for c in chunks]))

    def _loader(self, items: list) -> DataLoader:
        # A private generator: creating a loader must not draw from the global RNG, or dropout
        # masks would depend on how many loaders (evaluations, resumes) came before.
        return DataLoader(self.rows, sampler=items, batch_size=None, num_workers=self.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))

    def report_skips(self) -> Counter:
        return self.skipped
