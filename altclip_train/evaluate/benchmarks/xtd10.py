"""XTD10: 1,000 COCO images, one caption each in 11 languages (image-text retrieval).

The release layout (Adobe's Cross-lingual-Test-Dataset-XTD10 repository plus its image archive), read as is:

    <data_root>/xtd10/
        test_image_names.txt              line i: the file name of image i
        test_1kcaptions_<lang>.txt        line i: the caption of image i; de and fr come from MIC/, jp from STAIR/
        images/<file name>                the 1,000 images (images.tar.gz unpacked here)

Caption files may sit in the folder itself or one level down (the repository's XTD10/, MIC/ and STAIR/
folders), as may the index. The file codes read are CLIP_benchmark's 11 (`codes.XTD10_CODES`); any other
`test_1kcaptions_<code>.txt` is refused in one line naming it. The Japanese file is named `jp`; we report it as
`ja` (ISO 639-1) and write `jp` in CLIP_benchmark's results JSON. Options: `root` (the folder), `images` (the image
folder), `languages`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from altclip_train.evaluate.benchmarks.base import (
    RetrievalBenchmark,
    benchmark_dir,
    find_file,
    line_aligned_entries,
    read_lines,
    select_languages,
)
from altclip_train.evaluate.benchmarks.codes import CLIP_BENCHMARK_ISO, XTD10_CODES, check_code

INDEX_FILE = "test_image_names.txt"
CAPTION_PREFIX = "test_1kcaptions_"
# File code -> ISO 639-1.
ISO_CODES = {code: iso for code, iso in CLIP_BENCHMARK_ISO.items() if code in XTD10_CODES}
XTD10_HINT = f"CLIP_benchmark's XTD10 codes are {', '.join(XTD10_CODES)}; Japanese is jp"


def caption_files(directory: Path) -> dict[str, Path]:
    """ISO language -> caption file, from the folder and its sub-folders (first found wins)."""
    files: dict[str, Path] = {}
    for path in sorted(directory.glob(f"{CAPTION_PREFIX}*.txt")) + sorted(directory.glob(f"*/{CAPTION_PREFIX}*.txt")):
        code = check_code(path.stem[len(CAPTION_PREFIX):], XTD10_CODES, path, "xtd10", XTD10_HINT)
        files.setdefault(ISO_CODES.get(code, code), path)
    return files


def read_xtd10(data_root=None, root=None, images=None, languages=None) -> RetrievalBenchmark:
    directory = benchmark_dir(data_root, ["xtd10", "XTD10"], INDEX_FILE, root)
    image_names = read_lines(find_file(directory, INDEX_FILE))
    images_dir = Path(images) if images else directory / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"benchmark xtd10: image folder {images_dir} not found (unpack images.tar.gz there)")
    files = caption_files(directory)
    if not files:
        raise FileNotFoundError(f"benchmark xtd10: no {CAPTION_PREFIX}<lang>.txt in {directory}")
    chosen = select_languages(list(files), None if languages is None else list(languages), f"xtd10 ({directory})")
    paths: dict[Path, int] = {}
    skipped: Counter = Counter()
    per_language = {
        lang: line_aligned_entries(image_names, read_lines(files[lang]), images_dir, paths, skipped, str(files[lang]))
        for lang in chosen
    }
    native = {iso: code for code, iso in ISO_CODES.items() if iso in per_language}
    return RetrievalBenchmark("xtd10", "xtd10", list(paths), per_language, native, skipped)
