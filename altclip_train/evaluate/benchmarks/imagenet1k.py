"""Multilingual zero-shot ImageNet-1k with the class-name and template JSON files CLIP_benchmark ships.

CLIP_benchmark keeps, per language, `<code>_classnames.json` ({dataset: [class names]}) and
`<code>_zeroshot_classification_templates.json` ({dataset: [templates with {c}]}) in its `datasets/` folder.
Copy them (or point `classnames_dir` at that folder) next to the ImageNet validation images:

    <data_root>/imagenet1k/
        <code>_classnames.json                         e.g. en_, jp_, it_ ... (key "imagenet1k": 1,000 names)
        <code>_zeroshot_classification_templates.json  (key "imagenet1k"; missing keys fall back to it, as there)
        val/<wnid>/*.JPEG

Every language with both files is evaluated. A code is CLIP_benchmark's `jp` or `cn`, or any ISO 639-1 code (its
`--language xx` reads `xx_classnames.json`, so a file added for another language works in both tools); any other
name, or two files for one language (`jp_` and `ja_`), is refused in one line naming the file. `jp` and `cn` are
reported as `ja` and `zh` (ISO 639-1), and written back as `jp`/`cn` in CLIP_benchmark's results JSON. Options: `root`, `images`, `languages`, `classnames_dir`,
`key` (the dataset key in the JSON files, default imagenet1k).
"""

from __future__ import annotations

from pathlib import Path

from altclip_train.evaluate.benchmarks.base import (
    ClassificationBenchmark,
    ClassSet,
    benchmark_dir,
    load_json_object,
    normalise_template,
    select_languages,
)
from altclip_train.evaluate.benchmarks.codes import CLIP_BENCHMARK_ISO, ISO_639_1, check_code
from altclip_train.evaluate.benchmarks.imagenet import labelled_images, locate_val_folder

CLASSNAMES_SUFFIX = "_classnames.json"
TEMPLATES_SUFFIX = "_zeroshot_classification_templates.json"
TEMPLATE_FALLBACK = "imagenet1k"
# CLIP_benchmark's file codes that are not ISO 639-1.
ISO_CODES = CLIP_BENCHMARK_ISO
KNOWN_CODES = ISO_639_1 | set(ISO_CODES)


def language_files(directory: Path) -> dict[str, tuple[str, Path, Path]]:
    """ISO language -> (file code, class-name file, template file), for codes that have both files."""
    found = {}
    for names in sorted(directory.glob(f"*{CLASSNAMES_SUFFIX}")):
        code = check_code(names.name[: -len(CLASSNAMES_SUFFIX)], KNOWN_CODES, names, "imagenet1k",
                          "an ISO 639-1 code, or CLIP_benchmark's jp or cn")
        templates = directory / f"{code}{TEMPLATES_SUFFIX}"
        if templates.is_file():
            iso = ISO_CODES.get(code, code)
            if iso in found:
                raise ValueError(f"benchmark imagenet1k: {names} and {found[iso][1]} both hold {iso} class names; "
                                 f"keep one")
            found[iso] = (code, names, templates)
    return found


def read_class_set(names_path: Path, templates_path: Path, key: str) -> ClassSet:
    names = load_json_object(names_path).get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{names_path}: no list of class names under '{key}'")
    by_dataset = load_json_object(templates_path)
    templates = by_dataset.get(key, by_dataset.get(TEMPLATE_FALLBACK))
    if isinstance(templates, dict):
        raise ValueError(f"{templates_path}: class-specific templates (a dict under '{key}') are not supported")
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"{templates_path}: no templates under '{key}' or '{TEMPLATE_FALLBACK}'")
    return ClassSet(list(range(len(names))), [n.strip() for n in names],
                    [normalise_template(t, f"{templates_path} [{key}] {i}") for i, t in enumerate(templates)])


def read_imagenet1k(data_root=None, root=None, images=None, languages=None, classnames_dir=None,
                    key="imagenet1k") -> ClassificationBenchmark:
    try:
        directory = benchmark_dir(data_root, ["imagenet1k", "imagenet"], "val", root)
    except (FileNotFoundError, ValueError):
        if not (classnames_dir and images):
            raise
        directory = Path(classnames_dir).expanduser()
    files_dir = Path(classnames_dir).expanduser() if classnames_dir else directory
    files = language_files(files_dir)
    if not files:
        raise FileNotFoundError(f"benchmark imagenet1k: no <lang>{CLASSNAMES_SUFFIX} with a matching "
                                f"<lang>{TEMPLATES_SUFFIX} in {files_dir}")
    chosen = select_languages(list(files), None if languages is None else list(languages), f"imagenet1k ({files_dir})")
    per_language = {lang: read_class_set(files[lang][1], files[lang][2], key) for lang in chosen}
    counts = {lang: len(s.names) for lang, s in per_language.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"benchmark imagenet1k: the class-name files disagree on the number of classes: {counts}")
    val = locate_val_folder("imagenet1k", directory, data_root, images)
    samples = labelled_images(val, next(iter(counts.values())), "imagenet1k", exact=True)
    native = {iso: files[iso][0] for iso in chosen if files[iso][0] != iso}
    return ClassificationBenchmark("imagenet1k", key, samples, per_language, native)
