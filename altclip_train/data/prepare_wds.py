"""`altclip-train prepare-wds`: turn a CSV/TSV/JSONL of (image path, caption, lang) into WebDataset shards.

The shards use the img2dataset layout that `altclip_train.data.webdataset` reads. Rows that share an
image path become one sample with several captions: the first caption is `KEY.txt` (its language in
`KEY.json` "lang"), every caption is in the json "captions" list, and the first caption of each language
is also written as `KEY.<lang>.txt`. Image bytes are stored as they are, under the extension of their
real format. Bad rows (missing or undecodable image, empty caption) are skipped with a warning naming the
file and line, counted, and reported in the summary, the final log line and `manifest.json`.

    altclip-train prepare-wds pairs.csv shards/ --image-root images/ --shard-size 1000
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from webdataset import TarWriter

from altclip_train.data.images import BadImageError, decode_image
from altclip_train.data.webdataset import normalize_lang

logger = logging.getLogger(__name__)

DEFAULT_LANG_COLUMN = "lang"
# PIL format -> extension; any other format is re-encoded losslessly as PNG so that readers recognise it.
_FORMAT_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
_WARNINGS_PER_REASON = 20
_JSONL_COLUMN_SCAN = 1000
# Fixed tar timestamps make shards byte-identical across runs on the same input.
_TAR_MTIME = 1_700_000_000


@dataclass
class _ImageEntry:
    first_row: int
    # rows that contributed a caption; an unusable image skips exactly these (the others are counted already)
    rows: int = 0
    captions: list[tuple[str, str]] = field(default_factory=list)


class _SkipLog:
    """Counts skipped rows by reason; warns for the first few of each reason so huge inputs stay readable."""

    def __init__(self):
        self.counts: Counter = Counter()

    def skip(self, reason: str, rows: int, message: str) -> None:
        self.counts[reason] += rows
        seen = self.counts[reason]
        if seen - rows < _WARNINGS_PER_REASON:
            suffix = "" if seen < _WARNINGS_PER_REASON else f" (further '{reason}' warnings suppressed)"
            logger.warning("%s%s", message, suffix)


def _input_format(path: Path) -> str:
    suffix = path.suffix.lower()
    formats = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
    if suffix not in formats:
        raise ValueError(f"{path}: unknown input format '{suffix}' (use .csv, .tsv or .jsonl)")
    return formats[suffix]


def _read_rows(path: Path, skips: _SkipLog):
    """(columns, iterator of (line number, row dict)) for a CSV, TSV or JSONL file."""
    fmt = _input_format(path)
    if fmt == "jsonl":
        # JSON objects may leave out optional keys, so the columns are the keys seen in the first records.
        columns: dict[str, None] = {}
        with path.open(encoding="utf-8-sig") as handle:
            for line in itertools.islice((line for line in handle if line.strip()), _JSONL_COLUMN_SCAN):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    columns.update(dict.fromkeys(record))

        def jsonl_rows():
            with path.open(encoding="utf-8-sig") as handle:
                for line_number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        skips.skip("bad_row", 1, f"{path}:{line_number}: not valid JSON ({error.msg}); row skipped")
                        continue
                    if not isinstance(row, dict):
                        skips.skip("bad_row", 1, f"{path}:{line_number}: not a JSON object; row skipped")
                        continue
                    yield line_number, row

        return list(columns), jsonl_rows()

    delimiter = "," if fmt == "csv" else "\t"
    with path.open(encoding="utf-8-sig", newline="") as handle:
        columns = next(csv.reader(handle, delimiter=delimiter), [])

    def delimited_rows():
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            for row in reader:
                # DictReader's line_num is the line where the record ends; fine for single-line records.
                yield reader.line_num, row

    return columns, delimited_rows()


def _check_columns(path: Path, columns: list[str], image_column: str, caption_column: str, lang_column: str | None):
    """Name a missing column and the ones that exist; returns the language column to use (or None)."""
    existing = ", ".join(columns) if columns else "none"
    for column in (image_column, caption_column):
        if column not in columns:
            raise ValueError(f"{path}: no column '{column}' (columns: {existing})")
    if lang_column is None or lang_column in columns:
        return lang_column
    if lang_column == DEFAULT_LANG_COLUMN:
        logger.info("%s has no '%s' column; every caption gets the default language", path, lang_column)
        return None
    raise ValueError(f"{path}: no column '{lang_column}' (columns: {existing})")


def _caption_values(value) -> list[str]:
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return [value] if isinstance(value, str) else []


def _group_rows(rows, path, image_base, image_column, caption_column, lang_column, default_lang, skips):
    """Image path -> its captions, in first-seen order; empty captions are skipped per row."""
    images: dict[str, _ImageEntry] = {}
    num_rows = 0
    for line_number, row in rows:
        num_rows += 1
        image_value = row.get(image_column)
        if not isinstance(image_value, str) or not image_value.strip():
            skips.skip("missing_image", 1, f"{path}:{line_number}: empty '{image_column}'; row skipped")
            continue
        image_path = os.path.normpath(image_base / os.path.expanduser(image_value.strip()))
        lang = normalize_lang(row.get(lang_column)) if lang_column else None
        lang = lang or default_lang
        entry = images.setdefault(image_path, _ImageEntry(first_row=line_number))
        captions = [text.strip() for text in _caption_values(row.get(caption_column))]
        captions = [text for text in captions if text]
        if not captions:
            skips.skip("empty_caption", 1, f"{path}:{line_number}: empty caption for {image_value}; row skipped")
            continue
        new = [(lang, text) for text in dict.fromkeys(captions) if (lang, text) not in entry.captions]
        if not new:
            skips.skip("duplicate_caption", 1, f"{path}:{line_number}: caption repeats an earlier row; row skipped")
            continue
        entry.captions.extend(new)
        entry.rows += 1
    return images, num_rows


class _ShardSink:
    """Writes samples into `PREFIX-00000.tar`, ... of at most `shard_size` samples; each shard appears only when complete."""

    def __init__(self, output_dir: Path, prefix: str, shard_size: int):
        self.output_dir = output_dir
        self.prefix = prefix
        self.shard_size = shard_size
        self.shards: list[dict] = []
        self._writer: TarWriter | None = None
        self._file = None

    def write(self, sample: dict, num_captions: int) -> None:
        if self._writer is None or self.shards[-1]["samples"] >= self.shard_size:
            self._finish_shard()
            name = f"{self.prefix}-{len(self.shards):05d}.tar"
            self._file = open(self.output_dir / f"{name}.partial", "wb")
            self._writer = TarWriter(self._file, encoder=False, mtime=_TAR_MTIME)
            self.shards.append({"name": name, "samples": 0, "captions": 0})
        self._writer.write(sample)
        self.shards[-1]["samples"] += 1
        self.shards[-1]["captions"] += num_captions

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._file.close()
        name = self.shards[-1]["name"]
        os.replace(self.output_dir / f"{name}.partial", self.output_dir / name)
        self._writer = self._file = None

    def close(self) -> None:
        self._finish_shard()


def _existing_outputs(output_dir: Path, prefix: str) -> list[Path]:
    pattern = re.compile(rf"{re.escape(prefix)}-\d+\.tar(\.partial)?")
    found = [path for path in output_dir.iterdir() if pattern.fullmatch(path.name)] if output_dir.is_dir() else []
    manifest = output_dir / "manifest.json"
    return sorted(found) + ([manifest] if manifest.exists() else [])


def _encode_sample(key: str, entry: _ImageEntry, image_path: str, image_bytes: bytes, ext: str, size) -> dict:
    first_lang, first_text = entry.captions[0]
    meta = {
        "key": key,
        "image_path": image_path,
        "width": size[0],
        "height": size[1],
        "lang": first_lang,
        "caption": first_text,
        "captions": [{"text": text, "lang": lang} for lang, text in entry.captions],
    }
    sample = {
        "__key__": key,
        ext: image_bytes,
        "txt": first_text.encode("utf-8"),
        "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
    }
    for lang, text in entry.captions:
        sample.setdefault(f"{lang}.txt", text.encode("utf-8"))
    return sample


def prepare_wds(
    input_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    shard_size: int = 1000,
    image_column: str = "image",
    caption_column: str = "caption",
    lang_column: str | None = DEFAULT_LANG_COLUMN,
    default_lang: str = "en",
    prefix: str = "shard",
    overwrite: bool = False,
) -> dict:
    """Write WebDataset shards and `manifest.json` from a CSV/TSV/JSONL of image paths and captions.

    Relative image paths resolve against `image_root`, else the input file's directory. The language
    column is optional when left at its default name "lang" (captions then get `default_lang`); any
    other named column must exist. Returns the summary that `manifest.json` holds, plus "manifest".
    """
    input_path = Path(input_file)
    output_path = Path(output_dir)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file not found: {input_path}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    default_lang = normalize_lang(default_lang)
    if default_lang is None:
        raise ValueError("default_lang must be a language code such as 'en'")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ValueError(f"shard prefix '{prefix}' may only use letters, digits, '_', '-' and '.'")
    image_base = Path(image_root) if image_root is not None else input_path.parent
    if image_root is not None and not image_base.is_dir():
        raise FileNotFoundError(f"image root not found: {image_base}")

    skips = _SkipLog()
    columns, rows = _read_rows(input_path, skips)
    lang_column = _check_columns(input_path, columns, image_column, caption_column, lang_column)

    previous = _existing_outputs(output_path, prefix)
    if previous and not overwrite:
        raise FileExistsError(
            f"{output_path} already holds {previous[0].name} and other outputs; pass --overwrite to replace them"
        )
    output_path.mkdir(parents=True, exist_ok=True)
    for stale in previous:
        stale.unlink()

    images, num_rows = _group_rows(
        rows, input_path, image_base, image_column, caption_column, lang_column, default_lang, skips
    )

    sink = _ShardSink(output_path, prefix, shard_size)
    captions_per_lang: Counter = Counter()
    reencoded = 0
    num_samples = 0
    try:
        for image_path, entry in tqdm(images.items(), total=len(images), desc="prepare-wds", unit="img", disable=None):
            if not entry.captions:
                continue
            where = f"{input_path}:{entry.first_row}"
            try:
                image_bytes = Path(image_path).read_bytes()
            except OSError as error:
                reason = error.strerror or type(error).__name__
                skips.skip("missing_image", entry.rows, f"{where}: cannot read image {image_path} ({reason}); skipped")
                continue
            try:
                image = decode_image(image_bytes, name=image_path)
            except BadImageError as error:
                skips.skip("corrupt_image", entry.rows, f"{where}: {error}; skipped")
                continue
            ext = _FORMAT_EXTENSIONS.get(image.format or "")
            if ext is None:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                image_bytes, ext = buffer.getvalue(), "png"
                reencoded += 1
            key = f"{num_samples:09d}"
            sink.write(_encode_sample(key, entry, image_path, image_bytes, ext, image.size), len(entry.captions))
            captions_per_lang.update(lang for lang, _ in entry.captions)
            num_samples += 1
    finally:
        sink.close()

    skipped = dict(sorted(skips.counts.items()))
    if num_samples == 0:
        raise ValueError(f"{input_path}: no usable rows out of {num_rows} (skipped: {skipped or 'none'})")

    manifest = {
        "input_file": str(input_path),
        "shards": sink.shards,
        "num_shards": len(sink.shards),
        "num_samples": num_samples,
        "num_captions": sum(captions_per_lang.values()),
        "captions_per_lang": dict(sorted(captions_per_lang.items())),
        "num_rows": num_rows,
        "skipped": skipped,
        "reencoded_images": reencoded,
        "default_lang": default_lang,
    }
    manifest_path = output_path / "manifest.json"
    partial = manifest_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, manifest_path)

    per_lang = ", ".join(f"{lang}={count}" for lang, count in manifest["captions_per_lang"].items())
    logger.info(
        "prepare-wds: %d samples, %d captions (%s) in %d shards under %s; skipped rows: %s",
        num_samples, manifest["num_captions"], per_lang, len(sink.shards), output_path,
        ", ".join(f"{reason}={count}" for reason, count in skipped.items()) or "none",
    )
    return {**manifest, "manifest": str(manifest_path)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="altclip-train prepare-wds",
        description="Write WebDataset shards (img2dataset layout) from a CSV, TSV or JSONL of image paths and captions.",
    )
    parser.add_argument("input", help="CSV, TSV or JSONL file with one (image path, caption[, lang]) per row")
    parser.add_argument("output_dir", help="directory for shard-00000.tar, ... and manifest.json")
    parser.add_argument("--image-root", default=None, help="base for relative image paths (default: the input's directory)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default: 1000)")
    parser.add_argument(
        "--columns",
        default=f"image,caption,{DEFAULT_LANG_COLUMN}",
        help="image,caption[,lang] column names (default: image,caption,lang; a missing 'lang' column means --default-lang)",
    )
    parser.add_argument("--default-lang", default="en", help="language of captions without one (default: en)")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    parser.add_argument("--overwrite", action="store_true", help="replace shards and manifest already in OUTPUT_DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point for `altclip-train prepare-wds`; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    columns = [name.strip() for name in args.columns.split(",")]
    if len(columns) not in (2, 3) or not all(columns):
        parser.error(f"--columns takes 2 or 3 comma-separated names (image,caption[,lang]), got '{args.columns}'")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        prepare_wds(
            args.input,
            args.output_dir,
            image_root=args.image_root,
            shard_size=args.shard_size,
            image_column=columns[0],
            caption_column=columns[1],
            lang_column=columns[2] if len(columns) == 3 else None,
            default_lang=args.default_lang,
            prefix=args.prefix,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
