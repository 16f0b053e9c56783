"""Evaluation images and their labels or captions: image folders, WebDataset shards, CSV/JSONL pair lists.

Every source yields `ImageItem`s (a file path or encoded bytes, plus a label or captions) in a fixed order;
`PreprocessedImages` decodes and preprocesses them in batches, optionally in DataLoader workers, and can keep
the resulting pixel tensors in memory so a training loop that evaluates every N steps decodes each image once.
Images that cannot be used (missing file, corrupt bytes, no caption) are counted per reason, never dropped silently.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from altclip_train.data.images import BadImageError, ImagePreprocessor, decode_image, load_image_file
from altclip_train.data.webdataset import IMAGE_EXTENSIONS as SHARD_IMAGE_EXTENSIONS
from altclip_train.data.shards import expand_shard_urls
from altclip_train.data.webdataset import iter_image_text_records, normalize_lang

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PAIR_COLUMNS = {
    "image": ("image", "image_path", "filepath"),
    "caption": ("caption", "text"),
    "lang": ("lang", "language"),
}


@dataclass
class ImageItem:
    """One evaluation image: where its bytes are, what it is labelled with, or why it must be skipped."""

    key: str
    payload: Path | bytes | None
    label: int | None = None
    captions: list[tuple[str, str]] = field(default_factory=list)  # (lang, caption)
    skip_reason: str | None = None
    # Samples the reader dropped just before this one, by reason; an item with no payload may carry only these.
    skips: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- shards


def _image_extension(sample: dict) -> str | None:
    return next((ext for ext in SHARD_IMAGE_EXTENSIONS if ext in sample), None)


def _shard_label(sample: dict, name: str) -> int:
    if "cls" in sample:
        raw = sample["cls"].decode("utf-8").strip()
    else:
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"shard sample {name}: bad json: {error}") from error
        raw = meta.get("label") if isinstance(meta, dict) else None
        if raw is None:
            raise ValueError(f"shard sample {name} has no class label (.cls file or json 'label')")
    try:
        return int(raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f"shard sample {name} has a non-integer class label {raw!r}") from error


# ---------------------------------------------------------------------------------------------- zero-shot images


class ImageFolder:
    """`root/<class_dir>/*.{png,jpg,jpeg,webp}`; class i is the i-th folder in sorted order."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise ValueError(f"image folder {self.root} has no class sub-folders")
        self.classes = [p.name for p in class_dirs]
        self.samples: list[tuple[Path, int]] = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"class folder {class_dir} has no images ({', '.join(IMAGE_SUFFIXES)})")
            self.samples.extend((path, label) for path in files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[ImageItem]:
        for path, label in self.samples:
            yield ImageItem(key=str(path), payload=path, label=label)

    def __repr__(self) -> str:
        return f"ImageFolder({self.root})"


class LabelledShards:
    """WebDataset shards whose samples carry an image and an integer class label (`.cls` or json "label")."""

    num_classes = None  # known only from the class-name files

    def __init__(self, spec: str | Sequence[str]):
        self.urls = expand_shard_urls(spec)

    def __iter__(self) -> Iterator[ImageItem]:
        for url in self.urls:
            errors: Counter = Counter()

            def count_and_continue(error: Exception) -> bool:
                errors["shard_error"] += 1
                logger.warning("shard %s: %s (continuing with the next sample)", url, error)
                return True

            for sample in tarfile_samples([{"url": url}], handler=count_and_continue):
                name = f"{url}:{sample['__key__']}"
                extension = _image_extension(sample)
                pending, errors = dict(errors), Counter()
                if extension is None:
                    yield ImageItem(key=name, payload=None, skip_reason="missing_image", skips=pending)
                else:
                    label = _shard_label(sample, name)
                    yield ImageItem(key=f"{name}.{extension}", payload=sample[extension], label=label, skips=pending)
            if errors:
                yield ImageItem(key=url, payload=None, skips=dict(errors))

    def __repr__(self) -> str:
        return f"LabelledShards({len(self.urls)} shards from {self.urls[0]})"


def open_labelled_images(spec) -> ImageFolder | LabelledShards:
    """An image folder, or shards when the spec is a .tar pattern/list or a directory holding .tar files."""
    if isinstance(spec, (ImageFolder, LabelledShards)):
        return spec
    if isinstance(spec, (str, Path)) and Path(spec).is_dir() and not any(Path(spec).glob("*.tar")):
        return ImageFolder(spec)
    return LabelledShards(spec)


# ---------------------------------------------------------------------------------------------- retrieval pairs


def _pick_column(fields: Sequence[str], role: str, path: Path, required: bool = True) -> str | None:
    for name in PAIR_COLUMNS[role]:
        if name in fields:
            return name
    if not required:
        return None
    raise ValueError(f"{path}: no {role} column (expected one of {PAIR_COLUMNS[role]}, found {list(fields)})")


def _caption_list(value, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: caption must be a string or a list of strings, got {value!r}")
    return values


class PairTable:
    """(image, caption, lang) rows from a CSV/TSV (header row) or JSONL file, grouped by image path.

    Relative image paths resolve against `image_root`, by default the table's own folder. A JSONL caption may be a
    list. Without a lang column, or with an empty cell, a caption gets `default_lang`. Rows whose image file is
    missing or whose caption is empty are counted in `skipped`.
    """

    def __init__(self, path: str | Path, image_root: str | Path | None = None, default_lang: str = "en"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"retrieval pairs file not found: {self.path}")
        self.image_root = Path(image_root) if image_root else self.path.parent
        self.default_lang = default_lang
        self.skipped: Counter = Counter()
        captions_by_image: dict[Path, list[tuple[str, str]]] = {}
        for image, caption, lang in self._rows():
            image_path = Path(image) if Path(image).is_absolute() else self.image_root / image
            if not caption.strip():
                self.skipped["empty_caption"] += 1
                continue
            if image_path not in captions_by_image and not image_path.is_file():
                self.skipped["missing_image"] += 1
                continue
            lang = normalize_lang(lang) or self.default_lang
            captions_by_image.setdefault(image_path, []).append((lang, caption.strip()))
        self.images = captions_by_image

    def _rows(self) -> Iterator[tuple[str, str, str | None]]:
        suffix = self.path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            with self.path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
                fields = reader.fieldnames or []
                image_col, caption_col = (_pick_column(fields, role, self.path) for role in ("image", "caption"))
                lang_col = _pick_column(fields, "lang", self.path, required=False)
                for row in reader:
                    if not row.get(image_col):
                        raise ValueError(f"{self.path}:{reader.line_num}: empty image path")
                    yield row[image_col], row.get(caption_col) or "", row.get(lang_col) if lang_col else None
        elif suffix in (".jsonl", ".json"):
            with self.path.open(encoding="utf-8") as handle:
                for line, text in enumerate(handle, start=1):
                    if not text.strip():
                        continue
                    where = f"{self.path}:{line}"
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{where}: bad JSON: {error}") from error
                    if not isinstance(row, dict):
                        raise ValueError(f"{where}: expected a JSON object per line")
                    image_col, caption_col = (_pick_column(list(row), role, where) for role in ("image", "caption"))
                    lang_col = _pick_column(list(row), "lang", where, required=False)
                    for caption in _caption_list(row[caption_col], where):
                        yield str(row[image_col]), caption, row.get(lang_col) if lang_col else None
        else:
            raise ValueError(f"{self.path}: retrieval pairs must be .csv, .tsv or .jsonl")

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageItem]:
        for path, captions in self.images.items():
            yield ImageItem(key=str(path), payload=path, captions=list(captions))

    def __repr__(self) -> str:
        return f"PairTable({self.path})"


class CaptionedShards:
    """Captioned WebDataset shards in the layout `altclip_train.data.webdataset` reads (`KEY.txt`, json "lang"
    and "captions", `KEY.<lang>.txt`); captions without a language get `default_lang`."""

    def __init__(self, spec: str | Sequence[str], default_lang: str = "en"):
        self.urls = expand_shard_urls(spec)
        self.default_lang = default_lang

    def __iter__(self) -> Iterator[ImageItem]:
        counts: Counter = Counter()
        reported: Counter = Counter()
        records = iter_image_text_records(self.urls, decode=False, default_lang=self.default_lang, skip_counts=counts)
        for record in records:
            # The reader counts the samples it drops; each item carries the counts added since the previous one.
            pending = dict(counts - reported)
            reported = Counter(counts)
            yield ImageItem(
                key=f"{record['url']}:{record['key']}",
                payload=record["image_bytes"],
                captions=list(record["captions"]),
                skips=pending,
            )
        if counts - reported:
            yield ImageItem(key=self.urls[-1], payload=None, skips=dict(counts - reported))

    def __repr__(self) -> str:
        return f"CaptionedShards({len(self.urls)} shards from {self.urls[0]})"


def open_pairs(spec, image_root: str | Path | None = None, default_lang: str = "en") -> PairTable | CaptionedShards:
    """A CSV/JSONL pair table, or captioned WebDataset shards."""
    if isinstance(spec, (PairTable, CaptionedShards)):
        return spec
    if isinstance(spec, (str, Path)) and Path(spec).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"):
        return PairTable(spec, image_root=image_root, default_lang=default_lang)
    return CaptionedShards(spec, default_lang=default_lang)


# ---------------------------------------------------------------------------------------------- preprocessing


class _PreprocessStream(IterableDataset):
    """Items -> (pixels | None, item); DataLoader workers each take every num_workers-th item."""

    def __init__(self, source, transform: ImagePreprocessor):
        self.source = source
        self.transform = transform

    def __iter__(self):
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for position, item in enumerate(self.source):
            if position % num_workers != worker_id:
                continue
            yield self._load(item)

    def _load(self, item: ImageItem) -> tuple[torch.Tensor | None, ImageItem]:
        if item.skip_reason is not None or item.payload is None:
            return None, item
        try:
            if isinstance(item.payload, Path):
                image = load_image_file(item.payload)
            else:
                image = decode_image(item.payload, name=item.key)
            pixels = self.transform(image)
        except FileNotFoundError:
            item.skip_reason = "missing_image"
            return None, item
        except BadImageError:
            item.skip_reason = "corrupt_image"
            return None, item
        # The bytes are no longer needed; dropping them keeps a cached pass small.
        item.payload = None
        return pixels, item


def _keep_list(batch):
    return batch


class PreprocessedImages:
    """Batches of (pixels, items) from a source, decoded once per pass, or once ever with `cache=True`.

    The cache holds float32 pixel tensors (3 x crop x crop x 4 bytes per image, 602 KB at 224 px), so keep it for
    evaluation sets that fit in host memory.
    """

    def __init__(
        self,
        source,
        transform: ImagePreprocessor,
        batch_size: int = 256,
        num_workers: int = 0,
        cache: bool = True,
    ):
        self.source = source
        self.transform = transform
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache = cache
        self._cached: list[tuple[torch.Tensor, list[ImageItem]]] | None = None
        self.skipped: Counter = Counter()

    @property
    def num_batches(self) -> int | None:
        if self._cached is not None:
            return len(self._cached)
        if hasattr(self.source, "__len__"):
            return -(-len(self.source) // self.batch_size)
        return None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[ImageItem]]]:
        if self._cached is not None:
            yield from self._cached
            return
        loader = DataLoader(
            _PreprocessStream(self.source, self.transform),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_keep_list,
            # A private generator: evaluating during training must not draw from the global RNG,
            # or it would change the training run's dropout masks.
            generator=torch.Generator().manual_seed(0),
        )
        skipped: Counter = Counter()
        kept = []
        for batch in loader:
            pixels = [p for p, _ in batch if p is not None]
            items = [item for p, item in batch if p is not None]
            skipped.update(item.skip_reason for p, item in batch if p is None and item.skip_reason)
            for _, item in batch:
                skipped.update(item.skips)
            if not items:
                continue
            entry = (torch.stack(pixels), items)
            if self.cache:
                kept.append(entry)
            yield entry
        # Only a complete pass defines the counts and the cache.
        self.skipped = skipped
        if self.cache:
            self._cached = kept


def stream_pixels(images: PreprocessedImages, sink: list[ImageItem]) -> Iterator[torch.Tensor]:
    """Pixel batches for `embed_pixels`, appending each batch's items to `sink` as it goes by."""
    for pixels, items in images:
        sink.extend(items)
        yield pixels
