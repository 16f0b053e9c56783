"""Digits demo data: captions.yaml and everyday.tsv are complete and aligned; build_demo_data writes a
disjoint stratified split, the right files and counts, RGB PNGs, and byte-identical output per seed."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from altclip_train.demo.build_data import (
    CAPTIONS_PATH,
    EVERYDAY_PATH,
    LANGUAGES,
    DemoData,
    build_demo_data,
    load_captions,
    load_everyday,
    main,
)

IMAGE_SIZE = 20  # not the default 32, so the test sees the argument honoured
TEST_FRACTION = 0.2


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def held_out_captions(entry) -> list[str]:
    return [entry.eval_caption(t, d) for t in range(len(entry.eval_templates)) for d in range(10)]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoData:
    return build_demo_data(tmp_path_factory.mktemp("demo"), image_size=IMAGE_SIZE, test_fraction=TEST_FRACTION, seed=0)


@pytest.fixture(scope="module")
def digit_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


# ------------------------------------------------------------------------------------------- hand-written inputs


def test_captions_yaml_has_nine_languages_ten_words_and_aligned_held_out_templates():
    raw = yaml.safe_load(CAPTIONS_PATH.read_text(encoding="utf-8"))
    assert list(raw) == list(LANGUAGES)
    train_counts, eval_counts = set(), set()
    for lang, entry in raw.items():
        assert len(entry["numbers"]) == 10 and len(set(entry["numbers"])) == 10, lang
        assert len(entry["train_templates"]) >= 6 and len(entry["eval_templates"]) >= 3, lang
        for template in entry["train_templates"] + entry["eval_templates"]:
            assert template.count("{}") == 1 and template.count("{") == 1 and template.count("}") == 1, template
        assert not set(entry["train_templates"]) & set(entry["eval_templates"]), lang
        train_counts.add(len(entry["train_templates"]))
        eval_counts.add(len(entry["eval_templates"]))
    assert len(train_counts) == 1 and len(eval_counts) == 1
    assert raw["en"]["numbers"] == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

    captions = load_captions()
    for lang, entry in captions.items():
        # every digit yields a different caption from every template, and no eval caption is a train caption
        train = {entry.train_caption(t, d) for t in range(len(entry.train_templates)) for d in range(10)}
        held_out = set(held_out_captions(entry))
        assert len(train) == 10 * len(entry.train_templates) and len(held_out) == 10 * len(entry.eval_templates)
        assert not train & held_out, lang


def test_everyday_tsv_has_nine_full_columns_and_300_distinct_sentences():
    header, rows = read_tsv(EVERYDAY_PATH)
    assert header == list(LANGUAGES)
    assert len(rows) >= 300
    for number, cells in enumerate(rows, start=2):
        assert len(cells) == 9, f"line {number}"
        assert all(cell.strip() == cell and cell for cell in cells), f"line {number}"
    for column, lang in enumerate(LANGUAGES):
        assert len({cells[column] for cells in rows}) == len(rows), f"duplicate {lang} sentence"
    # the translations are in their own scripts, not copies of the English column
    assert all(any("\u4e00" <= char <= "\u9fff" for char in cells[1]) for cells in rows)
    assert all(any("\u0400" <= char <= "\u04ff" for char in cells[4]) for cells in rows)
    assert all(any("\u0600" <= char <= "\u06ff" for char in cells[7]) for cells in rows)
    assert load_everyday() == [dict(zip(LANGUAGES, cells)) for cells in rows]


def test_bad_captions_and_sentences_fail_naming_the_key_or_line(tmp_path):
    raw = yaml.safe_load(CAPTIONS_PATH.read_text(encoding="utf-8"))
    raw["fr"]["train_templates"][2] = "le chiffre {} et {}"
    (tmp_path / "two_slots.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match=r"two_slots.yaml: fr\.train_templates\[2\]: a template needs exactly one"):
        load_captions(tmp_path / "two_slots.yaml")

    raw = yaml.safe_load(CAPTIONS_PATH.read_text(encoding="utf-8"))
    raw["ja"]["train_templates"].pop()
    (tmp_path / "misaligned.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match="train_templates must be aligned across languages"):
        load_captions(tmp_path / "misaligned.yaml")

    raw = yaml.safe_load(CAPTIONS_PATH.read_text(encoding="utf-8"))
    raw["ko"]["eval_templates"].append(raw["ko"]["train_templates"][0])
    (tmp_path / "leaky.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match="ko: eval templates must be held out"):
        load_captions(tmp_path / "leaky.yaml")

    lines = EVERYDAY_PATH.read_text(encoding="utf-8").splitlines()[:4]
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\t "
    (tmp_path / "everyday.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"everyday.tsv:3 column 'it'"):
        load_everyday(tmp_path / "everyday.tsv")


# ------------------------------------------------------------------------------------------- built data


def test_split_is_disjoint_stratified_and_complete(demo, digit_labels):
    def indices(root: Path) -> dict[int, int]:
        return {int(path.stem): int(path.parent.name) for path in root.glob("*/*.png")}

    train, test = indices(demo.train_images), indices(demo.test_images)
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(range(len(digit_labels)))
    for split in (train, test):
        assert all(digit_labels[index] == digit for index, digit in split.items())
    per_digit = Counter(digit_labels.tolist())
    test_per_digit = Counter(test.values())
    assert test_per_digit == {digit: round(count * TEST_FRACTION) for digit, count in per_digit.items()}
    assert sorted(path.name for path in demo.eval_images.iterdir()) == [str(d) for d in range(10)]

    counts = demo.read_manifest()["counts"]
    assert counts["train_images"] == len(train) and counts["test_images"] == len(test)
    assert counts["test_per_digit"] == [test_per_digit[d] for d in range(10)]


def test_pngs_are_rgb_at_image_size(demo):
    paths = sorted(demo.root.glob("images/*/*/*.png"))
    for path in paths[::97]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
            pixels = np.asarray(image)
        assert pixels.max() > 128 and pixels.min() < 64  # real ink on a dark ground, not a blank tile
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_caption_tables_use_only_train_images_with_the_right_counts(demo):
    train_files = {str(path.relative_to(demo.root)) for path in demo.train_images.glob("*/*.png")}
    english = load_captions()["en"]

    teacher = read_csv(demo.teacher_pairs)
    assert list(teacher[0]) == ["image", "caption", "lang"]
    assert {row["image"] for row in teacher} == train_files
    assert len(teacher) == 3 * len(train_files)
    assert {row["lang"] for row in teacher} == {"en"}
    for row in teacher[:50]:
        digit = int(Path(row["image"]).parent.name)
        assert row["caption"] in {english.train_caption(t, digit) for t in range(len(english.train_templates))}

    multilingual = read_csv(demo.multilingual_pairs)
    assert {row["image"] for row in multilingual} == train_files
    assert len(multilingual) == len(LANGUAGES) * len(train_files)
    assert Counter(row["lang"] for row in multilingual) == {lang: len(train_files) for lang in LANGUAGES}
    eval_captions = {caption for entry in load_captions().values() for caption in held_out_captions(entry)}
    assert not {row["caption"] for row in teacher + multilingual} & eval_captions


def test_parallel_files_pair_aligned_template_captions_then_everyday_sentences(demo):
    captions, everyday = load_captions(), load_everyday()
    n_templates = len(captions["en"].train_templates)
    assert sorted(path.name for path in demo.parallel_dir.iterdir()) == sorted(f"{lang}.tsv" for lang in LANGUAGES[1:])
    for lang in LANGUAGES[1:]:
        header, rows = read_tsv(demo.parallel_file(lang))
        assert header == ["en", lang]
        assert all(len(row) == 2 and all(row) for row in rows)
        assert len(rows) == 10 * n_templates + len(everyday)
        assert rows[0] == [captions["en"].train_caption(0, 0), captions[lang].train_caption(0, 0)]
        assert rows[10 * 3 + 7] == [captions["en"].train_caption(3, 7), captions[lang].train_caption(3, 7)]
        assert rows[10 * n_templates:] == [[row["en"], row[lang]] for row in everyday]
    with pytest.raises(ValueError, match="no parallel/en.tsv"):
        demo.parallel_file("en")


def test_eval_files_hold_number_words_and_held_out_templates(demo):
    captions = load_captions()
    for lang in LANGUAGES:
        assert demo.classnames_file(lang).read_text(encoding="utf-8").splitlines() == list(captions[lang].numbers)
        templates = demo.templates_file(lang).read_text(encoding="utf-8").splitlines()
        assert templates == list(captions[lang].eval_templates)
        assert all(template.count("{}") == 1 for template in templates)


def test_tokenizer_texts_split_by_language_and_cover_the_eval_characters(demo):
    english = demo.all_texts("en")
    everything = demo.all_texts()
    assert demo.english_texts.read_text(encoding="utf-8").splitlines() == english
    assert set(english) < set(everything)
    assert not any("\u3040" <= char <= "\u30ff" or "\u0400" <= char <= "\u04ff" for char in "".join(english))
    captions = load_captions()
    for lang in LANGUAGES:
        texts = demo.all_texts(lang)
        assert captions[lang].train_caption(5, 9) in texts and len(texts) == len(set(texts))
        # held-out templates stay out of the tokenizer corpus, yet none of their characters is unknown to it
        held_out = held_out_captions(captions[lang])
        assert not set(held_out) & set(texts)
        assert set("".join(held_out)) <= set("".join(texts)), lang
    with pytest.raises(ValueError, match="unknown language 'de'"):
        demo.all_texts("de")


def test_same_seed_gives_identical_bytes_and_a_rebuild_leaves_no_stale_files(demo, tmp_path, capsys):
    other = tmp_path / "demo"
    build_demo_data(other, image_size=IMAGE_SIZE, test_fraction=TEST_FRACTION, seed=1)
    assert tree_bytes(other) != tree_bytes(demo.root)  # another seed, another split

    # rebuilding in place through the CLI must replace the seed-1 split, not add to it
    argv = [str(other), "--image-size", str(IMAGE_SIZE), "--test-fraction", str(TEST_FRACTION), "--seed", "0"]
    assert main(argv) == 0
    assert "1438 train, 359 test" in capsys.readouterr().out
    assert tree_bytes(other) == tree_bytes(demo.root)
    assert DemoData.from_dir(other).read_manifest()["seed"] == 0


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    with pytest.raises(ValueError, match="test_fraction must be between 0 and 1"):
        build_demo_data(tmp_path, test_fraction=1.0)
    with pytest.raises(ValueError, match="image_size must be an integer >= 8"):
        build_demo_data(tmp_path, image_size=4)
    with pytest.raises(ValueError, match="teacher_captions_per_image must be between 1 and"):
        build_demo_data(tmp_path, teacher_captions_per_image=99)
    with pytest.raises(FileNotFoundError, match="build the demo data first"):
        DemoData.from_dir(tmp_path / "nothing")
    assert main([str(tmp_path), "--test-fraction", "0"]) == 2
    assert "error: test_fraction" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # argument errors are raised before anything is written
