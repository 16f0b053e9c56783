"""Flickr30k-200 and XTD200: retrieval in the FLORES-200 languages (NLLB-CLIP's test sets).

Both are laid out as an image index plus one caption file per FLORES-200 code (`eng_Latn`, `zho_Hans`, ...),
line i describing the image on line i of the index, and the images in `images/`:

    <data_root>/flickr30k-200/                 <data_root>/xtd200/
        filenames.txt                              test_image_names.txt
        <flores code>.txt                          <flores code>.txt
        images/<file name>                         images/<file name>

The files read are CLIP_benchmark's: `<code>.txt` for each FLORES-200 code in its `datasets/flores_langs.py`
(201 codes, `codes.FLORES200_CODES`). NLLB-CLIP's Flickr30k-200 folder also ships `eng_captions.txt`, the English
source the translations were made from (a byte-for-byte copy of `eng_Latn.txt`): it is not a language and is not
read. Any other `.txt` file whose name is not a FLORES-200 code is refused in one line naming it (a misspelt code
would otherwise vanish from the table). Languages keep their FLORES-200 codes, in the report and in
CLIP_benchmark's results JSON alike. Options: `root`, `images`, `languages`.
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
from altclip_train.evaluate.benchmarks.codes import FLORES200_CODES, check_code

LAYOUTS = {
    # name: (folder names, index file, CLIP_benchmark dataset name)
    "flickr30k_200": (["flickr30k-200", "flickr30k_200"], "filenames.txt", "flickr30k-200"),
    "xtd200": (["xtd200", "XTD200"], "test_image_names.txt", "xtd200"),
}
# Text files of the releases that are not captions in a language of their own.
NOT_LANGUAGES = {"eng_captions.txt"}
FLORES_HINT = "FLORES-200 codes such as eng_Latn or zho_Hans, as in CLIP_benchmark's datasets/flores_langs.py"


def caption_files(directory: Path, index_file: str, name: str) -> dict[str, Path]:
    """FLORES-200 code -> caption file; the index and `eng_captions.txt` are not languages, anything else must be."""
    files = {}
    for path in sorted(directory.glob("*.txt")):
        if path.name == index_file or path.name in NOT_LANGUAGES:
            continue
        files[check_code(path.stem, FLORES200_CODES, path, name, FLORES_HINT)] = path
    return files


def read_flores200(name: str, data_root=None, root=None, images=None, languages=None) -> RetrievalBenchmark:
    folders, index_file, dataset = LAYOUTS[name]
    directory = benchmark_dir(data_root, folders, index_file, root)
    image_names = read_lines(directory / index_file)
    images_dir = Path(images) if images else directory / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"benchmark {name}: image folder {images_dir} not found (unpack images.tar.gz there)")
    files = caption_files(directory, index_file, name)
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
