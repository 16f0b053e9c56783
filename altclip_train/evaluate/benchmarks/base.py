"""What every benchmark reader returns, and the small file helpers the readers share.

A reader turns a benchmark's released files into one of two plain descriptions, with no model involved:

- `RetrievalBenchmark`: the distinct image files, and per language the (image, captions) entries that describe
  them. Languages share images (XTD10's 1,000 COCO images carry a caption in each of 11 languages), so each image
  is embedded once however many languages use it.
- `ClassificationBenchmark`: labelled image files (label = a class index shared by every language), and per
  language the classes it covers, their names and the prompt templates. Babel-ImageNet covers a different subset
  of ImageNet's classes in each language.

Entries whose image file is missing are counted in `skipped` (CLIP_benchmark drops them with a warning too).
Language codes are those we report; `native_codes` maps them back to the code CLIP_benchmark uses in its results
(XTD10's Japanese file is `test_1kcaptions_jp.txt`: we report `ja` and write `jp` in its results JSON); `codes.py`
lists each benchmark's codes and the mapping.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

RETRIEVAL = "zeroshot_retrieval"
CLASSIFICATION = "zeroshot_classification"


@dataclass
class RetrievalBenchmark:
    """Image-text retrieval data of one benchmark, per language."""

    name: str  # our name, as in `benchmarks=[...]`
    dataset: str  # CLIP_benchmark's dataset name, written in its results JSON
    images: list[Path]
    # lang -> [(index into `images`, captions of that image in that language)]
    languages: dict[str, list[tuple[int, list[str]]]]
    native_codes: dict[str, str] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    task: str = RETRIEVAL


@dataclass
class ClassSet:
    """One language's view of a classification benchmark: which classes, named how, prompted how."""

    classes: list[int]  # global class indices, in this language's order
    names: list[str]  # names[i] names classes[i]
    templates: list[str]  # each with one "{}" where the class name goes


@dataclass
class ClassificationBenchmark:
    """Zero-shot classification data of one benchmark, per language."""

    name: str
    dataset: str
    images: list[tuple[Path, int]]  # (file, global class index)
    languages: dict[str, ClassSet]
    native_codes: dict[str, str] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    task: str = CLASSIFICATION


def benchmark_dir(data_root: str | Path | None, names: Sequence[str], marker: str, option: str | None = None) -> Path:
    """The benchmark's folder: `option` when given, else `data_root/<one of names>`, else `data_root` itself;
    the first that holds `marker` (a file or folder name, searched one level deep too)."""
    if option:
        candidates = [Path(option).expanduser()]
    elif data_root is None:
        raise ValueError(f"benchmark {names[0]}: set data_root (the folder holding {names[0]}/) or its 'root' option")
    else:
        root = Path(data_root).expanduser()
        candidates = [root / name for name in names] + [root]
    for candidate in candidates:
        if (candidate / marker).exists() or any(candidate.glob(f"*/{marker}")):
            return candidate
    raise FileNotFoundError(f"benchmark {names[0]}: no {marker} in {' or '.join(str(c) for c in candidates)}")


def find_file(directory: Path, name: str) -> Path:
    """`directory/name`, or the one sub-folder copy of it (a release may keep files one level down)."""
    if (directory / name).is_file():
        return directory / name
    found = sorted(directory.glob(f"*/{name}"))
    if not found:
        raise FileNotFoundError(f"{directory}: no {name}")
    return found[0]


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file without their line ends; a trailing empty line is not a line."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def select_languages(available: Sequence[str], wanted: Sequence[str] | None, where: str) -> list[str]:
    """`wanted` in its order (each must exist), or every available language."""
    if wanted is None:
        return list(available)
    missing = [lang for lang in wanted if lang not in available]
    if missing:
        raise ValueError(f"{where}: no data for language(s) {missing}; found {sorted(available)}")
    return list(wanted)


def line_aligned_entries(
    image_names: Sequence[str], captions: Sequence[str], images_dir: Path, images: dict[Path, int],
    skipped: Counter, where: str,
) -> list[tuple[int, list[str]]]:
    """Entries of a layout where line i of a caption file describes the image on line i of the index.

    Images are added to `images` (path -> index) as first seen; an image listed twice is one image with both
    captions. Missing image files and empty captions are counted in `skipped`.
    """
    if len(captions) != len(image_names):
        raise ValueError(f"{where}: {len(captions)} captions for {len(image_names)} images in the index")
    by_image: dict[int, list[str]] = {}
    for name, caption in zip(image_names, captions):
        path = images_dir / name.strip()
        if path not in images:
            if not path.is_file():
                skipped["missing_image"] += 1
                continue
            images[path] = len(images)
        if not caption.strip():
            skipped["empty_caption"] += 1
            continue
        by_image.setdefault(images[path], []).append(caption.strip())
    return list(by_image.items())


def load_json_object(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: bad JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def normalise_template(template: str, where: str) -> str:
    """CLIP_benchmark's prompt files mark the class with `{c}` or `{}`; ours always use `{}`."""
    if not isinstance(template, str):
        raise ValueError(f"{where}: template must be a string, got {template!r}")
    template = template.replace("{c}", "{}")
    if "{}" not in template:
        raise ValueError(f"{where}: template has no '{{}}' or '{{c}}' placeholder: {template!r}")
    return template
