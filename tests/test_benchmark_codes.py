"""Which files the benchmark readers take as languages, under which codes, and what they write for CLIP_benchmark.

The readers read the files CLIP_benchmark reads (`<FLORES code>.txt`, `test_1kcaptions_<code>.txt`, its
Crossmodal-3600 keys, `<code>_classnames.json`), never a release's other text files as a language (Flickr30k-200's
`eng_captions.txt`), refuse an unknown code in one line naming the file, and write CLIP_benchmark's own codes
(`jp`, `cn`) into its results JSON while the report uses ISO 639-1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_train.evaluate.benchmarks import open_benchmark, write_clip_benchmark_results
from altclip_train.evaluate.benchmarks.codes import FLORES200_CODES, ISO_639_1, XM3600_CODES, XTD10_CODES

CAPTIONS = {"en": ["a red square", "a blue circle", "a green line"],
            "de": ["ein rotes Quadrat", "ein blauer Kreis", "eine grüne Linie"],
            "ja": ["赤い四角", "青い丸", "緑の線"], "zh": ["红色方块", "蓝色圆圈", "绿色线条"]}


def images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        pixels = np.full((8, 8, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


def lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def flickr30k_200(root: Path, index: str = "filenames.txt") -> Path:
    """NLLB-CLIP's release layout: index, `<FLORES code>.txt`, and `eng_captions.txt` (a copy of eng_Latn.txt)."""
    names = [f"{n}.png" for n in range(3)]
    images(root / "images", names)
    lines(root / index, names)
    lines(root / "eng_Latn.txt", CAPTIONS["en"])
    lines(root / "eng_captions.txt", CAPTIONS["en"])
    lines(root / "deu_Latn.txt", CAPTIONS["de"])
    lines(root / "jpn_Jpan.txt", CAPTIONS["ja"])
    return root


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_eng_captions_is_not_a_language_and_the_flores_files_are_read(tmp_path):
    flickr30k_200(tmp_path / "flickr30k-200")
    benchmark = open_benchmark("flickr30k-200", tmp_path)
    assert set(benchmark.languages) == {"eng_Latn", "deu_Latn", "jpn_Jpan"}
    assert benchmark.languages["deu_Latn"][1] == (1, [CAPTIONS["de"][1]])
    assert benchmark.native_codes == {} and benchmark.dataset == "flickr30k-200"
    flickr30k_200(tmp_path / "xtd200", index="test_image_names.txt")
    assert set(open_benchmark("xtd200", tmp_path).languages) == {"eng_Latn", "deu_Latn", "jpn_Jpan"}


@pytest.mark.parametrize("stray", ["english.txt", "eng_latn.txt", "zho.txt", "README.txt"])
def test_a_text_file_that_is_no_flores_code_is_refused_naming_it(tmp_path, stray):
    root = flickr30k_200(tmp_path / "flickr30k-200")
    lines(root / stray, CAPTIONS["en"])
    with pytest.raises(ValueError) as error:
        open_benchmark("flickr30k_200", tmp_path)
    message = one_line(error)
    assert str(root / stray) in message and "not a language code" in message and "eng_Latn" in message


def xtd10(root: Path, codes=("en", "de", "jp", "zh")) -> Path:
    names = [f"COCO_val2014_{n:012d}.jpg" for n in range(3)]
    images(root / "images", names)
    lines(root / "test_image_names.txt", names)
    for code in codes:
        lines(root / f"test_1kcaptions_{code}.txt", CAPTIONS["ja" if code in ("jp", "ja") else code])
    return root


def test_xtd10_reads_clip_benchmarks_codes_and_reports_jp_as_ja(tmp_path):
    xtd10(tmp_path / "xtd10")
    benchmark = open_benchmark("xtd10", tmp_path)
    assert set(benchmark.languages) == {"en", "de", "ja", "zh"} and benchmark.native_codes == {"ja": "jp"}


def test_xtd10_refuses_a_caption_file_clip_benchmark_would_not_read(tmp_path):
    root = xtd10(tmp_path / "xtd10", codes=("en", "ja"))  # CLIP_benchmark reads Japanese from ..._jp.txt only
    with pytest.raises(ValueError) as error:
        open_benchmark("xtd10", tmp_path)
    message = one_line(error)
    assert str(root / "test_1kcaptions_ja.txt") in message and "Japanese is jp" in message


def test_xm3600_refuses_a_key_that_is_not_one_of_its_36_codes(tmp_path):
    root = tmp_path / "xm3600"
    images(root / "images", ["k0.jpg", "k1.jpg"])
    rows = [{"image/key": "k0", "image/locale": "en", "en": {"caption": ["a"]}, "fil": {"caption": ["isang"]}},
            {"image/key": "k1", "image/locale": "en", "en": {"caption": ["b"]}, "jp": {"caption": ["b"]}}]
    lines(root / "captions.jsonl", [json.dumps(row) for row in rows])
    with pytest.raises(ValueError) as error:
        open_benchmark("xm3600", tmp_path)
    assert f"{root / 'captions.jsonl'}:2" in one_line(error) and "'jp'" in one_line(error)
    lines(root / "captions.jsonl", [json.dumps(rows[0])])
    assert set(open_benchmark("xm3600", tmp_path).languages) == {"en", "fil"}


def imagenet1k(root: Path, codes=("en", "jp", "cn")) -> Path:
    names = {"en": ["cat", "dog"], "jp": ["猫", "犬"], "ja": ["猫", "犬"], "cn": ["猫", "狗"],
             "english": ["cat", "dog"]}
    for wnid in ("n01", "n02"):
        images(root / "val" / wnid, [f"{wnid}.png"])
    for code in codes:
        (root / f"{code}_classnames.json").write_text(json.dumps({"imagenet1k": names[code]}), encoding="utf-8")
        (root / f"{code}_zeroshot_classification_templates.json").write_text(
            json.dumps({"imagenet1k": ["{c}"]}), encoding="utf-8")
    return root


def test_imagenet1k_codes_and_the_results_json_uses_clip_benchmarks(tmp_path):
    imagenet1k(tmp_path / "imagenet1k")
    benchmark = open_benchmark("imagenet1k", tmp_path)
    assert set(benchmark.languages) == {"en", "ja", "zh"}
    assert benchmark.native_codes == {"ja": "jp", "zh": "cn"}
    metrics = {lang: {"top1": 50.0, "top5": 100.0, "mean_per_class_recall": 50.0} for lang in benchmark.languages}
    written = write_clip_benchmark_results(tmp_path / "out", benchmark, "m", "/models/m", metrics)
    documents = {json.loads(path.read_text())["language"]: path.name for path in written}
    assert documents == {"en": "imagenet1k_m_en_zeroshot_classification.json",
                         "jp": "imagenet1k_m_jp_zeroshot_classification.json",
                         "cn": "imagenet1k_m_cn_zeroshot_classification.json"}


def test_imagenet1k_refuses_unknown_and_doubled_codes_naming_the_file(tmp_path):
    root = imagenet1k(tmp_path / "a" / "imagenet1k", codes=("en", "english"))
    with pytest.raises(ValueError) as error:
        open_benchmark("imagenet1k", tmp_path / "a")
    assert str(root / "english_classnames.json") in one_line(error)
    root = imagenet1k(tmp_path / "b" / "imagenet1k", codes=("en", "ja", "jp"))
    with pytest.raises(ValueError) as error:
        open_benchmark("imagenet1k", tmp_path / "b")
    assert "ja_classnames.json" in one_line(error) and "jp_classnames.json" in one_line(error)


def test_retrieval_results_json_languages(tmp_path):
    xtd10(tmp_path / "xtd10")
    flickr30k_200(tmp_path / "flickr30k-200")
    recalls = {"i2t_r@1": 50.0, "t2i_r@1": 25.0, "i2t_r@5": 100.0, "t2i_r@5": 100.0}
    for name, expected in (("xtd10", {"en", "de", "jp", "zh"}), ("flickr30k_200", {"eng_Latn", "deu_Latn", "jpn_Jpan"})):
        benchmark = open_benchmark(name, tmp_path)
        written = write_clip_benchmark_results(tmp_path / name, benchmark, "m", "p",
                                               {lang: recalls for lang in benchmark.languages})
        documents = [json.loads(path.read_text()) for path in written]
        assert {d["language"] for d in documents} == expected, name
        assert documents[0]["metrics"] == {"text_retrieval_recall@1": 0.5, "image_retrieval_recall@1": 0.25,
                                           "text_retrieval_recall@5": 1.0, "image_retrieval_recall@5": 1.0}


def test_code_lists_are_clip_benchmarks():
    assert len(FLORES200_CODES) == len(set(FLORES200_CODES)) == 201
    assert {"eng_Latn", "zho_Hans", "zho_Hant", "als_Latn"} <= set(FLORES200_CODES)
    assert "eng_captions" not in FLORES200_CODES
    assert "jp" in XTD10_CODES and "ja" not in XTD10_CODES and len(XTD10_CODES) == 11
    assert {"fil", "mi", "quz"} <= set(XM3600_CODES) and len(XM3600_CODES) == 36
    assert {"ja", "zh", "en"} <= ISO_639_1 and "jp" not in ISO_639_1 and "cn" not in ISO_639_1
