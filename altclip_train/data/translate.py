"""`altclip-train translate`: parallel data for new languages, machine-translated from English with any
transformers sequence-to-sequence model (NLLB, M2M100, Marian), written as Moses pairs `data.corpora` reads.

    altclip-train translate captions.txt out/ --model facebook/nllb-200-distilled-600M --to hin_Deva,swh_Latn
    altclip-train translate pairs.tsv out/ --column en --model facebook/m2m100_418M --to hi,sw
    altclip-train translate --hub HuggingFaceM4/COCO --column sentences.raw out/ --model Helsinki-NLP/opus-mt-en-hi --lang hi
    accelerate launch -m altclip_train translate captions.txt out/ --model ... --to ...   # every rank a share

What it does, in order:
1. **Read** the English side (a text file, one sentence per line; a TSV/CSV/JSONL/Parquet column; or a hub
   dataset's column) with `data/corpora.py`'s readers, so a missing file, an unknown column or a line that is
   not UTF-8 stops with the same one-line errors as a phase-1 corpus. Line breaks inside a sentence become
   spaces (a Moses file is one sentence per line); sentences are trimmed; blank ones are counted and dropped.
2. **Deduplicate** exactly (after trimming), keeping first occurrences in input order, and **sort** the
   unique sentences by length (characters: a close proxy for tokens that needs no pass of the tokenizer).
   This plan is written once under `OUT/.work/plan-<key>/` (Arrow + numpy, memory-mapped by every rank).
3. **Translate** in chunks of `--chunk-size` consecutive sentences of the sorted plan, each chunk in batches
   of `--batch-size`, with the model's own `generate` (`--num-beams`, `--max-new-tokens` or `--max-length`,
   no sampling; NLLB/M2M100 get the target language as the forced first token). Chunks are entries of the
   project's cache-entry scheme (`data/cache_entry.py`): one per language under `OUT/.work/<lang>/`, one
   Arrow file per chunk, a checksummed marker once it is on disk. Under `accelerate launch` the ranks take
   disjoint chunks; a killed run loses at most the chunk each rank was writing, and a rerun computes only the
   missing ones. The chunking and batches are fixed by the layout, so the output is byte-identical however
   often it was interrupted and however many ranks ran it.
4. **Assemble** (rank 0): `OUT/<lang>/corpus.en` and `OUT/<lang>/corpus.<lang>`, line i translating line i,
   in input order. Outputs that are empty, or that hit the token limit without an end-of-sequence (a
   truncated translation), and sources longer than the model reads (`--max-source-tokens`) are not written:
   they are counted in `OUT/manifest.json` and listed in `OUT/<lang>/skipped.tsv`. The manifest also records
   the model's identity, the languages, the counts and the generation settings; a ready-to-paste
   `data.corpora` entry is printed at the end.

Language names: `--to` takes the model's own codes (`hin_Deva` for NLLB, `hi` for M2M100); the output dir
and the corpus's `lang` use ISO 639-1 (`hi`, see `data/languages.py`), or the name after `=`
(`--to ace_Latn=ace`). A Marian pair has no language tokens: leave `--to` out and name it with `--lang`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from altclip_train.data.cache_entry import (
    CacheEntry,
    Region,
    hash_bytes,
    ranks_of,
    wait_for_everyone,
)
from altclip_train.data.corpora import (
    FORMATS,
    CorpusSpec,
    _column,
    _read_lines,
    _table_batches,
)
from altclip_train.data.languages import iso_code, nllb_code

log = logging.getLogger(__name__)

FORMAT = "altclip-translate-v1"
STATUSES = ("ok", "empty_output", "max_new_tokens", "source_too_long")
OK, EMPTY, TOO_LONG_OUTPUT, TOO_LONG_SOURCE = range(len(STATUSES))
# Anything Python or a reader might treat as a line end: a Moses file must stay one sentence per line.
_LINE_BREAKS = "[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+"
_BLOCK = 65_536
PART_SCHEMA = pa.schema([("row", pa.int64()), ("target", pa.string()), ("status", pa.int8())])


# --------------------------------------------------------------------------------------------- input
@dataclass(frozen=True)
class EnglishInput:
    """Where the English sentences come from: a local file (text or table) or a hub dataset."""

    path: str | None = None
    hub: str | None = None
    subset: str | None = None
    split: str = "train"
    column: str = "en"
    format: str | None = None
    max_rows: int | None = None

    @property
    def name(self) -> str:
        return self.path or f"{self.hub}:{self.subset or ''}:{self.split}"

    @property
    def kind(self) -> str:
        if self.hub:
            return "hub"
        return self.format or FORMATS.get(Path(self.path).suffix.lower(), "text")

    def check(self) -> None:
        if self.path is not None and not Path(self.path).is_file():
            raise FileNotFoundError(f"translate input not found: {self.path}")
        if self.kind not in ("text", "hub", *FORMATS.values()):
            raise ValueError(f"--format {self.kind}: choose text, tsv, csv, json or parquet")

    def identity(self) -> dict:
        """What the sentences depend on: the options and, for a file, its resolved path, size and mtime."""
        self.check()
        ident = {"input": asdict(self), "kind": self.kind}
        if self.path:
            stat = Path(self.path).stat()
            ident["file"] = [str(Path(self.path).resolve()), stat.st_size, stat.st_mtime_ns]
        return ident


def english_blocks(source: EnglishInput, datasets_cache: str | None = None) -> Iterator[pa.Array]:
    """The raw English column in blocks, through the phase-1 corpus readers (and their one-line errors)."""
    source.check()
    left = source.max_rows
    if source.kind == "text":
        blocks = (pa.array(lines, pa.string()) for lines in _read_lines(Path(source.path)))
    else:
        spec = CorpusSpec(lang="en", path=source.path, hub=source.hub, subset=source.subset, split=source.split,
                          format=None if source.kind == "hub" else source.kind)
        blocks = _columns(_table_batches(spec, datasets_cache), source)
    for block in blocks:
        if left is not None:
            block = block.slice(0, left)
            left -= len(block)
        yield block
        if left is not None and left <= 0:
            return


def _columns(batches: Iterator[pa.RecordBatch], source: EnglishInput) -> Iterator[pa.Array]:
    for batch in batches:
        names = batch.schema.names
        if source.column.partition(".")[0] not in names:
            raise ValueError(f"{source.name}: unknown column '{source.column}' (columns: {', '.join(names)}); "
                             f"name the English one with --column")
        yield _column(batch, source.column)


def normalise(texts: pa.Array) -> pa.Array:
    """One line per sentence, trimmed: line breaks inside become spaces, a leading BOM goes."""
    texts = pc.fill_null(texts.cast(pa.string()), "")
    texts = pc.replace_substring_regex(texts, _LINE_BREAKS, " ")
    texts = pc.replace_substring_regex(texts, "^\ufeff+", "")
    return pc.utf8_trim_whitespace(texts)


# --------------------------------------------------------------------------------------------- plan
class Plan:
    """The unique English sentences (first-occurrence order) and their order by length, memory-mapped."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        self.sources = pa.ipc.open_file(pa.memory_map(str(self.dir / "sources.arrow"))).read_all().column("text")
        self.order = np.load(self.dir / "order.npy", mmap_mode="r")

    @property
    def key(self) -> str:
        return self.meta["key"]

    def __len__(self) -> int:
        return int(self.meta["unique"])


def plan_key(source: EnglishInput) -> str:
    payload = {"format": FORMAT, "source": source.identity()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_plan(source: EnglishInput, staging: Path, key: str, datasets_cache: str | None) -> None:
    """Read, normalise, deduplicate and length-sort the English side into `staging` (see `open_plan`)."""
    counts = Counter()
    with pa.OSFile(str(staging / "english.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, pa.schema([("text", pa.string())])) as writer:
        for block in english_blocks(source, datasets_cache):
            counts["rows_read"] += len(block)
            text = normalise(block)
            usable = pc.greater(pc.binary_length(text), 0)
            counts["empty_source"] += len(text) - (pc.sum(usable).as_py() or 0)
            writer.write_batch(pa.record_batch([pc.filter(text, usable)], names=["text"]))
    english = pa.ipc.open_stream(pa.memory_map(str(staging / "english.arrow"))).read_all().column("text")
    # Arrow's hash table keeps first occurrences in input order, and holds no Python strings.
    uniques = pc.unique(english) if len(english) else pa.array([], pa.string())
    counts["duplicates"] = len(english) - len(uniques)
    del english
    (staging / "english.arrow").unlink()
    with pa.OSFile(str(staging / "sources.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, pa.schema([("text", pa.string())])) as writer:
        for start in range(0, len(uniques), _BLOCK):
            writer.write_batch(pa.record_batch([uniques.slice(start, _BLOCK)], names=["text"]))
    lengths = pc.utf8_length(uniques).to_numpy(zero_copy_only=False) if len(uniques) else np.zeros(0, np.int32)
    np.save(staging / "order.npy", np.argsort(lengths, kind="stable").astype(np.int64))
    meta = {"key": key, "format": FORMAT, "source": source.identity(), "unique": len(uniques), **counts}
    (staging / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))


def open_plan(source: EnglishInput, out_dir: Path, accelerator=None, datasets_cache: str | None = None) -> Plan:
    """The plan for this input: built by one process on first use (staged, then renamed), opened by all."""
    from altclip_train.assets import build_once

    key = plan_key(source)
    directory = out_dir / ".work" / f"plan-{key}"

    def ready() -> None:
        build_once(directory, directory / "meta.json", lambda staging: build_plan(source, staging, key, datasets_cache))

    if accelerator is not None and accelerator.num_processes > 1:
        with accelerator.main_process_first():
            ready()
    else:
        ready()
    return Plan(directory)


# --------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Generation:
    """The settings every output depends on (all part of each language entry's layout)."""

    num_beams: int = 4
    max_new_tokens: int | None = 256
    max_length: int | None = None
    batch_size: int = 32
    chunk_size: int = 1024
    max_source_tokens: int | None = None
    dtype: str = "float32"

    def check(self) -> None:
        for name in ("num_beams", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_length is not None:
            raise ValueError("give --max-new-tokens or --max-length, not both")
        if (self.max_new_tokens or self.max_length or 1) < 1:
            raise ValueError("--max-new-tokens / --max-length must be at least 1")


DTYPES = ("float32", "bfloat16", "float16")


class Translator:
    """One seq2seq checkpoint: its tokenizer at once (to check language codes before any work starts),
    its weights only when a chunk needs them (a finished run never loads the model)."""

    def __init__(self, name: str, device: str | None = None, dtype: str = "float32",
                 trust_remote_code: bool = False, source_lang: str = "en"):
        from transformers import AutoConfig, AutoTokenizer

        from altclip_train.logging_setup import transformers_errors_only

        self.name, self.dtype, self.trust_remote_code = name, dtype, trust_remote_code
        try:
            with transformers_errors_only():
                self.config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
                self.tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        except OSError as error:
            raise ValueError(f"--model {name}: cannot load it ({str(error).strip().splitlines()[0]})") from None
        if not getattr(self.config, "is_encoder_decoder", False):
            raise ValueError(f"--model {name} is a '{self.config.model_type}' model, not an encoder-decoder "
                             f"translation model (NLLB, M2M100, Marian, ...)")
        self.device = device
        self._model = None
        self.generation_defaults = _generation_defaults(name, self.config, trust_remote_code)
        self._vocab = self.tokenizer.get_vocab()
        self.language_ids = self._language_token_ids()
        self.source_code = None
        if self.language_ids:
            self.source_code, _ = self.language_token(source_lang, "--from")
            self.tokenizer.src_lang = self.source_code
        self._drop_ids = set(self.tokenizer.all_special_ids) | set(self.language_ids.values())

    # ------------------------------------------------------------ language codes
    def _language_token_ids(self) -> dict[str, int]:
        """Token id of each target-language code the tokenizer knows (empty for a Marian pair)."""
        m2m = getattr(self.tokenizer, "lang_code_to_id", None)
        if isinstance(m2m, dict) and m2m:
            return dict(m2m)
        from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

        codes = {token for token in self._vocab if re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", token)}
        codes |= {code for code in FAIRSEQ_LANGUAGE_CODES if code in self._vocab}
        return {code: self._vocab[code] for code in sorted(codes)}

    def language_token(self, code: str, option: str = "--to") -> tuple[str, int]:
        """(the tokenizer's own code, its token id) for `code`, which may also be the ISO name of an NLLB code."""
        if not self.language_ids:
            raise ValueError(f"{option} {code}: {self.name} has no language tokens (a one-pair model such as "
                             f"Marian); leave out --to and name the output language with --lang")
        for candidate in (code, nllb_code(code)):
            if candidate in self.language_ids:
                return candidate, self.language_ids[candidate]
        known = sorted(self.language_ids)
        close = [c for c in known if c.lower().startswith(code.lower()[:2])][:5]
        raise ValueError(f"{option} {code}: not a language code of {self.name}'s tokenizer "
                         f"({len(known)} codes, e.g. {', '.join(close or known[:5])})")

    def identity(self) -> dict:
        """The checkpoint as far as outputs depend on it: name, type, config, and each weight file's stat."""
        ident = {"name": self.name, "model_type": self.config.model_type,
                 "config_sha256": hashlib.sha256(self.config.to_json_string(use_diff=False).encode()).hexdigest(),
                 "tokenizer": type(self.tokenizer).__name__, "commit": getattr(self.config, "_commit_hash", None)}
        path = Path(self.name)
        if path.is_dir():
            ident["files"] = sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in path.iterdir()
                                    if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".model", ".spm"))
        return ident

    def max_source_tokens(self, asked: int | None) -> int:
        """Longest source (special tokens included) the model reads whole: the smaller of what the tokenizer
        and the position table allow, unless asked for less."""
        limits = [asked] if asked else []
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            limits.append(limit)
        positions = getattr(self.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        return min(limits) if limits else 1024

    # ------------------------------------------------------------ generation
    @property
    def model(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForSeq2SeqLM

            from altclip_train.logging_setup import transformers_errors_only

            with transformers_errors_only():
                model = AutoModelForSeq2SeqLM.from_pretrained(self.name, dtype=getattr(torch, self.dtype),
                                                              trust_remote_code=self.trust_remote_code)
            # generate() fills options left at None from the model's own config, so a forced ending (see
            # generation_config) is switched off there.
            model.generation_config.forced_eos_token_id = None
            self._model = model.to(self.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        return self._model

    def generation_config(self, settings: Generation, forced_bos: int | None):
        """The model's own generation defaults, with our beams, length limit and target language on top.

        A forced end-of-sequence (Marian's configs set one) is switched off: it would stamp an ending onto an
        output cut at the length limit, and a truncated translation must be recognisable to be skipped.
        """
        import copy

        config = copy.deepcopy(self.generation_defaults)
        config.update(num_beams=settings.num_beams, do_sample=False, num_return_sequences=1,
                      forced_bos_token_id=forced_bos, forced_eos_token_id=None)
        if settings.max_length is not None:
            config.update(max_length=settings.max_length, max_new_tokens=None)
        else:
            config.update(max_new_tokens=settings.max_new_tokens)
        return config

    def translate(self, texts: list[str], config, max_source: int) -> tuple[list[str], list[int]]:
        """Outputs and statuses of one batch; a source too long for the model is not translated."""
        import torch

        ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        outputs, statuses = [""] * len(texts), [TOO_LONG_SOURCE] * len(texts)
        keep = [i for i, row in enumerate(ids) if len(row) <= max_source]
        if not keep:
            return outputs, statuses
        batch = self.tokenizer.pad({"input_ids": [ids[i] for i in keep]}, return_tensors="pt")
        device = self.model.device
        with torch.inference_mode():
            sequences = self.model.generate(input_ids=batch["input_ids"].to(device),
                                            attention_mask=batch["attention_mask"].to(device),
                                            generation_config=config).cpu().tolist()
        eos = config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        for i, row in zip(keep, sequences):
            generated = row[1:]  # past the decoder start token
            finished = any(token in eos for token in generated)
            outputs[i] = self.tokenizer.decode([t for t in generated if t not in self._drop_ids],
                                               skip_special_tokens=True)
            statuses[i] = OK if finished else TOO_LONG_OUTPUT
        return outputs, statuses


def _generation_defaults(name: str, config, trust_remote_code: bool):
    """The checkpoint's generation_config.json (or what transformers derives from its config), read without
    loading the weights, so the manifest can record it whether or not this rank translated anything."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError:
        return GenerationConfig.from_model_config(config)


# --------------------------------------------------------------------------------------------- chunks
@dataclass(frozen=True)
class Target:
    """One output language: the tokenizer's code (None for a Marian pair) and the corpus's name for it."""

    code: str | None
    lang: str


def parse_targets(to: str | None, lang: str | None) -> list[Target]:
    if not to:
        if not lang:
            raise ValueError("name the target languages with --to (NLLB/M2M100 codes), or, for a one-pair model "
                             "such as Marian, the output language with --lang")
        return [Target(None, lang)]
    targets = []
    for item in (part.strip() for part in to.split(",")):
        if not item:
            continue
        code, _, name = item.partition("=")
        targets.append(Target(code.strip(), (name.strip() or iso_code(code.strip()))))
    names = [t.lang for t in targets]
    if lang and len(targets) == 1:
        targets = [Target(targets[0].code, lang)]
    elif lang:
        raise ValueError("--lang names one output language; with several --to codes use --to CODE=NAME,...")
    if len(set(names)) != len(names):
        raise ValueError(f"--to names one output language twice ({', '.join(names)})")
    for target in targets:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", target.lang) or target.lang == "en":
            raise ValueError(f"--to {target.code}: '{target.lang}' cannot name an output language (letters, digits, "
                             f"'_' and '-', not en); rename it with CODE=NAME")
    return targets


class LanguageEntry:
    """The chunked translations of the plan into one language: a `CacheEntry` whose chunk c holds plan
    positions [c * chunk_size, (c + 1) * chunk_size) as `part-NNNNNN.arrow` (row, target, status)."""

    def __init__(self, out_dir: Path, plan: Plan, target: Target, translator: Translator, settings: Generation):
        self.plan, self.target, self.translator, self.settings = plan, target, translator, settings
        self.forced_bos = translator.language_token(target.code)[1] if target.code else None
        self.max_source = translator.max_source_tokens(settings.max_source_tokens)
        self.description = {
            "format": FORMAT, "plan": plan.key, "unique": len(plan), "target": asdict(target),
            "source_code": translator.source_code, "model": translator.identity(),
            "settings": {**asdict(settings), "max_source_tokens": self.max_source}}
        num_chunks = -(-len(plan) // settings.chunk_size)
        self.entry = CacheEntry(out_dir / ".work" / target.lang, num_chunks, self.description)
        self._config = None

    def part_name(self, chunk: int) -> str:
        return f"part-{chunk:06d}.arrow"

    def chunk_rows(self, chunk: int) -> np.ndarray:
        size = self.settings.chunk_size
        return np.asarray(self.plan.order[chunk * size:(chunk + 1) * size], dtype=np.int64)

    def write_chunk(self, chunk: int):
        if self._config is None:
            self._config = self.translator.generation_config(self.settings, self.forced_bos)
        rows = self.chunk_rows(chunk)
        texts = self.plan.sources.take(pa.array(rows)).to_pylist()
        outputs, statuses = [], []
        size = self.settings.batch_size
        for start in range(0, len(texts), size):
            out, status = self.translator.translate(texts[start:start + size], self._config, self.max_source)
            outputs += out
            statuses += status
        targets = normalise(pa.array(outputs, pa.string()))
        statuses = np.asarray(statuses, dtype=np.int8)
        blank = (pc.binary_length(targets).to_numpy(zero_copy_only=False) == 0) & (statuses == OK)
        statuses[blank] = EMPTY
        table = pa.table([pa.array(rows), targets, pa.array(statuses)], schema=PART_SCHEMA)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, PART_SCHEMA) as writer:
            writer.write_table(table)
        data = sink.getvalue().to_pybytes()
        path = self.entry.dir / self.part_name(chunk)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return [(Region(self.part_name(chunk), 0, len(data)), hash_bytes(data))]

    def build(self, accelerator=None, verify: str = "stat") -> None:
        self.entry.build(self.write_chunk, accelerator, verify=verify, progress_unit="sent",
                         chunk_size=lambda c: len(self.chunk_rows(c)), desc=f"translating {self.target.lang}")

    def assemble(self, out_dir: Path) -> dict:
        """Write the Moses pair and skipped.tsv in input order (rank 0, entry complete); returns the counts."""
        lang = self.target.lang
        folder = out_dir / lang
        folder.mkdir(parents=True, exist_ok=True)
        parts = [pa.ipc.open_file(pa.memory_map(str(self.entry.dir / self.part_name(c)))).read_all()
                 for c in range(self.entry.num_chunks)]
        table = pa.concat_tables(parts) if parts else PART_SCHEMA.empty_table()
        n = len(self.plan)
        where = np.empty(n, dtype=np.int64)  # plan row -> position in the concatenated parts
        where[table.column("row").to_numpy()] = np.arange(n)
        status = table.column("status").to_numpy()
        outputs = table.column("target")
        counts = Counter()
        files = {"source": folder / "corpus.en", "target": folder / f"corpus.{lang}", "skipped": folder / "skipped.tsv"}
        staged = {key: path.with_name(f".{path.name}.{os.getpid()}.tmp") for key, path in files.items()}
        with open(staged["source"], "wb") as en, open(staged["target"], "wb") as tgt, \
                open(staged["skipped"], "wb") as skipped:
            skipped.write(b"reason\tenglish\toutput\n")
            for start in range(0, n, _BLOCK):
                at = where[start:start + _BLOCK]
                block_status = status[at]
                english = self.plan.sources.slice(start, len(at))
                translated = outputs.take(pa.array(at))
                keep = pa.array(block_status == OK)
                counts.update({STATUSES[s]: int(c) for s, c in zip(*np.unique(block_status, return_counts=True))})
                if pc.sum(keep).as_py():
                    en.write(_lines(pc.filter(english, keep)))
                    tgt.write(_lines(pc.filter(translated, keep)))
                for row in np.flatnonzero(block_status != OK).tolist():
                    fields = [STATUSES[block_status[row]], english[row].as_py(), translated[row].as_py()]
                    skipped.write(("\t".join(f.replace("\t", " ") for f in fields) + "\n").encode("utf-8"))
            for handle in (en, tgt, skipped):
                handle.flush()
                os.fsync(handle.fileno())
        pairs = counts.pop("ok", 0)
        for key, path in files.items():
            if pairs or key == "skipped":
                os.replace(staged[key], path)
            else:  # no corpus is better than an empty one that stops phase 1 later
                staged[key].unlink()
                path.unlink(missing_ok=True)
        return {"pairs": pairs, "skipped": {reason: counts.get(reason, 0) for reason in STATUSES[1:]},
                "source_path": str(files["source"].resolve()) if pairs else None,
                "target_path": str(files["target"].resolve()) if pairs else None,
                "skipped_path": str(files["skipped"].resolve())}


def _lines(texts: pa.Array) -> bytes:
    return ("\n".join(texts.to_pylist()) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------- run
def translate(source: EnglishInput, out_dir: str | Path, model: str, targets: list[Target],
              settings: Generation = Generation(), source_lang: str = "en", device: str | None = None,
              accelerator=None, trust_remote_code: bool = False, verify: str = "stat") -> dict:
    """Translate the English input into every target; returns the manifest (written by rank 0)."""
    out_dir = Path(out_dir)
    settings.check()
    if settings.dtype not in DTYPES:
        raise ValueError(f"--dtype {settings.dtype}: choose one of {', '.join(DTYPES)}")
    # Everything that can be wrong with the input or the codes is found before any bar or chunk starts.
    source.check()
    if device is None and accelerator is not None:
        device = str(accelerator.device)
    translator = Translator(model, device, settings.dtype, trust_remote_code, source_lang)
    for target in targets:
        if target.code:
            translator.language_token(target.code)
        elif translator.language_ids:
            raise ValueError(f"{model} is a many-language model: name the target languages with --to "
                             f"(e.g. --to {', '.join(sorted(translator.language_ids)[:3])})")
    from altclip_train.assets import cache_root

    plan = open_plan(source, out_dir, accelerator, str(cache_root() / "datasets"))
    if not len(plan):
        raise ValueError(f"{source.name}: no English sentences to translate ({plan.meta['rows_read']} rows read, "
                         f"{plan.meta['empty_source']} blank)")
    rank, world = ranks_of(accelerator)
    languages, reports = {}, {}
    for target in targets:
        entry = LanguageEntry(out_dir, plan, target, translator, settings)
        entry.build(accelerator, verify)
        report = entry.entry.report
        reports[target.lang] = asdict(report)
        log.info("%s: translated %d of %d chunks on this rank (%d of %d); %d were done already", target.lang,
                 report.chunks_built, entry.entry.num_chunks, rank, world, report.chunks_reused)
        if rank == 0:
            languages[target.lang] = {
                "code": target.code, **entry.assemble(out_dir), "chunks": entry.entry.num_chunks,
                "model": entry.description["model"], "source_code": translator.source_code,
                "generation": {**entry.description["settings"],
                               "generate": translator.generation_config(settings, entry.forced_bos).to_diff_dict()}}
        wait_for_everyone(accelerator)
    manifest = {"format": FORMAT, "english": {k: plan.meta[k] for k in ("rows_read", "empty_source", "duplicates",
                                                                        "unique")},
                "input": plan.meta["source"], "model": translator.identity(), "languages": languages,
                "build": reports}
    if rank == 0:
        _write_manifest(out_dir, manifest)
    return manifest


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    """OUT/manifest.json; languages an earlier run wrote into OUT (another --to) are kept beside these."""
    from altclip_train.data.cache_entry import write_json_atomic

    path = out_dir / "manifest.json"
    try:
        previous = json.loads(path.read_text()).get("languages", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    merged = {**{k: v for k, v in previous.items() if k not in manifest["languages"]}, **manifest["languages"]}
    write_json_atomic(path, {**{k: v for k, v in manifest.items() if k != "build"}, "languages": merged})


def summary(manifest: dict, out_dir: Path) -> str:
    """What a run prints at the end: counts per language and the `data.corpora` entry to paste."""
    english = manifest["english"]
    lines = [f"translated {english['unique']} unique English sentences ({english['rows_read']} rows read, "
             f"{english['empty_source']} blank, {english['duplicates']} duplicates) with {manifest['model']['name']}"]
    usable = {}
    for lang, entry in manifest["languages"].items():
        skipped = ", ".join(f"{reason}={count}" for reason, count in entry["skipped"].items() if count) or "none"
        written = f"-> {entry['target_path']}" if entry["pairs"] else "(nothing written)"
        lines.append(f"  {lang:<8} {entry['pairs']} pairs {written}; skipped: {skipped}")
        if entry["pairs"]:
            usable[lang] = entry
    lines.append(f"manifest: {out_dir / 'manifest.json'}; skipped sentences are listed in <lang>/skipped.tsv")
    if usable:
        # JSON strings are YAML strings too, so a path with spaces or colons pastes safely.
        entries = [f"{{lang: {lang}, source_path: {json.dumps(e['source_path'])}, "
                   f"target_path: {json.dumps(e['target_path'])}}}" for lang, e in usable.items()]
        lines += ["", f"data.corpora entries (add {', '.join(usable)} to data.languages too):", "data:", "  corpora:"]
        lines += [f"    - {entry}" for entry in entries]
        lines += ["", f"or as an override: 'data.corpora=[{', '.join(entries)}]'"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="altclip-train translate",
        description="Machine-translate English sentences into new languages: Moses pairs for data.corpora, "
                    "resumable, sharded over the ranks of `accelerate launch`.")
    parser.add_argument("input", nargs="?", help="English sentences: a text file (one per line) or a "
                        "TSV/CSV/JSONL/Parquet file (see --column); leave out with --hub")
    parser.add_argument("output_dir", help="writes <lang>/corpus.en, <lang>/corpus.<lang>, manifest.json, .work/")
    parser.add_argument("--model", required=True, help="seq2seq checkpoint, dir or hub id (NLLB, M2M100, Marian)")
    parser.add_argument("--to", default=None, help="target codes of the model, comma-separated (hin_Deva,swh_Latn "
                        "for NLLB; hi,sw for M2M100; CODE=NAME renames the output language)")
    parser.add_argument("--lang", default=None, help="output language name for a one-pair model (Marian)")
    parser.add_argument("--from", dest="source_lang", default="en", help="source code (default en; eng_Latn for NLLB)")
    parser.add_argument("--column", default="en", help="English column of a table or hub dataset; a.b reaches into "
                        "a struct (default: en)")
    parser.add_argument("--format", default=None, choices=["text", "tsv", "csv", "json", "parquet"],
                        help="input format (default: from the suffix; anything else is text)")
    parser.add_argument("--hub", default=None, help="hub dataset id to read instead of a file")
    parser.add_argument("--subset", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-rows", type=int, default=None, help="read only the first N input rows")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens per output (default 256); an output "
                        "that reaches it without ending is skipped as truncated")
    parser.add_argument("--max-length", type=int, default=None, help="instead of --max-new-tokens: generate's "
                        "max_length (decoder start and language token included)")
    parser.add_argument("--max-source-tokens", type=int, default=None, help="skip longer sources (default: what the "
                        "tokenizer and the model's positions allow)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per generate call (default 32)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="sentences per resumable chunk (default 1024)")
    parser.add_argument("--device", default=None, help="default: the rank's device under accelerate, else cuda if "
                        "available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--verify", action="store_true", help="re-hash every finished chunk before reusing it")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point for `altclip-train translate`; under `accelerate launch` each rank translates a share."""
    # Intermixed: `IN --column c OUT` must work, with IN optional (--hub instead).
    args = build_parser().parse_intermixed_args(argv)
    if bool(args.input) == bool(args.hub):
        raise ValueError("give the English input as a file or as --hub ID, not both or neither")
    source = EnglishInput(path=args.input, hub=args.hub, subset=args.subset, split=args.split, column=args.column,
                          format=args.format, max_rows=args.max_rows)
    if args.max_new_tokens is not None and args.max_length is not None:
        raise ValueError("give --max-new-tokens or --max-length, not both")
    settings = Generation(num_beams=args.num_beams, max_length=args.max_length,
                          max_new_tokens=None if args.max_length is not None else
                          (256 if args.max_new_tokens is None else args.max_new_tokens),
                          batch_size=args.batch_size, chunk_size=args.chunk_size,
                          max_source_tokens=args.max_source_tokens, dtype=args.dtype)
    targets = parse_targets(args.to, args.lang)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    manifest = translate(source, args.output_dir, args.model, targets, settings, source_lang=args.source_lang,
                         device=args.device, accelerator=accelerator, trust_remote_code=args.trust_remote_code,
                         verify="full" if args.verify else "stat")
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    print(summary(manifest, Path(args.output_dir)))
    empty = [lang for lang, entry in manifest["languages"].items() if not entry["pairs"]]
    if empty:
        raise ValueError(f"no usable translation into {', '.join(empty)} (see {args.output_dir}/manifest.json for why); "
                         f"nothing was written for {'it' if len(empty) == 1 else 'them'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
