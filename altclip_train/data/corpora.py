"""Reading phase-1 parallel corpora as they are downloaded, into Arrow record batches of clean pairs.

A corpus entry in `data.corpora` is one `CorpusSpec`:

| layout                     | entry                                                                      |
|----------------------------|----------------------------------------------------------------------------|
| TSV / CSV / JSONL / Parquet| `{lang: zh, path: en-zh.tsv}` (format from the suffix, or `format:`)        |
| Moses / OPUS aligned files | `{lang: zh, source_path: c.en, target_path: c.zh}`                         |
| hub dataset                | `{lang: zh, hub: Helsinki-NLP/opus-100, subset: en-zh, source_column: translation.en, target_column: translation.zh}` |
| one file, many languages   | `{path: mixed.tsv, language_column: lang, target_column: text}`            |

`source_column` defaults to `en`, `target_column` to the corpus language; `weight` scales how many of its
rows an epoch draws; `max_rows` keeps the first usable rows only. `iter_pairs` yields batches with the
columns `en`, `target`, `lang` and counts what it drops: `empty_sentence` (either side blank after
trimming) and `unknown_language` (a language column value that is not in `data.languages`).

Text is read as UTF-8; a byte-order mark is dropped. A file that is not UTF-8 stops with one line naming
the file and the line. Nothing here holds a whole corpus in Python objects: Moses files are read in
blocks, tables come memory-mapped from `datasets`.
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
PAIR_SCHEMA = pa.schema([("en", pa.string()), ("target", pa.string()), ("lang", pa.string())])
BLOCK_LINES = 65_536


@dataclass
class CorpusSpec:
    lang: str | None = None
    path: str | None = None
    source_path: str | None = None
    target_path: str | None = None
    hub: str | None = None
    subset: str | None = None
    split: str = "train"
    format: str | None = None
    source_column: str = "en"
    target_column: str | None = None
    language_column: str | None = None
    weight: float = 1.0
    max_rows: int | None = None

    @classmethod
    def from_config(cls, entry: dict, position: int) -> "CorpusSpec":
        """Build from one `data.corpora` entry; an unknown key is a one-line error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"data.corpora[{position}]: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
        spec = cls(**dict(entry))
        if not (spec.path or spec.source_path or spec.target_path or spec.hub):
            raise ValueError(f"data.corpora[{position}]: give path, source_path + target_path, or hub")
        if spec.lang is None and spec.language_column is None:
            raise ValueError(f"data.corpora[{position}] ({spec.name}): give lang, or language_column for a file "
                             f"with many languages")
        if spec.language_column and (spec.source_path or spec.target_path):
            raise ValueError(f"data.corpora[{position}] ({spec.name}): language_column needs a table "
                             f"(TSV/CSV/JSONL/Parquet/hub), not Moses files")
        if spec.language_column and not spec.target_column:
            raise ValueError(f"data.corpora[{position}] ({spec.name}): with language_column, name the "
                             f"translation column with target_column")
        if not spec.weight >= 0:
            raise ValueError(f"data.corpora[{position}] ({spec.name}): weight must be >= 0, got {spec.weight}")
        return spec

    @property
    def name(self) -> str:
        return self.path or self.target_path or f"{self.hub}:{self.subset or ''}"

    def files(self) -> list[Path]:
        return [Path(p) for p in (self.path, self.source_path, self.target_path) if p]

    def identity(self) -> dict:
        """What the corpus's content depends on: the entry and each local file's resolved path, size and mtime."""
        check_files(self)
        stats = []
        for path in self.files():
            stat = path.stat()
            stats.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        return {"spec": asdict(self), "files": stats}


def check_files(spec: CorpusSpec) -> None:
    for path in spec.files():
        if not path.is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")


def iter_pairs(spec: CorpusSpec, languages: list[str], skipped: Counter,
               datasets_cache: str | None = None) -> Iterator[pa.RecordBatch]:
    """Clean (en, target, lang) batches of one corpus, in file order; drops are counted into `skipped`."""
    check_files(spec)
    allowed = pa.array(sorted(set(languages)), pa.string())
    unknown: Counter = Counter()
    kept = 0
    raw = _moses_blocks(spec) if (spec.source_path or spec.target_path) else _table_blocks(spec, datasets_cache)
    for en, target, lang in raw:
        en = pc.utf8_trim_whitespace(pc.fill_null(en.cast(pa.string()), ""))
        target = pc.utf8_trim_whitespace(pc.fill_null(target.cast(pa.string()), ""))
        usable = pc.and_(pc.greater(pc.binary_length(en), 0), pc.greater(pc.binary_length(target), 0))
        empty = len(usable) - pc.sum(usable).as_py() if len(usable) else 0
        if lang is None:
            lang = pa.array([spec.lang] * len(en), pa.string())
        else:
            lang = pc.fill_null(lang.cast(pa.string()), "")
            lang = pc.utf8_lower(pc.utf8_trim_whitespace(lang))
            known = pc.is_in(lang, value_set=allowed)
            for code, count in _value_counts(pc.filter(lang, pc.and_(usable, pc.invert(known)))):
                unknown[code] += count
            usable = pc.and_(usable, known)
        if empty:
            skipped["empty_sentence"] += int(empty)
        batch = pa.record_batch([pc.filter(en, usable), pc.filter(target, usable), pc.filter(lang, usable)],
                                schema=PAIR_SCHEMA)
        if spec.max_rows is not None and kept + batch.num_rows >= spec.max_rows:
            yield batch.slice(0, spec.max_rows - kept)
            kept = spec.max_rows
            break
        kept += batch.num_rows
        if batch.num_rows:
            yield batch
    if skipped.get("empty_sentence"):
        log.warning("corpus %s: skipped %d rows with an empty sentence", spec.name, skipped["empty_sentence"])
    if unknown:
        skipped["unknown_language"] += sum(unknown.values())
        listed = ", ".join(f"{code or '(blank)'}={count}" for code, count in unknown.most_common(8))
        log.warning("corpus %s: skipped %d rows whose %s is not in data.languages (%s)", spec.name,
                    sum(unknown.values()), spec.language_column, listed)
    if not kept:
        raise ValueError(f"corpus {spec.name}: no usable sentence pairs")


def _value_counts(values: pa.Array) -> list[tuple[str, int]]:
    if not len(values):
        return []
    counts = pc.value_counts(values)
    return list(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


# ------------------------------------------------------------------------------------- Moses files
def _moses_blocks(spec: CorpusSpec) -> Iterator[tuple[pa.Array, pa.Array, None]]:
    if not (spec.source_path and spec.target_path):
        raise ValueError(f"corpus {spec.name}: Moses corpora need both source_path and target_path")
    sources, targets = _read_lines(Path(spec.source_path)), _read_lines(Path(spec.target_path))
    lines = 0
    # Both sides are cut into blocks of the same line count, so only a length mismatch breaks the lockstep.
    for source, target in itertools.zip_longest(sources, targets):
        if source is None or target is None or len(source) != len(target):
            source_lines = lines + len(source or ()) + sum(map(len, sources))
            target_lines = lines + len(target or ()) + sum(map(len, targets))
            raise ValueError(f"Moses corpus {spec.source_path} has {source_lines} lines but {spec.target_path} "
                             f"has {target_lines}; aligned files must match line for line")
        lines += len(source)
        yield pa.array(source, pa.string()), pa.array(target, pa.string()), None


def _read_lines(path: Path) -> Iterator[list[str]]:
    """Lines of a UTF-8 file in blocks of BLOCK_LINES (BOM dropped); a bad byte is one line naming file and line."""
    with path.open("rb") as handle:
        first, line_number, block = True, 0, []
        for raw in handle:
            line_number += 1
            try:
                text = raw.decode("utf-8-sig" if first else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}: line {line_number} is not valid UTF-8 (byte 0x{raw[error.start]:02x} "
                                 f"at column {error.start + 1}); re-encode the file as UTF-8") from None
            first = False
            block.append(text.rstrip("\r\n"))
            if len(block) == BLOCK_LINES:
                yield block
                block = []
        if block:
            yield block


# ------------------------------------------------------------------------------------- tables
def _table_blocks(spec: CorpusSpec, datasets_cache: str | None) -> Iterator[tuple[pa.Array, pa.Array, Any]]:
    target_column = spec.target_column or spec.lang
    wanted = [spec.source_column, target_column] + ([spec.language_column] if spec.language_column else [])
    for batch in _table_batches(spec, datasets_cache):
        names = batch.schema.names
        for column in wanted:
            if column.partition(".")[0] not in names:
                raise ValueError(f"corpus {spec.name}: unknown column '{column}' (columns: {', '.join(names)})")
        columns = [_column(batch, column) for column in wanted]
        yield columns[0], columns[1], (columns[2] if spec.language_column else None)


def _column(batch: pa.RecordBatch, dotted: str) -> pa.Array:
    """A column by name; `translation.en` reaches into a struct column (the OPUS hub layout)."""
    head, _, rest = dotted.partition(".")
    values = batch.column(batch.schema.get_field_index(head))
    if rest:
        values = pc.struct_field(values, rest)
    return values


def _table_batches(spec: CorpusSpec, datasets_cache: str | None) -> Iterator[pa.RecordBatch]:
    """Record batches of a table corpus, streamed: TSV/CSV by pyarrow's reader, Parquet by row group,
    JSONL and hub datasets through `datasets` (memory-mapped in `datasets_cache`)."""
    if spec.hub:
        import datasets

        table = datasets.load_dataset(spec.hub, spec.subset, split=spec.split, cache_dir=datasets_cache).data.table
        yield from table.to_batches(max_chunksize=BLOCK_LINES)
        return
    path = Path(spec.path)
    fmt = spec.format or FORMATS.get(path.suffix.lower())
    if fmt not in ("tsv", "csv", "json", "parquet"):
        raise ValueError(f"corpus {path}: cannot tell the format from '{path.suffix}'; set format: tsv|csv|json|parquet")
    if fmt in ("tsv", "csv", "json"):
        _check_utf8(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(path).iter_batches(batch_size=BLOCK_LINES)
        elif fmt == "json":
            import datasets

            yield from datasets.load_dataset("json", data_files=str(path), split="train",
                                             cache_dir=datasets_cache).data.table.to_batches(max_chunksize=BLOCK_LINES)
        else:
            yield from _delimited_batches(path, "\t" if fmt == "tsv" else ",")
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"corpus {path}: cannot read it as {fmt} ({str(error).splitlines()[0]})") from None
    except Exception as error:  # datasets wraps every parser error in DatasetGenerationError
        if type(error).__name__ != "DatasetGenerationError":
            raise
        cause = error.__cause__ or error
        raise ValueError(f"corpus {path}: cannot read it as {fmt} ({type(cause).__name__}: "
                         f"{str(cause).splitlines()[0] if str(cause) else ''})") from None


def _delimited_batches(path: Path, delimiter: str) -> Iterator[pa.RecordBatch]:
    """TSV (no quoting, as OPUS/Tatoeba dumps are) or CSV (RFC 4180 quotes), every column read as text."""
    import pyarrow.csv as pacsv

    with path.open("r", encoding="utf-8-sig") as handle:
        header = handle.readline().rstrip("\r\n")
    names = header.split(delimiter) if delimiter == "\t" else next(csv.reader([header]))
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=False if delimiter == "\t" else '"',
                               newlines_in_values=delimiter != "\t")
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names}, strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    read = pacsv.ReadOptions(block_size=1 << 24, column_names=names, skip_rows=1)
    reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    for batch in reader:
        yield batch


def _check_utf8(path: Path) -> None:
    """Name the first line that is not UTF-8, before a parser deep in `datasets` trips over it."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}: line {line_number} is not valid UTF-8 (byte 0x{raw[error.start]:02x} "
                                 f"at column {error.start + 1}); re-encode the file as UTF-8") from None
