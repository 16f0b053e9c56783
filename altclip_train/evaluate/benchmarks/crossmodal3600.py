"""Crossmodal-3600 (XM3600): 3,600 images with captions in 36 languages (image-text retrieval).

The release layout (captions.zip and images.tgz, unpacked):

    <data_root>/xm3600/
        captions.jsonl        one image per line: {"image/key": "...", "image/locale": "...",
                              "<lang>": {"caption": [...], "caption/tokenized": [...], ...}, ...}
        images/<key>.jpg

CLIP_benchmark scores each image with the first caption of each language; `all_captions: true` uses every
caption instead (an image then counts as found when any of its captions ranks it, as for COCO). Languages keep the
dataset's codes, which are CLIP_benchmark's (`codes.XM3600_CODES`: `fil`, `mi`, `quz` among them); a row with any
other key is refused in one line naming the file and line. Options: `root`, `images`, `languages`, `all_captions`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from altclip_train.evaluate.benchmarks.base import RetrievalBenchmark, benchmark_dir, select_languages
from altclip_train.evaluate.benchmarks.codes import XM3600_CODES, check_code

CAPTIONS_FILE = "captions.jsonl"
KEY_FIELDS = ("image/key", "image/locale")


def read_captions(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: bad JSON: {error}") from error
            if not isinstance(row, dict) or "image/key" not in row:
                raise ValueError(f"{path}:{number}: expected an object with 'image/key'")
            for key in row:
                if key not in KEY_FIELDS:
                    check_code(key, XM3600_CODES, f"{path}:{number}", "xm3600",
                               "CLIP_benchmark's 36 Crossmodal-3600 codes, as in datasets/crossmodal3600.py")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no images")
    return rows


def captions_of(row: dict, lang: str, where: str) -> list[str]:
    entry = row.get(lang)
    if entry is None:
        return []
    captions = entry.get("caption") if isinstance(entry, dict) else None
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"{where}: '{lang}' needs a 'caption' list of strings")
    return [c.strip() for c in captions if c.strip()]


def read_crossmodal3600(data_root=None, root=None, images=None, languages=None,
                        all_captions=False) -> RetrievalBenchmark:
    directory = benchmark_dir(data_root, ["xm3600", "crossmodal3600", "crossmodal-3600"], CAPTIONS_FILE, root)
    captions_path = directory / CAPTIONS_FILE
    rows = read_captions(captions_path)
    images_dir = Path(images) if images else directory / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"benchmark xm3600: image folder {images_dir} not found (unpack images.tgz there)")
    found = list(dict.fromkeys(key for row in rows for key in row if key not in KEY_FIELDS))
    chosen = select_languages(found, None if languages is None else list(languages), f"xm3600 ({captions_path})")
    paths: list[Path] = []
    per_language: dict[str, list[tuple[int, list[str]]]] = {lang: [] for lang in chosen}
    skipped: Counter = Counter()
    for number, row in enumerate(rows, start=1):
        path = images_dir / f"{row['image/key']}.jpg"
        if not path.is_file():
            skipped["missing_image"] += 1
            continue
        index = len(paths)
        paths.append(path)
        for lang in chosen:
            captions = captions_of(row, lang, f"{captions_path}:{number}")
            if not captions:
                skipped["no_caption"] += 1
                continue
            per_language[lang].append((index, captions if all_captions else captions[:1]))
    return RetrievalBenchmark("xm3600", "crossmodal3600", paths, per_language, {}, skipped)
