"""`altclip-train eval` against the real `clip_benchmark eval` CLI on the same model and data (`make test-interop`).

CLIP_benchmark runs as its console script does (`clip_benchmark_cli.py`: under numpy >= 2.4 its zero-shot
`accuracy` needs a one-line fix to run at all). The model is our own open_clip-format export
(`altclip-train export <phase-2 dir> --format open_clip`) of a tiny phase-1 + phase-2 run, which CLIP_benchmark loads with `--model_type open_clip --model local-dir:DIR`; the data is a tiny fixture in the released
layouts both tools read (`clip_benchmark_data.py`): Flickr30k-200 and XTD10 retrieval in three languages each
(FLORES-200 codes, and XTD10's `jp`) and ImageNet-1k-style zero-shot classification in English and Japanese.
Every metric CLIP_benchmark reports (image/text retrieval recall@1/5/10 per language, acc1, acc5 and mean
per-class recall per language) must equal ours, read from the results JSON `altclip-train eval` writes in
CLIP_benchmark's format, within 1e-3; the set of (dataset, language) results must be the same too, so the
language codes in the two tools' files agree.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from clip_benchmark_data import (CLASSES, FLORES, XTD10, build_benchmarks, open_clip_export,
                                 run, spread_out, trained_phase2)

TOLERANCE = 1e-3
RECALL_KS = ("1", "5", "10")
# CLIP_benchmark's console script, with its zero-shot accuracy made to run under numpy >= 2.4 (see the file).
CLIP_BENCHMARK = [sys.executable, str(Path(__file__).with_name("clip_benchmark_cli.py"))]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return build_benchmarks(tmp_path_factory.mktemp("clip_benchmark_data"))


@pytest.fixture(scope="module")
def exported(tiny_teacher, tiny_student, parallel_dir, data_root, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("export")
    final = spread_out(trained_phase2(tiny_teacher, tiny_student, parallel_dir, work), data_root)
    return open_clip_export(final, work / "open_clip", work / "export.log")


def clip_benchmark_results(model: Path, root: Path, out: Path) -> dict[tuple[str, str], dict]:
    """(dataset, language) -> metrics, from CLIP_benchmark's own CLI (one run per dataset, as its language list
    applies to every dataset of a run)."""
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model_type", "open_clip", "--model", f"local-dir:{model}", "--pretrained", "none", "--no_amp",
              "--num_workers", "0", "--batch_size", "5", "--output", str(out / "{dataset}_{language}_{task}.json")]
    runs = [
        ["--dataset", "flickr30k-200", "--dataset_root", str(root), "--language", *FLORES.values(),
         "--recall_k", *RECALL_KS],
        ["--dataset", "xtd10", "--dataset_root", str(root), "--language", *XTD10.values(), "--recall_k", *RECALL_KS],
    ]
    imagenet = root / "imagenet1k"
    for code in ("en", "jp"):
        runs.append(["--dataset", "imagenet1k", "--dataset_root", str(imagenet), "--language", code,
                     "--custom_classname_file", str(imagenet / f"{code}_classnames.json"),
                     "--custom_template_file", str(imagenet / f"{code}_zeroshot_classification_templates.json")])
    for number, arguments in enumerate(runs):
        run([*CLIP_BENCHMARK, "eval", *common, *arguments], out / f"clip_benchmark-{number}.log")
    return read_results(out)


def our_results(model: Path, root: Path, out: Path) -> dict[tuple[str, str], dict]:
    """The same from `altclip-train eval`, read back from the CLIP_benchmark-format JSON it writes."""
    languages = "[" + ",".join(XTD10) + "]"
    run([sys.executable, "-m", "altclip_train", "eval", f"models.phase2={model}",
         "benchmarks=[flickr30k_200,xtd10,imagenet1k]", f"data_root={root}", f"output_dir={out}", "device=cpu",
         "num_workers=0", "batch_size=5", f"benchmark_options={{xtd10: {{languages: {languages}}}}}"],
        out.parent / f"{out.name}.log")
    return read_results(out / "clip_benchmark")


def read_results(folder: Path) -> dict[tuple[str, str], dict]:
    results = {}
    for path in sorted(folder.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        results[(document["dataset"], document["language"])] = document["metrics"]
    return results


def compare(theirs: dict, ours: dict) -> float:
    """Largest |difference| over every metric CLIP_benchmark reports; prints both tools' values."""
    assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    worst = 0.0
    for key in sorted(theirs):
        assert set(theirs[key]) <= set(ours[key]), (key, sorted(theirs[key]), sorted(ours[key]))
        for metric, value in sorted(theirs[key].items()):
            mine = ours[key][metric]
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(mine), (key, metric)
                continue
            worst = max(worst, abs(mine - value))
            print(f"{key[0]:>14} {key[1]:>9} {metric:>28}: clip_benchmark {value:.6f}  altclip-train {mine:.6f}")
    print(f"max |delta| = {worst:.3g} over {sum(len(m) for m in theirs.values())} metrics")
    return worst


def expected_keys() -> set[tuple[str, str]]:
    return ({("flickr30k-200", code) for code in FLORES.values()} | {("xtd10", code) for code in XTD10.values()}
            | {("imagenet1k", code) for code in ("en", "jp")})


def parity(model: Path, data_root: Path, work: Path) -> None:
    theirs = clip_benchmark_results(model, data_root, work / "clip_benchmark")
    assert set(theirs) == expected_keys()
    assert len(theirs[("xtd10", "jp")]) == 2 * len(RECALL_KS)  # image and text recall at each k
    assert set(theirs[("imagenet1k", "jp")]) == {"acc1", "acc5", "mean_per_class_recall"}
    ours = our_results(model, data_root, work / "ours")
    worst = compare(theirs, ours)
    assert worst <= TOLERANCE
    # Rankings differ per caption (a model ranking every caption's images alike gives recall@k = k/12 everywhere,
    # and would agree with a reader whose captions were misaligned).
    recalls = {round(m[f"{side}_retrieval_recall@{k}"], 6) for key, m in theirs.items() if key[0] != "imagenet1k"
               for side in ("image", "text") for k in RECALL_KS}
    assert recalls - {round(k / 12, 6) for k in (0, 1, 5, 10)}, recalls
    assert len(CLASSES) >= 5  # acc5 is a number, not NaN


@pytest.mark.slow
def test_clip_benchmark_and_altclip_train_agree_on_our_open_clip_export(exported, data_root, tmp_path):
    assert (exported / "open_clip_config.json").is_file() and (exported / "config.json").is_file()
    parity(exported, data_root, tmp_path)


def test_the_fixture_reads_as_released(data_root):
    from altclip_train.evaluate.benchmarks import open_benchmark

    flickr = open_benchmark("flickr30k_200", data_root)
    assert set(flickr.languages) == set(FLORES.values())  # eng_captions.txt is in the folder, not a language
    assert (data_root / "flickr30k-200" / "eng_captions.txt").is_file()
    xtd = open_benchmark("xtd10", data_root)
    assert set(xtd.languages) == set(XTD10) and xtd.native_codes == {"ja": "jp"}
    annotation = json.loads((data_root / "xtd10-jp.json").read_text(encoding="utf-8"))
    assert len(annotation["image_paths"]) == len(xtd.images) == 12


def test_our_code_lists_are_clip_benchmarks():
    from clip_benchmark.datasets import crossmodal3600, flores_langs, xtd10

    from altclip_train.evaluate.benchmarks.codes import FLORES200_CODES, XM3600_CODES, XTD10_CODES

    assert list(FLORES200_CODES) == list(flores_langs.flores_languages)
    assert sorted(XTD10_CODES) == sorted(xtd10.SUPPORTED_LANGUAGES)
    assert sorted(XM3600_CODES) == sorted(crossmodal3600.SUPPORTED_LANGUAGES)
