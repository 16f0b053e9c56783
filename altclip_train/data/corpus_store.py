"""The tokenised phase-1 corpus on disk: read once, deduplicated once, tokenised once, then memory-mapped by
every rank and every DataLoader worker, so memory and restart time stay flat as the corpus grows.

An entry `<cache_dir>/corpora/<key>/` is keyed by every corpus entry and the identity of its files
(resolved path, size, mtime), both tokenizers' fingerprints, the max lengths and the language list. It holds:

| file                   | one row per       | content                                                          |
|------------------------|-------------------|------------------------------------------------------------------|
| `text.arrow`           | pair              | `en`, `target`, `lang` as read (trimmed, empty rows dropped)     |
| `sources.arrow`        | unique English    | `text`                                                           |
| `source_tokens*.arrow` | unique English    | `student_ids`, `teacher_ids` (int32 lists), `student_len`, `teacher_len`, `student_unk` |
| `target_tokens*.arrow` | pair              | `target_ids` (int32 list), `target_len`, `target_unk`            |
| `pair_source.npy`      | pair              | row of its English side in the sources                           |
| `pair_length.npy`      | pair              | longer student side, in tokens (for length bucketing)            |
| `pair_group.npy`       | pair              | its (corpus, language) group                                     |
| `meta.json`            | entry             | groups, skips, `<unk>` rates, timings; written last (the completion mark) |

The `.arrow` files are `datasets` Arrow files (`datasets.Dataset.from_file` reads them); tokenisation is a
batched `Dataset.map` over `num_proc` processes. One process builds an entry, under a file lock and while
the other ranks wait (`main_process_first`); it is staged and renamed into place, so a kill mid-build
leaves nothing a reader would trust. Readers open every file memory-mapped: the page cache holds one copy
per node, however many ranks and workers read it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from altclip_train.data.corpora import PAIR_SCHEMA, CorpusSpec, iter_pairs

log = logging.getLogger(__name__)

STORE_VERSION = "corpus-store-v1"
MIN_ROWS_PER_PROC = 20_000   # below this, starting another tokenising process costs more than it saves


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of a tokenizer's behaviour: its full serialisation (fast tokenizers) or vocabulary."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@dataclass
class Tokenization:
    """How one side is tokenised: what is in the key and what the map workers need."""

    tokenizer: object
    max_length: int

    def fingerprint(self) -> dict:
        return {"tokenizer": tokenizer_fingerprint(self.tokenizer), "max_length": self.max_length}

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to max_length: what `tokenizer(texts, truncation=True,
        max_length=...)` returns, without building the attention masks and offsets it would throw away."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch_fast"):
            return self.tokenizer(texts, truncation=True, max_length=self.max_length,
                                  return_attention_mask=False)["input_ids"]
        if getattr(self, "_backend", None) is None:
            self._backend = copy.deepcopy(backend)  # our own, so truncation settings never leak back
            self._backend.no_padding()
            self._backend.enable_truncation(self.max_length, strategy="longest_first",
                                            direction=getattr(self.tokenizer, "truncation_side", "right"))
        return [encoding.ids for encoding in self._backend.encode_batch_fast(texts, add_special_tokens=True)]

    def __getstate__(self):
        return {"tokenizer": self.tokenizer, "max_length": self.max_length}


def store_key(specs: list[CorpusSpec], languages: list[str], student: Tokenization, teacher: Tokenization) -> str:
    payload = {"version": STORE_VERSION, "corpora": [spec.identity() for spec in specs],
               "languages": sorted(languages), "student": student.fingerprint(), "teacher": teacher.fingerprint()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def store_dir(cache_dir: str | Path, specs: list[CorpusSpec], languages: list[str], student: Tokenization,
              teacher: Tokenization) -> Path:
    """The entry these corpora and tokenizers map to: `<cache_dir>/corpora/<key>` (complete once meta.json is in)."""
    return Path(cache_dir).expanduser() / "corpora" / store_key(specs, languages, student, teacher)


# ------------------------------------------------------------------------------------------ reading
class TokenColumn:
    """An int32 list column of memory-mapped Arrow files, gathered by row without copying the rest.

    Keeps zero-copy numpy views of each record batch's offsets and values; `gather(rows)` returns the
    chosen rows as flat values plus offsets, the layout `loading.pad_flat` pads.
    """

    def __init__(self, paths: list[Path], column: str):
        self.paths, self.column = paths, column
        self._batches = None

    def __getstate__(self):  # workers reopen the maps instead of receiving a pickled copy
        return {"paths": self.paths, "column": self.column, "_batches": None}

    def _open(self):
        offsets, values, starts = [], [], [0]
        for path in self.paths:
            reader = pa.ipc.open_stream(pa.memory_map(str(path)))
            for batch in reader:
                array = batch.column(batch.schema.get_field_index(self.column))
                offsets.append(array.offsets.to_numpy(zero_copy_only=True))
                values.append(array.values.to_numpy(zero_copy_only=True))
                starts.append(starts[-1] + batch.num_rows)
        self._batches = (offsets, values, np.asarray(starts, dtype=np.int64))

    def __len__(self) -> int:
        if self._batches is None:
            self._open()
        return int(self._batches[2][-1])

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._batches is None:
            self._open()
        offsets, values, starts = self._batches
        rows = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(starts, rows, side="right") - 1
        lengths = np.empty(len(rows), dtype=np.int64)
        pieces: list[np.ndarray] = [None] * len(rows)
        for i, (batch, row) in enumerate(zip(which.tolist(), (rows - starts[which]).tolist())):
            lo, hi = offsets[batch][row], offsets[batch][row + 1]
            pieces[i] = values[batch][lo:hi]
            lengths[i] = hi - lo
        out_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_offsets[1:])
        flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        return flat, out_offsets


class CorpusStore:
    """A complete store entry, opened memory-mapped; see the module docstring for what each file holds."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        self.pair_source = np.load(self.dir / "pair_source.npy", mmap_mode="r")
        self.pair_length = np.load(self.dir / "pair_length.npy", mmap_mode="r")
        self.pair_group = np.load(self.dir / "pair_group.npy", mmap_mode="r")
        self.student_source = TokenColumn(self._files("source_tokens"), "student_ids")
        self.teacher_source = TokenColumn(self._files("source_tokens"), "teacher_ids")
        self.student_target = TokenColumn(self._files("target_tokens"), "target_ids")

    def __getstate__(self):
        state = dict(self.__dict__)
        for name in ("pair_source", "pair_length", "pair_group"):
            state[name] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name in ("pair_source", "pair_length", "pair_group"):
            setattr(self, name, np.load(self.dir / f"{name}.npy", mmap_mode="r"))

    def _files(self, stem: str) -> list[Path]:
        return [self.dir / name for name in self.meta["files"][stem]]

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def num_pairs(self) -> int:
        return int(self.meta["num_pairs"])

    @property
    def num_sources(self) -> int:
        return int(self.meta["num_sources"])

    @property
    def groups(self) -> list[dict]:
        """One entry per (corpus, language): `corpus` (index in data.corpora), `lang`, `rows`."""
        return self.meta["groups"]

    @property
    def skipped(self) -> Counter:
        return Counter(self.meta["skipped"])

    def group_rows(self, group: int) -> np.ndarray:
        """Pair rows of one group, in file order."""
        return np.flatnonzero(np.asarray(self.pair_group) == group).astype(self.pair_source.dtype)

    def source_length(self, which: str = "teacher") -> np.ndarray:
        return np.load(self.dir / f"source_{which}_len.npy", mmap_mode="r")

    def source_texts(self, rows: np.ndarray | None = None) -> list[str]:
        """English sentences by source row (for inspection and tests; training never needs the text)."""
        table = pa.ipc.open_stream(pa.memory_map(str(self.dir / "sources.arrow"))).read_all()
        column = table.column("text")
        return (column if rows is None else column.take(pa.array(np.asarray(rows, dtype=np.int64)))).to_pylist()


# ------------------------------------------------------------------------------------------ building
def open_or_build(specs: list[CorpusSpec], languages: list[str], student: Tokenization, teacher: Tokenization,
                  cache_dir: str | Path, num_proc: int = 1, accelerator=None) -> CorpusStore:
    """The store for these corpora and tokenizers: built by one process on first use, opened by all."""
    from altclip_train.assets import build_once

    directory = store_dir(cache_dir, specs, languages, student, teacher)
    key = directory.name

    def build(staging: Path) -> None:
        build_store(specs, languages, student, teacher, staging, key, num_proc)

    def ready() -> None:
        if (directory / "meta.json").is_file():
            log.info("phase-1 corpus: reusing the tokenised store %s", directory)
        else:
            build_once(directory, directory / "meta.json", build)
            log.info("phase-1 corpus: tokenised store written to %s", directory)

    if accelerator is not None and accelerator.num_processes > 1:
        with accelerator.main_process_first():
            ready()
    else:
        ready()
    store = CorpusStore(directory)
    if accelerator is None or accelerator.process_index == 0:
        from altclip_train.data.coverage import log_report, store_coverage

        log_report(store_coverage(store, student.tokenizer), getattr(student.tokenizer, "name_or_path", "student"),
                   exact_unk=True)
    return store


def build_store(specs: list[CorpusSpec], languages: list[str], student: Tokenization, teacher: Tokenization,
                directory: Path, key: str, num_proc: int = 1) -> None:
    """Read, deduplicate and tokenise the corpora into the empty `directory` (`assets.build_once` stages it
    and renames it into place, so a kill mid-build leaves no entry behind)."""
    staging = directory
    staging.mkdir(parents=True, exist_ok=True)
    datasets_cache = str(directory.parent.parent / "datasets")
    timings: dict[str, float] = {}

    # ---- read: every corpus, in order, into one Arrow file of clean pairs
    started = time.perf_counter()
    skipped: Counter = Counter()
    groups: list[dict] = []
    group_ids: list[np.ndarray] = []
    from tqdm.auto import tqdm

    with pa.OSFile(str(staging / "text.arrow"), "wb") as sink, pa.ipc.new_stream(sink, PAIR_SCHEMA) as writer, \
            tqdm(desc="reading corpora", unit=" pairs", unit_scale=True, dynamic_ncols=True, disable=None) as progress:
        for index, spec in enumerate(specs):
            counts: Counter = Counter()
            group_of_lang: dict[str, int] = {}
            for batch in iter_pairs(spec, languages, counts, datasets_cache):
                langs = batch.column(2)
                codes = np.full(batch.num_rows, -1, dtype=np.int32)
                for lang in pc.unique(langs).to_pylist():
                    if lang not in group_of_lang:
                        group_of_lang[lang] = len(groups)
                        groups.append({"corpus": index, "lang": lang, "rows": 0, "name": spec.name})
                    mask = pc.equal(langs, lang).to_numpy(zero_copy_only=False)
                    codes[mask] = group_of_lang[lang]
                    groups[group_of_lang[lang]]["rows"] += int(mask.sum())
                group_ids.append(codes.astype(np.int16))
                writer.write_batch(batch)
                progress.update(batch.num_rows)
            skipped.update(counts)
    timings["read_s"] = time.perf_counter() - started

    # ---- deduplicate the English side (Arrow hash table, no Python strings)
    started = time.perf_counter()
    text = pa.ipc.open_stream(pa.memory_map(str(staging / "text.arrow"))).read_all()
    num_pairs = text.num_rows
    index_type = np.int32 if num_pairs < 2**31 - 1 else np.int64
    english = text.column("en")
    uniques = pc.unique(english)
    pair_source = pc.index_in(english, value_set=uniques).to_numpy(zero_copy_only=False).astype(index_type)
    with pa.OSFile(str(staging / "sources.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, pa.schema([("text", pa.string())])) as writer:
        for start in range(0, len(uniques), 1 << 16):
            writer.write_batch(pa.record_batch([uniques.slice(start, 1 << 16)], names=["text"]))
    num_sources = len(uniques)
    del uniques, english, text
    timings["dedup_s"] = time.perf_counter() - started

    # ---- tokenise once, with datasets' batched map over num_proc processes
    started = time.perf_counter()
    source_files = _tokenize_file(staging / "sources.arrow", staging, "source_tokens", num_proc, [
        ("student", "text", student, True), ("teacher", "text", teacher, False)])
    target_files = _tokenize_file(staging / "text.arrow", staging, "target_tokens", num_proc, [
        ("target", "target", student, True)])
    timings["tokenize_s"] = time.perf_counter() - started

    # ---- plan columns, as memory-mappable numpy
    student_len = _numeric(staging, source_files, "student_len")
    target_len = _numeric(staging, target_files, "target_len")
    np.save(staging / "source_student_len.npy", student_len)
    np.save(staging / "source_teacher_len.npy", _numeric(staging, source_files, "teacher_len"))
    np.save(staging / "pair_source.npy", pair_source)
    np.save(staging / "pair_length.npy", np.maximum(student_len[pair_source], target_len).astype(np.int32))
    pair_group = np.concatenate(group_ids) if group_ids else np.zeros(0, dtype=np.int16)
    np.save(staging / "pair_group.npy", pair_group)

    # ---- <unk> rates per language, in the student tokenizer
    # Warned about by the coverage report that every start logs (open_or_build), not only the first build.
    unk_rates = _unk_rates(staging, source_files, target_files, pair_group, groups)
    meta = {"key": key, "version": STORE_VERSION, "num_pairs": int(num_pairs), "num_sources": int(num_sources),
            "groups": groups, "skipped": dict(skipped), "unk_rates": unk_rates,
            "files": {"source_tokens": source_files, "target_tokens": target_files},
            "max_length": {"student": student.max_length, "teacher": teacher.max_length},
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "corpora": [spec.name for spec in specs]}
    (staging / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    log.info("phase-1 corpus: %d pairs (%d unique English) read and tokenised in %.1f s (read %.1f s, "
             "tokenise %.1f s)", num_pairs, num_sources, sum(timings.values()),
             timings["read_s"], timings["tokenize_s"])


def _tokenize_file(source: Path, staging: Path, stem: str, num_proc: int, sides: list) -> list[str]:
    """Tokenise the text columns of an Arrow file with `Dataset.map`; returns the output file names."""
    import datasets

    dataset = datasets.Dataset.from_file(str(source))
    procs = max(1, min(int(num_proc), len(dataset) // MIN_ROWS_PER_PROC or 1))
    features = {}
    for prefix, _, _, count_unk in sides:
        features[f"{prefix}_ids"] = datasets.List(datasets.Value("int32"))
        features[f"{prefix}_len"] = datasets.Value("int32")
        if count_unk:
            features[f"{prefix}_unk"] = datasets.Value("int32")
            features[f"{prefix}_plain"] = datasets.Value("int32")
    if procs > 1:
        # Forked workers must not inherit a Rust thread pool that the parent already used.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    mapped = dataset.with_format("arrow").map(
        tokenize_batch, batched=True, batch_size=10_000, writer_batch_size=10_000, num_proc=procs,
        fn_kwargs={"sides": sides}, remove_columns=dataset.column_names, features=datasets.Features(features),
        cache_file_name=str(staging / f"{stem}.arrow"), new_fingerprint=f"{stem}-{staging.name.strip('.')[:24]}",
        desc=f"tokenising {stem.split('_')[0]}s")
    names = [Path(entry["filename"]).name for entry in mapped.cache_files]
    for path in staging.glob("cache-*.arrow"):  # datasets' own copy of the unmapped input, if any
        path.unlink()
    return names


def tokenize_batch(batch: pa.Table, sides: list) -> pa.Table:
    """One `Dataset.map` batch: token ids as int32 list arrays, built from numpy rather than lists of lists."""
    columns = {}
    for prefix, text_column, side, count_unk in sides:
        texts = batch.column(text_column).to_pylist()
        ids = side.encode(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
        columns[f"{prefix}_ids"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        columns[f"{prefix}_len"] = pa.array(lengths)
        if count_unk:
            # Counted as models.student.unk_rate defines it: <unk> among the tokens that are not special.
            unk_id = side.tokenizer.unk_token_id
            special = np.asarray(sorted(set(side.tokenizer.all_special_ids) - {unk_id}), dtype=np.int32)
            owner = np.repeat(np.arange(len(ids)), lengths)
            hits = (flat == unk_id) if unk_id is not None else np.zeros(len(flat), dtype=bool)
            plain = ~np.isin(flat, special)
            columns[f"{prefix}_unk"] = pa.array(np.bincount(owner, weights=hits, minlength=len(ids)).astype(np.int32))
            columns[f"{prefix}_plain"] = pa.array(np.bincount(owner, weights=plain, minlength=len(ids)).astype(np.int32))
    return pa.table(columns)


def _numeric(staging: Path, files: list[str], column: str) -> np.ndarray:
    parts = []
    for name in files:
        table = pa.ipc.open_stream(pa.memory_map(str(staging / name))).read_all()
        parts.append(table.column(column).to_numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def _unk_rates(staging: Path, source_files, target_files, pair_group, groups) -> dict:
    """Share of <unk> among each language's student tokens (English from the sources, others from targets)."""
    rates = {}
    source_unk = _numeric(staging, source_files, "student_unk")
    if len(source_unk):
        rates["en"] = float(source_unk.sum() / max(int(_numeric(staging, source_files, "student_plain").sum()), 1))
    target_unk = _numeric(staging, target_files, "target_unk")
    target_plain = _numeric(staging, target_files, "target_plain")
    langs = sorted({group["lang"] for group in groups})
    lang_of_group = np.array([langs.index(group["lang"]) for group in groups] or [0])
    if len(pair_group):
        pair_lang = lang_of_group[pair_group]
        unk = np.bincount(pair_lang, weights=target_unk, minlength=len(langs))
        tokens = np.bincount(pair_lang, weights=target_plain, minlength=len(langs))
        for code, lang in enumerate(langs):
            if lang != "en" and tokens[code]:
                rates[lang] = float(unk[code] / tokens[code])
    return rates
