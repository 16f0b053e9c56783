"""The leakage check (evaluate/leakage.py): exact counts of benchmark captions and images found in a run's data.

A tiny XTD10-layout benchmark (10 images, captions in en and zh) and two tiny runs:

- phase 1: a corpus (en <-> zh) holding 3 benchmark English captions and 2 Chinese ones, each with other case,
  punctuation, width or whitespace, plus near misses that must not match; its corpus store is built exactly as
  training builds it;
- phase 2 (started from phase 1's `final/` dir): shards holding 2 benchmark images under other file names
  (same bytes), 1 re-encoded and 1 one-pixel-different benchmark image (other bytes: not leaks) and 1 more
  benchmark caption.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from altclip_train.evaluate import leakage as leakage_module
from altclip_train.evaluate.benchmarks import open_benchmark
from altclip_train.evaluate.leakage import check_leakage, normalise_text, training_data

EN = [f"A photo of object number {word}." for word in
      ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")]
ZH = [f"第{n}号物体的照片。" for n in "一二三四五六七八九十"]
# (benchmark caption index, how the training text spells it)
EN_IN_CORPUS = {0: "a photo of OBJECT number one", 1: "  A photo, of object   number two!! ", 2: "Ａ ＰＨＯＴＯ of object number three"}
ZH_IN_CORPUS = {0: "第一号物体的照片", 1: "「第二号物体的照片」"}
NEAR_MISSES = ["A photo of object number eleven.", "A photo of objects number four.", "photo of object number five"]
EN_IN_SHARDS = {5: "a PHOTO of object number six ..."}
IMAGES_IN_SHARDS = (3, 7)  # copied byte for byte under other names
REENCODED = 8  # same pixels, saved as JPEG: other bytes
TWEAKED = 4  # one pixel changed: its file shares the first kilobytes with the benchmark's, and is not a copy


def write_image(path: Path, index: int, fmt: str = "PNG", tweak_last_pixel: bool = False) -> Path:
    pixels = np.random.default_rng(index).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    if tweak_last_pixel:  # another image whose file differs from the original only near its end
        pixels[-1, -1] ^= 1
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture(scope="module")
def benchmark_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    xtd = root / "xtd10"
    (xtd / "images").mkdir(parents=True)
    names = [f"COCO_{index:03d}.png" for index in range(10)]
    for index, name in enumerate(names):
        write_image(xtd / "images" / name, index)
    (xtd / "test_image_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (xtd / "test_1kcaptions_en.txt").write_text("\n".join(EN) + "\n", encoding="utf-8")
    (xtd / "test_1kcaptions_zh.txt").write_text("\n".join(ZH) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def phase1_run(tmp_path_factory, tiny_teacher, tiny_student) -> Path:
    """A phase-1 run dir: its resolved config.yaml, a final/ model dir and its corpus store, built as training does."""
    from altclip_train.cli import compose_config
    from altclip_train.data.corpus_store import open_or_build
    from altclip_train.data.parallel import ParallelTextData

    root = tmp_path_factory.mktemp("phase1")
    rows = ["en\tzh"]
    rows += [f"{EN_IN_CORPUS[i]}\t{ZH[i]}xx" for i in EN_IN_CORPUS]  # the zh side of these is no benchmark caption
    rows += [f"unrelated sentence {i}\t{ZH_IN_CORPUS[i]}" for i in ZH_IN_CORPUS]
    rows += [f"{text}\t近似{n}" for n, text in enumerate(NEAR_MISSES)]
    rows += [f"filler sentence number {i}\t填充句子{i}" for i in range(40)]
    corpus = root / "en-zh.tsv"
    corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
    run_dir = root / "run"
    cfg = compose_config("distill", [f"model.teacher={tiny_teacher}", f"model.student={tiny_student}",
                                     f"data.corpora=[{{lang: zh, path: '{corpus}'}}]", f"run_dir={run_dir}",
                                     "debug=default", f"cache_dir={root / 'cache'}"])
    run_dir.mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    shutil.copytree(tiny_student, run_dir / "final")  # stands in for the exported student
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("_target_")
    module = ParallelTextData(**data)
    open_or_build(module.specs, module.languages, *module.tokenizations(), module.cache_dir)
    return run_dir


@pytest.fixture(scope="module")
def phase2_run(tmp_path_factory, phase1_run, benchmark_root, tiny_teacher) -> Path:
    from altclip_train.data.prepare_wds import prepare_wds

    root = tmp_path_factory.mktemp("phase2")
    images = root / "images"
    images.mkdir()
    lines = ["image,caption,lang"]
    for index in IMAGES_IN_SHARDS:  # same bytes, other names
        shutil.copy(benchmark_root / "xtd10" / "images" / f"COCO_{index:03d}.png", images / f"crawl_{index}.png")
        lines.append(f"crawl_{index}.png,a crawled caption {index},en")
    write_image(images / "reencoded.jpg", REENCODED, fmt="JPEG")
    lines.append("reencoded.jpg,another crawled caption,en")
    write_image(images / "tweaked.png", TWEAKED, tweak_last_pixel=True)
    lines.append("tweaked.png,a tweaked caption,en")
    for index in range(20, 26):
        write_image(images / f"other_{index}.png", index)
        lines.append(f"other_{index}.png,other caption {index},en")
    for index, text in EN_IN_SHARDS.items():
        write_image(images / f"text_leak_{index}.png", 100 + index)
        lines.append(f"text_leak_{index}.png,{text},en")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare_wds(root / "pairs.csv", root / "shards", image_root=images, shard_size=4)
    run_dir = root / "run"
    run_dir.mkdir()
    config = {"run_dir": str(run_dir), "name": "tiny-contrastive",
              "model": {"model": {"teacher": str(tiny_teacher), "student": str(phase1_run / "final")},
                        "tokenizer": str(phase1_run / "final")},
              "data": {"_target_": "altclip_train.data.image_text.ImageTextData", "shards": str(root / "shards"),
                       "languages": ["en", "zh"], "default_lang": "en"}}
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    return run_dir


@pytest.fixture(scope="module")
def xtd10(benchmark_root):
    return {"xtd10": open_benchmark("xtd10", benchmark_root)}


# ------------------------------------------------------------------------------------------ normalising
def test_normalising_folds_case_width_punctuation_and_whitespace():
    assert normalise_text("  A Photo,  of ＯＢＪＥＣＴ… «one»!\t") == "a photo of object one"
    assert normalise_text("「第二号物体的照片」。") == normalise_text("第二号物体的照片")
    assert normalise_text("Straße") == normalise_text("STRASSE")  # casefold, not lower
    assert normalise_text("objects") != normalise_text("object")
    assert normalise_text("?!.") == ""


# ------------------------------------------------------------------------------------------ exact counts
def test_phase1_run_counts_its_corpus_store_captions_per_language(phase1_run, xtd10, caplog):
    data = training_data([phase1_run])
    assert len(data.stores) == 1 and not data.corpora  # found the run's store, did not fall back to files
    with caplog.at_level(logging.WARNING):
        report = check_leakage(xtd10, data, warn_fraction=0.01)
    captions = report["xtd10"]["captions"]
    assert captions["languages"]["en"] == {"total": 10, "in_training": 3, "fraction": 0.3}
    assert captions["languages"]["zh"] == {"total": 10, "in_training": 2, "fraction": 0.2}
    assert (captions["in_training"], captions["total"]) == (5, 20)
    assert sorted(captions["examples"]) == sorted([f"en: {EN[i]}" for i in EN_IN_CORPUS] + [f"zh: {ZH[i]}" for i in ZH_IN_CORPUS])
    assert report["xtd10"]["images"]["in_training"] is None  # phase 1 has no images
    assert any("xtd10: 5 of its 20 captions" in record.getMessage() for record in caplog.records)


def test_without_its_store_the_run_reads_its_corpus_files(phase1_run, xtd10, caplog, tmp_path):
    data = training_data([phase1_run])
    moved = tmp_path / "store"
    shutil.move(data.stores[0], moved)
    try:
        with caplog.at_level(logging.WARNING):
            fallback = training_data([phase1_run])
        assert not fallback.stores and len(fallback.corpora) == 1
        assert any("reading its corpus files instead" in record.getMessage() for record in caplog.records)
        report = check_leakage(xtd10, fallback)
        assert report["xtd10"]["captions"]["in_training"] == 5
    finally:
        shutil.move(moved, data.stores[0])


def test_phase2_run_counts_images_by_bytes_and_follows_its_phase1_run(phase2_run, phase1_run, xtd10):
    data = training_data([phase2_run])
    assert [run.resolve() for run in data.runs] == [phase2_run.resolve(), phase1_run.resolve()]
    report = check_leakage(xtd10, data, chunk_rows=3)  # tiny chunks: every boundary is crossed
    images = report["xtd10"]["images"]
    assert (images["in_training"], images["total"]) == (len(IMAGES_IN_SHARDS), 10)
    assert sorted(Path(p).name for p in images["examples"]) == [f"COCO_{i:03d}.png" for i in IMAGES_IN_SHARDS]
    captions = report["xtd10"]["captions"]
    assert captions["languages"]["en"]["in_training"] == len(EN_IN_CORPUS) + len(EN_IN_SHARDS)
    assert captions["languages"]["zh"]["in_training"] == len(ZH_IN_CORPUS)

    alone = check_leakage(xtd10, training_data([phase2_run], upstream=False))["xtd10"]
    assert alone["captions"]["languages"]["en"]["in_training"] == len(EN_IN_SHARDS)
    assert alone["captions"]["languages"]["zh"]["in_training"] == 0
    assert alone["images"]["in_training"] == len(IMAGES_IN_SHARDS)


def test_below_the_threshold_nothing_is_warned(phase1_run, xtd10, caplog):
    with caplog.at_level(logging.WARNING):
        check_leakage(xtd10, training_data([phase1_run]), warn_fraction=0.5)
    assert not [r for r in caplog.records if r.name == leakage_module.__name__ and r.levelno >= logging.WARNING]


def test_a_classification_benchmark_counts_images_only(phase2_run, benchmark_root):
    from altclip_train.evaluate.benchmarks import ClassificationBenchmark
    from altclip_train.evaluate.benchmarks.base import ClassSet

    files = [(benchmark_root / "xtd10" / "images" / f"COCO_{i:03d}.png", i % 2) for i in range(10)]
    benchmark = ClassificationBenchmark("toy", "toy", files, {"en": ClassSet([0, 1], ["a", "b"], ["{}"])})
    entry = check_leakage({"toy": benchmark}, training_data([phase2_run], upstream=False))["toy"]
    assert entry["captions"] is None
    assert (entry["images"]["in_training"], entry["images"]["total"]) == (len(IMAGES_IN_SHARDS), 10)


# ------------------------------------------------------------------------------------------ eval and the CLI
def test_check_leakage_command_prints_the_counts(phase2_run, benchmark_root, capsys, tmp_path):
    from altclip_train.cli import main

    main(["check-leakage", str(phase2_run), "xtd10", "--data-root", str(benchmark_root),
          "--json", str(tmp_path / "leakage.json")])
    out = capsys.readouterr().out
    assert "| XTD10 | 6 / 20 (30.00%) | 2 / 10 (20.00%) |" in out
    assert "| XTD10 | en | 10 | 4 | 40.00 |" in out and "| XTD10 | zh | 10 | 2 | 20.00 |" in out
    saved = json.loads((tmp_path / "leakage.json").read_text(encoding="utf-8"))
    assert saved["xtd10"]["images"]["in_training"] == 2


@pytest.mark.parametrize("args, message", [
    (["{missing}", "xtd10"], "altclip-train: error: leakage run {missing}: no such directory"),
    (["{run}", "xtd11"], "altclip-train: error: unknown benchmark 'xtd11'; choose from xtd10, xm3600, "
                         "flickr30k_200, xtd200, babel_imagenet, imagenet1k"),
    (["{not_a_run}", "xtd10"], "altclip-train: error: leakage run {not_a_run}: not a training run dir (no config.yaml;"
                               " give the dir that `altclip-train distill|contrastive` wrote)"),
])
def test_check_leakage_bad_input_is_one_line(args, message, phase2_run, benchmark_root, capsys, tmp_path):
    from altclip_train.cli import main

    paths = {"missing": str(tmp_path / "nope"), "run": str(phase2_run), "not_a_run": str(tmp_path)}
    with pytest.raises(SystemExit) as exit_info:
        main(["check-leakage", *[a.format(**paths) for a in args], "--data-root", str(benchmark_root)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [message.format(**paths)]


def test_eval_config_leakage_section_reaches_eval_json_and_md(phase2_run, xtd10, tmp_path):
    from altclip_train.evaluate.leakage import plan_from_config
    from altclip_train.evaluate.report import write_report

    section = OmegaConf.create({"runs": str(phase2_run), "upstream": False, "shards": None, "warn_fraction": 0.01,
                                "chunk_rows": 8})
    plan = plan_from_config(section, xtd10)
    leakage = plan.check(xtd10)
    results = {"m": {"xtd10": {"en": {"t2i_r@1": 50.0, "mean_recall": 50.0}}}}
    files = write_report(results, {}, tmp_path, leakage=leakage)
    document = json.loads(Path(files["json"]).read_text(encoding="utf-8"))
    assert document["leakage"]["xtd10"]["captions"]["languages"]["en"]["in_training"] == 1
    markdown = Path(files["markdown"]).read_text(encoding="utf-8")
    assert "| XTD10 | 1 / 20 (5.00%) | 2 / 10 (20.00%) |" in markdown and "**Warning**" in markdown
    with pytest.raises(Exception, match="leakage.run: unknown key"):
        plan_from_config(OmegaConf.create({"run": str(phase2_run)}), xtd10)
    assert plan_from_config(OmegaConf.create({"runs": []}), xtd10) is None


def test_eval_with_leakage_runs_reports_it_beside_the_scores(phase2_run, benchmark_root, tiny_teacher, tmp_path):
    from altclip_train.cli import compose_config
    from altclip_train.evaluate.run import run_eval

    output = tmp_path / "eval"
    cfg = compose_config("eval", [f"models.teacher={tiny_teacher}", "benchmarks=[xtd10]", f"data_root={benchmark_root}",
                                  f"leakage.runs=[{phase2_run}]", "batch_size=4", "num_workers=0", "device=cpu",
                                  f"output_dir={output}"])
    result = run_eval(cfg)
    saved = json.loads((output / "eval.json").read_text(encoding="utf-8"))
    assert set(saved["results"]["teacher"]["xtd10"]) == {"en", "zh"}
    assert saved["leakage"] == result["leakage"]
    assert saved["leakage"]["xtd10"]["captions"]["in_training"] == 6
    assert saved["leakage"]["xtd10"]["images"]["in_training"] == 2
    assert "| XTD10 | 6 / 20 (30.00%) | 2 / 10 (20.00%) |" in (output / "eval.md").read_text(encoding="utf-8")


def test_eval_refuses_a_missing_leakage_run_before_any_model_loads(benchmark_root, tmp_path, monkeypatch):
    from altclip_train.cli import compose_config
    from altclip_train.errors import UserError
    from altclip_train.evaluate import run as run_module

    monkeypatch.setattr(run_module, "load_eval_model", lambda *a, **k: pytest.fail("a model loaded"))
    monkeypatch.setattr(run_module, "eval_transform", lambda path: None)
    cfg = compose_config("eval", ["models.teacher=some/model", "benchmarks=[xtd10]", f"data_root={benchmark_root}",
                                  f"leakage.runs=[{tmp_path / 'gone'}]", f"output_dir={tmp_path / 'eval'}"])
    with pytest.raises(UserError, match=f"leakage run {tmp_path / 'gone'}: no such directory"):
        run_module.run_eval(cfg)


def test_check_leakage_errors_stand_alone_on_a_redirected_stderr(phase2_run, benchmark_root, tmp_path):
    """As a user runs it (a subprocess, stderr to a file): nothing but the error line, for each bad input."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "ALTCLIP_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("ALTCLIP_DEBUG", None)
    for args, expected in [([str(tmp_path / "gone"), "xtd10"], f"leakage run {tmp_path / 'gone'}: no such directory"),
                           ([str(phase2_run), "xtd11"], "unknown benchmark 'xtd11'")]:
        with open(tmp_path / "err.txt", "wb") as err:
            code = subprocess.run([sys.executable, "-m", "altclip_train", "check-leakage", *args, "--data-root",
                                   str(benchmark_root)], stdout=subprocess.DEVNULL, stderr=err, env=env,
                                  timeout=300).returncode
        lines = (tmp_path / "err.txt").read_text(encoding="utf-8").splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"altclip-train: error: {expected}"), lines
