"""Build the digits demo's data: images, caption tables, parallel corpora, eval files and tokenizer texts.

The source images are scikit-learn's handwritten digits (`load_digits`: 1,797 real 8x8 scans with 16
grey levels, bundled with scikit-learn, no download). Captions come from `captions.yaml` (number words
and caption templates in nine languages, aligned by index) and `everyday.tsv` (general sentences).

Layout under OUT_DIR (every path inside the CSV/TSV files is relative to OUT_DIR):

    images/train/<digit>/<idx>.png     RGB PNGs, image_size x image_size; <idx> is the dataset index
    images/test/<digit>/<idx>.png      stratified held-out split; never referenced by a training file
    teacher_pairs.csv                  image,caption,lang  step 0: English captions of train images
    parallel/<lang>.tsv                en,<lang>           step 1: template captions + everyday pairs
    multilingual_pairs.csv             image,caption,lang  step 2: train images, captions in 9 languages
    eval/classnames/<lang>.txt         step 3: the ten number words, line i = digit i
    eval/templates/<lang>.txt          step 3: held-out templates with {} (never used in training)
    texts/<lang>.txt                   tokenizer-training sentences (train captions + everyday)
    demo.json                          the build parameters and counts

The eval image folder is images/test itself (class sub-folders 0..9). Outputs depend only on the
arguments: the same seed gives byte-identical files, wherever OUT_DIR is.

Run: python -m altclip_train.demo.build_data OUT_DIR [--image-size 32] [--test-fraction 0.2] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

LANGUAGES = ("en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it")
NUM_CLASSES = 10
CAPTIONS_PATH = Path(__file__).with_name("captions.yaml")
EVERYDAY_PATH = Path(__file__).with_name("everyday.tsv")
MIN_TRAIN_TEMPLATES = 6
MIN_EVAL_TEMPLATES = 3
MANIFEST_NAME = "demo.json"

# Independent random streams, so changing how many captions one table samples leaves the
# image split and the other table untouched.
_SPLIT_STREAM, _TEACHER_STREAM, _MULTILINGUAL_STREAM = 0, 1, 2
_FORBIDDEN_CHARS = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return"}


# ------------------------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class LanguageCaptions:
    """One language's number words and caption templates ("{}" marks the number word)."""

    lang: str
    numbers: tuple[str, ...]
    train_templates: tuple[str, ...]
    eval_templates: tuple[str, ...]

    def train_caption(self, template_index: int, digit: int) -> str:
        return fill_template(self.train_templates[template_index], self.numbers[digit])

    def eval_caption(self, template_index: int, digit: int) -> str:
        return fill_template(self.eval_templates[template_index], self.numbers[digit])


def fill_template(template: str, word: str) -> str:
    return template.replace("{}", word)


def _check_text(text: object, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: expected a non-empty string, got {text!r}")
    for char, name in _FORBIDDEN_CHARS.items():
        if char in text:
            raise ValueError(f"{where}: contains {name}: {text!r}")
    if text != text.strip():
        raise ValueError(f"{where}: has leading or trailing whitespace: {text!r}")
    return text


def _check_template(template: object, where: str) -> str:
    template = _check_text(template, where)
    if template.count("{}") != 1 or "{" in template.replace("{}", "") or "}" in template.replace("{}", ""):
        raise ValueError(f"{where}: a template needs exactly one '{{}}' and no other braces: {template!r}")
    return template


def _string_list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def load_captions(path: str | Path = CAPTIONS_PATH) -> dict[str, LanguageCaptions]:
    """Read and validate captions.yaml: every language, ten distinct number words, aligned templates."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"captions file not found: {path}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping from language code to captions")
    missing = [lang for lang in LANGUAGES if lang not in raw]
    unknown = sorted(set(raw) - set(LANGUAGES))
    if missing or unknown:
        raise ValueError(f"{path}: languages must be exactly {', '.join(LANGUAGES)}; "
                         f"missing {missing or 'none'}, unknown {unknown or 'none'}")

    captions = {}
    for lang in LANGUAGES:
        entry = raw[lang]
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {lang}: expected a mapping with numbers, train_templates, eval_templates")
        for key in ("numbers", "train_templates", "eval_templates"):
            if key not in entry:
                raise ValueError(f"{path}: {lang}: missing key '{key}'")
        numbers = [_check_text(word, f"{path}: {lang}.numbers[{i}]")
                   for i, word in enumerate(_string_list(entry["numbers"], f"{path}: {lang}.numbers"))]
        if len(numbers) != NUM_CLASSES or len(set(numbers)) != NUM_CLASSES:
            raise ValueError(f"{path}: {lang}.numbers must hold {NUM_CLASSES} distinct words (digit 0..9), "
                             f"got {numbers}")
        splits = {}
        for key, minimum in (("train_templates", MIN_TRAIN_TEMPLATES), ("eval_templates", MIN_EVAL_TEMPLATES)):
            templates = [_check_template(template, f"{path}: {lang}.{key}[{i}]")
                         for i, template in enumerate(_string_list(entry[key], f"{path}: {lang}.{key}"))]
            if len(templates) < minimum:
                raise ValueError(f"{path}: {lang}.{key} needs at least {minimum} templates, got {len(templates)}")
            if len(set(templates)) != len(templates):
                raise ValueError(f"{path}: {lang}.{key} repeats a template")
            splits[key] = tuple(templates)
        shared = set(splits["train_templates"]) & set(splits["eval_templates"])
        if shared:
            raise ValueError(f"{path}: {lang}: eval templates must be held out, but these are also "
                             f"train templates: {sorted(shared)}")
        captions[lang] = LanguageCaptions(lang, tuple(numbers), splits["train_templates"], splits["eval_templates"])

    # Train template i is the translation of English template i in every language (the parallel
    # corpus pairs them by index), so the counts must agree.
    for key in ("train_templates", "eval_templates"):
        counts = {lang: len(getattr(captions[lang], key)) for lang in LANGUAGES}
        if len(set(counts.values())) != 1:
            raise ValueError(f"{path}: {key} must be aligned across languages (same count, same order); "
                             f"counts are {counts}")
    return captions


def load_everyday(path: str | Path = EVERYDAY_PATH) -> list[dict[str, str]]:
    """Read everyday.tsv: a header naming the nine languages, then one translated sentence per row."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"everyday sentences file not found: {path}") from None
    if not lines:
        raise ValueError(f"{path}: empty file; expected a header row with columns {' '.join(LANGUAGES)}")
    header = lines[0].split("\t")
    if sorted(header) != sorted(LANGUAGES):
        raise ValueError(f"{path}:1: header must name the columns {' '.join(LANGUAGES)} (tab-separated), "
                         f"got {header}")
    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise ValueError(f"{path}:{line_number}: expected {len(header)} tab-separated cells, got {len(cells)}")
        row = {lang: _check_text(cell, f"{path}:{line_number} column '{lang}'") for lang, cell in zip(header, cells)}
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no sentences after the header")
    return rows


# ------------------------------------------------------------------------------------------- output paths


@dataclass(frozen=True)
class DemoData:
    """Where build_demo_data put each file; `DemoData.at(out_dir)` rebuilds the same paths."""

    root: Path
    train_images: Path
    test_images: Path
    eval_images: Path
    teacher_pairs: Path
    multilingual_pairs: Path
    parallel_dir: Path
    eval_classnames_dir: Path
    eval_templates_dir: Path
    texts_dir: Path
    manifest: Path
    languages: tuple[str, ...] = LANGUAGES

    @classmethod
    def at(cls, root: str | Path) -> "DemoData":
        root = Path(root)
        return cls(
            root=root,
            train_images=root / "images" / "train",
            test_images=root / "images" / "test",
            eval_images=root / "images" / "test",
            teacher_pairs=root / "teacher_pairs.csv",
            multilingual_pairs=root / "multilingual_pairs.csv",
            parallel_dir=root / "parallel",
            eval_classnames_dir=root / "eval" / "classnames",
            eval_templates_dir=root / "eval" / "templates",
            texts_dir=root / "texts",
            manifest=root / MANIFEST_NAME,
        )

    @classmethod
    def from_dir(cls, root: str | Path) -> "DemoData":
        """An already built demo directory; fails if build_demo_data has not completed there."""
        data = cls.at(root)
        if not data.manifest.is_file():
            raise FileNotFoundError(f"{data.manifest} not found: build the demo data first "
                                    f"(python -m altclip_train.demo.build_data {data.root})")
        return data

    @property
    def english_texts(self) -> Path:
        """The teacher's tokenizer corpus (English only)."""
        return self.texts_file("en")

    def _check_lang(self, lang: str) -> str:
        if lang not in self.languages:
            raise ValueError(f"unknown language '{lang}'; the demo has {', '.join(self.languages)}")
        return lang

    def parallel_file(self, lang: str) -> Path:
        if self._check_lang(lang) == "en":
            raise ValueError("there is no parallel/en.tsv: the English side of every parallel file is the source")
        return self.parallel_dir / f"{lang}.tsv"

    def classnames_file(self, lang: str) -> Path:
        return self.eval_classnames_dir / f"{self._check_lang(lang)}.txt"

    def templates_file(self, lang: str) -> Path:
        return self.eval_templates_dir / f"{self._check_lang(lang)}.txt"

    def texts_file(self, lang: str) -> Path:
        return self.texts_dir / f"{self._check_lang(lang)}.txt"

    def all_texts(self, lang: str | None = None) -> list[str]:
        """Sentences for tokenizer training: one language's (e.g. "en" for the teacher's BPE), or all
        nine languages' (None, for the student's SentencePiece). Held-out eval templates are excluded."""
        langs = self.languages if lang is None else (self._check_lang(lang),)
        return [line for code in langs for line in self.texts_file(code).read_text(encoding="utf-8").splitlines()]

    def read_manifest(self) -> dict:
        return json.loads(self.manifest.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------- building


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices; each class puts round(count * test_fraction) images in test."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    train, test = [], []
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(labels == digit)
        n_test = int(round(len(members) * test_fraction))
        if not 0 < n_test < len(members):
            raise ValueError(f"test_fraction={test_fraction} leaves digit {digit} ({len(members)} images) "
                             f"with {n_test} test images; both splits need at least one")
        shuffled = rng.permutation(members)
        test.append(shuffled[:n_test])
        train.append(shuffled[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def digit_to_image(pixels: np.ndarray, image_size: int) -> Image.Image:
    """An 8x8 array of grey levels 0..16 -> an RGB image, upsampled bicubically (white ink on black)."""
    grey = np.clip(np.rint(pixels.astype(np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    image = Image.fromarray(grey)  # 2-D uint8 -> mode "L"
    return image.resize((image_size, image_size), Image.Resampling.BICUBIC).convert("RGB")


def image_relpath(split: str, digit: int, index: int) -> str:
    return f"images/{split}/{digit}/{index:04d}.png"


def _sample_templates(rng: np.random.Generator, n_templates: int, k: int) -> list[int]:
    return sorted(int(i) for i in rng.choice(n_templates, size=k, replace=False))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _clear_previous_build(data: DemoData) -> None:
    # A stale build with another seed would leave its test images in images/train; only the paths
    # this builder owns are removed, never anything else in OUT_DIR.
    for directory in (data.root / "images", data.parallel_dir, data.root / "eval", data.texts_dir):
        if directory.exists():
            shutil.rmtree(directory)
    for file in (data.teacher_pairs, data.multilingual_pairs, data.manifest):
        file.unlink(missing_ok=True)


def build_demo_data(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
    teacher_captions_per_image: int = 3,
    multilingual_captions_per_language: int = 1,
    captions_path: str | Path = CAPTIONS_PATH,
    everyday_path: str | Path = EVERYDAY_PATH,
) -> DemoData:
    """Write every file the demo's four steps read into `out_dir` (see the module docstring) and
    return their paths. Deterministic: the same arguments give byte-identical files."""
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8 (the scans are 8x8), got {image_size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    captions = load_captions(captions_path)
    everyday = load_everyday(everyday_path)
    n_templates = len(captions["en"].train_templates)
    for name, k in (("teacher_captions_per_image", teacher_captions_per_image),
                    ("multilingual_captions_per_language", multilingual_captions_per_language)):
        if not 1 <= k <= n_templates:
            raise ValueError(f"{name} must be between 1 and the {n_templates} train templates, got {k}")

    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)

    data = DemoData.at(out_dir)
    data.root.mkdir(parents=True, exist_ok=True)
    _clear_previous_build(data)

    for split, indices in (("train", train_idx), ("test", test_idx)):
        for digit in range(NUM_CLASSES):
            (data.root / "images" / split / str(digit)).mkdir(parents=True, exist_ok=True)
        for index in indices:
            image = digit_to_image(digits.images[index], image_size)
            image.save(data.root / image_relpath(split, int(labels[index]), int(index)), format="PNG")

    train_images = [(image_relpath("train", int(labels[i]), int(i)), int(labels[i])) for i in train_idx]

    english = captions["en"]
    rng = np.random.default_rng([seed, _TEACHER_STREAM])
    teacher_rows = [
        [image, english.train_caption(t, digit), "en"]
        for image, digit in train_images
        for t in _sample_templates(rng, n_templates, teacher_captions_per_image)
    ]
    _write_csv(data.teacher_pairs, ["image", "caption", "lang"], teacher_rows)

    rng = np.random.default_rng([seed, _MULTILINGUAL_STREAM])
    multilingual_rows = [
        [image, captions[lang].train_caption(t, digit), lang]
        for image, digit in train_images
        for lang in LANGUAGES
        for t in _sample_templates(rng, n_templates, multilingual_captions_per_language)
    ]
    _write_csv(data.multilingual_pairs, ["image", "caption", "lang"], multilingual_rows)

    parallel_rows = {}
    data.parallel_dir.mkdir(parents=True, exist_ok=True)
    for lang in LANGUAGES[1:]:
        pairs = [(english.train_caption(t, digit), captions[lang].train_caption(t, digit))
                 for t in range(n_templates) for digit in range(NUM_CLASSES)]
        pairs += [(row["en"], row[lang]) for row in everyday]
        _write_lines(data.parallel_file(lang), [f"en\t{lang}"] + [f"{en}\t{other}" for en, other in pairs])
        parallel_rows[lang] = len(pairs)

    for lang in LANGUAGES:
        _write_lines(data.classnames_file(lang), list(captions[lang].numbers))
        _write_lines(data.templates_file(lang), list(captions[lang].eval_templates))
        train_captions = [captions[lang].train_caption(t, digit)
                          for t in range(n_templates) for digit in range(NUM_CLASSES)]
        _write_lines(data.texts_file(lang), _unique(train_captions + [row[lang] for row in everyday]))

    train_per_digit = np.bincount(labels[train_idx], minlength=NUM_CLASSES).tolist()
    test_per_digit = np.bincount(labels[test_idx], minlength=NUM_CLASSES).tolist()
    manifest = {
        "source": "sklearn.datasets.load_digits",
        "image_size": image_size,
        "test_fraction": test_fraction,
        "seed": seed,
        "teacher_captions_per_image": teacher_captions_per_image,
        "multilingual_captions_per_language": multilingual_captions_per_language,
        "languages": list(LANGUAGES),
        "counts": {
            "train_images": len(train_idx),
            "test_images": len(test_idx),
            "train_per_digit": train_per_digit,
            "test_per_digit": test_per_digit,
            "teacher_pairs": len(teacher_rows),
            "multilingual_pairs": len(multilingual_rows),
            "parallel_rows": parallel_rows,
            "everyday_sentences": len(everyday),
            "train_templates": n_templates,
            "eval_templates": len(english.eval_templates),
        },
    }
    data.manifest.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m altclip_train.demo.build_data",
                                     description="Build the handwritten-digits demo data.")
    parser.add_argument("out_dir", help="output directory (previous demo outputs in it are replaced)")
    parser.add_argument("--image-size", type=int, default=32, help="side of the upsampled PNGs (default 32)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share per digit (default 0.2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-captions-per-image", type=int, default=3)
    parser.add_argument("--multilingual-captions-per-language", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        data = build_demo_data(
            args.out_dir, image_size=args.image_size, test_fraction=args.test_fraction, seed=args.seed,
            teacher_captions_per_image=args.teacher_captions_per_image,
            multilingual_captions_per_language=args.multilingual_captions_per_language,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = data.read_manifest()["counts"]
    print(f"demo data in {data.root}")
    print(f"  images: {counts['train_images']} train, {counts['test_images']} test "
          f"({args.image_size}x{args.image_size} RGB PNG)")
    print(f"  teacher_pairs.csv: {counts['teacher_pairs']} English captions")
    print(f"  multilingual_pairs.csv: {counts['multilingual_pairs']} captions in {len(data.languages)} languages")
    print("  parallel/: " + ", ".join(f"{lang} {n}" for lang, n in counts["parallel_rows"].items()) + " pairs")
    print(f"  eval/: {NUM_CLASSES} class names and {counts['eval_templates']} held-out templates per language")
    print(f"  texts/: {len(data.all_texts())} tokenizer sentences ({len(data.all_texts('en'))} English)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
