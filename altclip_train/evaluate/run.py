"""`altclip-train eval`: compare several checkpoints on zero-shot classification and retrieval, per language.

    altclip-train eval models.teacher=openai/clip-vit-large-patch14 models.phase2=outputs/.../final \\
        zeroshot.images=data/imagenet/val zeroshot.classnames_dir=data/imagenet/classnames \\
        zeroshot.templates_dir=data/imagenet/templates retrieval.pairs=data/xtd10/pairs.csv
    altclip-train eval models.phase2=outputs/.../final benchmarks=[xtd10,xm3600] data_root=/data/benchmarks

Standard benchmarks (`benchmarks=`, see `evaluate/benchmarks/`) are read from their released layouts under
`data_root`; each adds a task named after it to the report, and CLIP_benchmark's results JSON per model and
language goes to `output_dir/clip_benchmark/`.

`leakage.runs=[RUN...]` (and/or `leakage.shards=SPEC`) also counts, per benchmark, its captions (normalised, per
language) and images (same bytes) found in what those training runs trained on (`evaluate/leakage.py`): into
eval.json under "leakage" and a section of eval.md, with a warning above `leakage.warn_fraction`. Keys read:
`leakage.{runs, upstream, shards, warn_fraction, chunk_rows}`, documented in configs/eval.yaml.

Every file is checked before the first model loads. Models load one at a time; models that share an image
transform share the evaluation data (and its decoded pixels with `cache_images`). Writes eval.json, eval.md and
eval.png to `output_dir`.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from altclip_train.data.images import ImagePreprocessor
from altclip_train.evaluate.benchmarks import BenchmarkEvaluator, open_benchmark, write_clip_benchmark_results
from altclip_train.evaluate.leakage import plan_from_config
from altclip_train.evaluate.models import eval_transform, load_eval_model, resolve_device
from altclip_train.evaluate.report import flatten, write_report
from altclip_train.evaluate.retrieval import RetrievalEvaluator
from altclip_train.evaluate.zeroshot import ZeroShotEvaluator

log = logging.getLogger(__name__)


def _enabled(section, key: str) -> bool:
    return section is not None and section.get(key) is not None


def _build_evaluators(cfg: DictConfig, transform: ImagePreprocessor) -> dict:
    common = dict(
        transform=transform,
        tokenizer=None,  # each model brings its own, passed per call
        batch_size=cfg.get("batch_size", 256),
        num_workers=cfg.get("num_workers", 0),
        cache_images=cfg.get("cache_images", False),
        amp=cfg.get("amp", True),
    )
    evaluators = {}
    if _enabled(cfg.get("zeroshot"), "images"):
        section = cfg.zeroshot
        languages = section.get("languages")
        images = section.images
        evaluators["zeroshot"] = ZeroShotEvaluator(
            image_source=list(images) if OmegaConf.is_list(images) else images,
            classnames_dir=section.classnames_dir,
            templates_dir=section.get("templates_dir"),
            languages=None if languages is None else list(languages),
            **common,
        )
    if _enabled(cfg.get("retrieval"), "pairs"):
        section = cfg.retrieval
        languages = section.get("languages")
        pairs = section.pairs
        evaluators["retrieval"] = RetrievalEvaluator(
            pairs=list(pairs) if OmegaConf.is_list(pairs) else pairs,
            languages=None if languages is None else list(languages),
            image_root=section.get("image_root"),
            default_lang=section.get("default_lang") or "en",
            **common,
        )
    return evaluators


def open_benchmarks(cfg: DictConfig) -> dict:
    """Every benchmark in `cfg.benchmarks`, read (and so checked) before any model loads."""
    names = cfg.get("benchmarks") or []
    if isinstance(names, str):
        names = [names]
    options = cfg.get("benchmark_options") or {}
    options = OmegaConf.to_container(options, resolve=True) if OmegaConf.is_config(options) else dict(options)
    unknown = [name for name in options if name not in names]
    if unknown:
        raise ValueError(f"benchmark_options for benchmark(s) not in benchmarks=[...]: {unknown}")
    opened = {}
    for name in names:
        benchmark = open_benchmark(str(name), cfg.get("data_root"), **(options.get(name) or {}))
        opened[benchmark.name] = benchmark
    return opened


def _benchmark_evaluators(cfg: DictConfig, benchmarks: dict, transform: ImagePreprocessor) -> dict:
    return {
        name: BenchmarkEvaluator(benchmark, transform, batch_size=cfg.get("batch_size", 256),
                                 num_workers=cfg.get("num_workers", 0), cache_images=cfg.get("cache_images", False),
                                 amp=cfg.get("amp", True))
        for name, benchmark in benchmarks.items()
    }


def max_length(cfg: DictConfig, model_limit: int) -> int:
    """The configured text length, never past what the model's position table holds."""
    configured = cfg.get("max_length")
    return model_limit if configured is None else min(int(configured), model_limit)


def _config_dict(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # interpolations that only resolve inside a Hydra app (${hydra:...})
        return OmegaConf.to_container(cfg, resolve=False)


def run_eval(cfg: DictConfig) -> dict:
    """Evaluate every model in `cfg.models` and write the report; returns the eval.json content plus
    `metrics` (per model, flat logging names) and `files` (written paths)."""
    models = {str(name): str(path) for name, path in (cfg.get("models") or {}).items() if path}
    if not models:
        raise ValueError("no models to evaluate: set models.<name>=<checkpoint dir or hub id>")
    if not (_enabled(cfg.get("zeroshot"), "images") or _enabled(cfg.get("retrieval"), "pairs")
            or cfg.get("benchmarks")):
        raise ValueError("nothing to evaluate: set zeroshot.images, retrieval.pairs and/or benchmarks=[...]")
    torch.manual_seed(cfg.get("seed", 0))
    device = resolve_device(cfg.get("device", "auto"))

    # Reading each transform first lets every data file be validated before any weights load.
    transforms = {name: eval_transform(path) for name, path in models.items()}
    benchmarks = open_benchmarks(cfg)
    leakage_plan = plan_from_config(cfg.get("leakage"), benchmarks)  # reads the runs' configs: bad ones fail here
    leakage = leakage_plan.check(benchmarks) if leakage_plan is not None else None
    evaluators_by_transform = {t: _build_evaluators(cfg, t) | _benchmark_evaluators(cfg, benchmarks, t)
                               for t in dict.fromkeys(transforms.values())}

    results: dict = {}
    model_info: dict = {}
    data: dict = {}
    for name, path in models.items():
        started = time.perf_counter()
        loaded = load_eval_model(path, name=name, device=device)
        results[name] = {}
        for task, evaluator in evaluators_by_transform[transforms[name]].items():
            log.info("evaluating %s: %s", name, task)
            results[name][task] = evaluator.evaluate_languages(
                loaded.model, device, tokenizer=loaded.tokenizer, max_length=max_length(cfg, loaded.max_length)
            )
            data[task] = evaluator.summary()
            if data[task]["skipped"]:
                log.warning("%s: skipped %s", task, data[task]["skipped"])
        model_info[name] = {
            "path": path,
            "model_type": loaded.model_type,
            "seconds": round(time.perf_counter() - started, 2),
        }
        del loaded
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    extra = {"models": model_info, "device": str(device), "config": _config_dict(cfg)}
    files = write_report(results, data, cfg.output_dir, extra=extra, leakage=leakage)
    clip_benchmark_files = [
        str(path)
        for name, per_task in results.items()
        for task, per_language in per_task.items()
        if task in benchmarks
        for path in write_clip_benchmark_results(Path(cfg.output_dir) / "clip_benchmark", benchmarks[task], name,
                                                 models[name], per_language)
    ]
    if clip_benchmark_files:
        files["clip_benchmark"] = str(Path(cfg.output_dir) / "clip_benchmark")
    log.info("wrote %s", ", ".join(files.values()))
    return {
        "results": results,
        "data": data,
        **extra,
        **({"leakage": leakage} if leakage is not None else {}),
        "metrics": {name: flatten(per_task) for name, per_task in results.items()},
        "files": files,
    }
