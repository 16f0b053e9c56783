"""Flickr30k-200 and XTD200: retrieval in the FLORES-200 languages (NLLB-CLIP's test sets).

Both are laid out as an image index plus one caption file per FLORES-200 code (`eng_Latn`, `zho_Hans`, ...),
line i describing the image on line i of the index, and the images in `images/`:

    <data_root>/flickr30k-200/                 <data_root>/xtd200/
        filenames.txt                              test_image_names.txt
        <flores code>.txt                          <flores code>.txt
        images/<file name>                         images/<file name>

Languages keep their FLORES-200 codes, in the report and in CLIP_benchmark's results JSON alike.
Options: `root`, `images`, `languages`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from altclip_train.evaluate.benchmarks.base import (
    RetrievalBenchmark,
    benchmark_dir,
    line_aligned_entries,
    read_lines,
    select_languages,
)

LAYOUTS = {
    # name: (folder names, index file, CLIP_benchmark dataset name)
    "flickr30k_200": (["flickr30k-200", "flickr30k_200"], "filenames.txt", "flickr30k-200"),
    "xtd200": (["xtd200", "XTD200"], "test_image_names.txt", "xtd200"),
}


def read_flores200(name: str, data_root=None, root=None, images=None, languages=None) -> RetrievalBenchmark:
    folders, index_file, dataset = LAYOUTS[name]
    directory = benchmark_dir(data_root, folders, index_file, root)
    image_names = read_lines(directory / index_file)
    images_dir = Path(images) if images else directory / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"benchmark {name}: image folder {images_dir} not found (unpack images.tar.gz there)")
    files = {path.stem: path for path in sorted(directory.glob("*.txt")) if path.name != index_file}
    if not files:
        raise FileNotFoundError(f"benchmark {name}: no <flores code>.txt caption files in {directory}")
    chosen = select_languages(list(files), None if languages is None else list(languages), f"{name} ({directory})")
    paths: dict[Path, int] = {}
    skipped: Counter = Counter()
    per_language = {
        lang: line_aligned_entries(image_names, read_lines(files[lang]), images_dir, paths, skipped, str(files[lang]))
        for lang in chosen
    }
    return RetrievalBenchmark(name, dataset, list(paths), per_language, {}, skipped)


def read_flickr30k_200(data_root=None, **options) -> RetrievalBenchmark:
    return read_flores200("flickr30k_200", data_root, **options)


def read_xtd200(data_root=None, **options) -> RetrievalBenchmark:
    return read_flores200("xtd200", data_root, **options)
