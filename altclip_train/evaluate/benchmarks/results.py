"""CLIP_benchmark's results JSON: one file per model, benchmark and language, beside their published tables.

Each file is what `clip_benchmark eval` dumps:
`{"dataset", "model", "pretrained", "task", "metrics", "language"}`, with the metrics as fractions under
CLIP_benchmark's names:

- retrieval: `image_retrieval_recall@k` (text -> image) and `text_retrieval_recall@k` (image -> text);
- classification: `acc1`, `acc5` (NaN below 5 classes, as there) and `mean_per_class_recall`.

`clip_benchmark build *.json` turns a folder of them into its CSV. Files are named like its default
`--output` template: `{dataset}_{model}_{language}_{task}.json`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from altclip_train.evaluate.benchmarks.base import CLASSIFICATION, RETRIEVAL, ClassificationBenchmark

RETRIEVAL_NAMES = {"t2i": "image_retrieval_recall", "i2t": "text_retrieval_recall"}


def clip_benchmark_metrics(task: str, metrics: dict[str, float], num_classes: int | None = None) -> dict[str, float]:
    """Our percentages under our names -> CLIP_benchmark's fractions under its names."""
    if task == RETRIEVAL:
        converted = {}
        for name, value in metrics.items():
            match = re.fullmatch(r"(i2t|t2i)_r@(\d+)", name)
            if match:
                converted[f"{RETRIEVAL_NAMES[match[1]]}@{match[2]}"] = value / 100.0
        return converted
    if task == CLASSIFICATION:
        few = num_classes is not None and num_classes < 5
        return {
            "acc1": metrics["top1"] / 100.0,
            "acc5": math.nan if few else metrics["top5"] / 100.0,
            "mean_per_class_recall": metrics["mean_per_class_recall"] / 100.0,
        }
    raise ValueError(f"unknown CLIP_benchmark task {task!r}")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def write_clip_benchmark_results(
    output_dir: str | Path, benchmark, model: str, pretrained: str, per_language: dict[str, dict[str, float]]
) -> list[Path]:
    """One results JSON per language of `benchmark` for one model; returns the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for lang, metrics in per_language.items():
        num_classes = len(benchmark.languages[lang].classes) if isinstance(benchmark, ClassificationBenchmark) else None
        language = benchmark.native_codes.get(lang, lang)
        document = {
            "dataset": benchmark.dataset,
            "model": model,
            "pretrained": pretrained,
            "task": benchmark.task,
            "metrics": clip_benchmark_metrics(benchmark.task, metrics, num_classes),
            "language": language,
        }
        path = output_dir / f"{slug(benchmark.dataset)}_{slug(model)}_{slug(language)}_{benchmark.task}.json"
        # CLIP_benchmark writes NaN as is (json's default), so its `build` step reads ours unchanged.
        path.write_text(json.dumps(document, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
