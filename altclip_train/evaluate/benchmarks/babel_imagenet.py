"""Babel-ImageNet: zero-shot ImageNet classification with class names translated into about 100 languages.

Each language covers the subset of ImageNet's 1,000 classes whose names could be translated reliably. The files
are the two JSON files CLIP_benchmark ships next to its dataset code, used as they are:

    <data_root>/babel_imagenet/
        babel_imagenet.json          {"<LANG>": [[class ids...], [class names...]], ...}  (ids index ImageNet's
                                     1,000 classes in sorted-wnid order; upper-case language codes)
        nllb_dist13b_prompts.json    {"<LANG>": ["<prompt with {}>", ...], ...}            (NLLB-translated prompts)
        val/<wnid>/*.JPEG            ImageNet validation images (or see `imagenet.py` for a shared copy)

As in CLIP_benchmark, a language is scored on the images of its own classes only, against its own classes only.
We report lower-case codes; CLIP_benchmark's results JSON gets the same lower-case code it takes on its command
line. Options: `root`, `images`, `languages`, `classnames_file`, `templates_file`.
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
from altclip_train.evaluate.benchmarks.imagenet import labelled_images, locate_val_folder

CLASSNAMES_FILE = "babel_imagenet.json"
TEMPLATES_FILE = "nllb_dist13b_prompts.json"


def class_set(entry, templates, where: str) -> ClassSet:
    if not (isinstance(entry, list) and len(entry) == 2 and len(entry[0]) == len(entry[1])):
        raise ValueError(f"{where}: expected [[class ids], [class names]] of equal length")
    ids, names = entry
    if not all(isinstance(i, int) for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{where}: class ids must be distinct integers")
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"{where}: no prompt templates")
    return ClassSet(list(ids), [str(n).strip() for n in names],
                    [normalise_template(t, f"{where} template {i}") for i, t in enumerate(templates)])


def read_babel_imagenet(data_root=None, root=None, images=None, languages=None, classnames_file=None,
                        templates_file=None) -> ClassificationBenchmark:
    directory = benchmark_dir(data_root, ["babel_imagenet", "babel-imagenet"], CLASSNAMES_FILE,
                              root or (Path(classnames_file).parent if classnames_file else None))
    names_path = Path(classnames_file) if classnames_file else directory / CLASSNAMES_FILE
    templates_path = Path(templates_file) if templates_file else directory / TEMPLATES_FILE
    names, templates = load_json_object(names_path), load_json_object(templates_path)
    available = [code.lower() for code in names if code in templates]
    if not available:
        raise ValueError(f"{names_path} and {templates_path} share no language")
    wanted = None if languages is None else [lang.lower() for lang in languages]
    chosen = select_languages(available, wanted, f"babel_imagenet ({names_path})")
    per_language = {
        lang: class_set(names[lang.upper()], templates[lang.upper()], f"{names_path} [{lang.upper()}]")
        for lang in chosen
    }
    highest = max(max(s.classes) for s in per_language.values())
    val = locate_val_folder("babel_imagenet", directory, data_root, images)
    used = {c for s in per_language.values() for c in s.classes}
    every = labelled_images(val, highest + 1, "babel_imagenet", exact=False)
    samples = [(path, label) for path, label in every if label in used]
    return ClassificationBenchmark("babel_imagenet", "babel_imagenet", samples, per_language)
