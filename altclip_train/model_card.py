"""The model card (`README.md`) every exported model carries, in the form the Hugging Face Hub reads.

Front matter (YAML the Hub parses): `language` list, `license`, `library_name: transformers`, `pipeline_tag`,
`base_model` (teacher and student, where they are hub ids), `datasets` (hub datasets the run read), `tags` and a
`model-index` with the run's final evaluation. Body: the training recipe of both phases with the key
hyper-parameters from the resolved config, the per-language results table (and a chart, `eval_results.png`, when
zero-shot or retrieval evaluation ran), how to load the model, and the exact command that trained it.

Everything comes from the run dir: `config.yaml` (resolved), `metrics.jsonl` (the last value of each metric) and
`.hydra/overrides.yaml` (the command line). A phase-2 run finds its phase-1 run through the student it started
from (`<phase-1 run>/final`), so its card describes both phases.

    write_model_card(model_dir, run_dir)      # the loop calls this after exporting final/
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
CHART_NAME = "eval_results.png"
DEFAULT_LICENSE = "mit"  # CLIP and XLM-R, the usual teacher and student, are both MIT-licensed
PIPELINE_TAGS = {"contrastive": "zero-shot-image-classification", "distill": "feature-extraction"}
COMMANDS = {"contrastive": "contrastive", "distill": "distill"}
TASK_TYPES = {"zeroshot": "zero-shot-image-classification", "retrieval": "zero-shot-image-retrieval",
              "val": "feature-extraction"}
TASK_NAMES = {"zeroshot": "Zero-shot image classification", "retrieval": "Image-text retrieval",
              "val": "Translation retrieval against the teacher (held-out parallel sentences)"}
METRIC_TYPES = {"top1": "accuracy", "top5": "accuracy", "mean_per_class_recall": "recall",
                "translation_acc": "accuracy", "mse": "mse", "mean_recall": "recall"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Results = dict[str, dict[str, dict[str, float]]]  # task -> lang -> metric -> value


# ---------------------------------------------------------------------------------------------- reading the run


def load_run_config(run_dir: str | Path) -> DictConfig | None:
    path = Path(run_dir) / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def last_metrics(run_dir: str | Path) -> dict[str, float]:
    """The last logged value of every metric in run_dir/metrics.jsonl."""
    from altclip_train.tracking import read_metrics

    latest: dict[str, float] = {}
    for record in read_metrics(run_dir):
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                latest[key] = float(value)
    return latest


def per_language(metrics: dict[str, float]) -> Results:
    """Flat metric names -> {task: {lang: {metric: value}}}, keeping only per-language evaluation metrics.

    `eval/zeroshot_top1/ja` -> zeroshot/ja/top1; `eval/<task>/<metric>/<lang>` -> <task>/<lang>/<metric>;
    `val/<metric>/<lang>` -> val/<lang>/<metric> (phase 1's held-out MSE and translation accuracy).
    """
    results: Results = {}
    for name, value in metrics.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "eval" and parts[1].startswith("zeroshot_"):
            task, metric, lang = "zeroshot", parts[1][len("zeroshot_"):], parts[2]
        elif len(parts) == 4 and parts[0] == "eval":
            task, metric, lang = parts[1], parts[2], parts[3]
        elif len(parts) == 3 and parts[0] == "val":
            task, metric, lang = "val", parts[1], parts[2]
        else:
            continue
        results.setdefault(task, {}).setdefault(lang, {})[metric] = value
    return results


def training_command(run_dir: str | Path, phase: str) -> str | None:
    """`altclip-train <phase> <overrides>` as Hydra recorded it for the run, or None when it was not."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    overrides = None
    if path.is_file():
        overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    else:
        try:
            from hydra.core.hydra_config import HydraConfig

            overrides = list(HydraConfig.get().overrides.task)
        except Exception:  # not inside a Hydra app: the command is unknown, not an error
            return None
    return " ".join(["altclip-train", COMMANDS.get(phase, phase), *(shlex.quote(str(o)) for o in overrides)])


def phase1_run_of(cfg: DictConfig) -> Path | None:
    """The phase-1 run dir a phase-2 run started from (its student is `<run>/final`), if it is on disk."""
    student = OmegaConf.select(cfg, "model.model.student")
    if not student:
        return None
    run = Path(str(student)).expanduser().parent
    return run if (run / "config.yaml").is_file() else None


def is_hub_id(name) -> bool:
    return isinstance(name, str) and bool(HUB_ID.match(name)) and not Path(name).expanduser().exists()


# ---------------------------------------------------------------------------------------------- recipe


def _value(cfg: DictConfig, key: str, default="-"):
    value = OmegaConf.select(cfg, key, default=default)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return default if value is None else value


def _corpora(cfg: DictConfig) -> list[str]:
    entries = []
    for corpus in _value(cfg, "data.corpora", []) or []:
        source = corpus.get("hub") or corpus.get("path") or corpus.get("source_path") or "?"
        subset = f" ({corpus['subset']})" if corpus.get("subset") else ""
        entries.append(f"{corpus.get('lang', '?')}: `{source}`{subset}")
    return entries


TARGET_MEANINGS = {"pre_projection": "the pooled text state before the teacher's text projection",
                   "embedding": "the teacher's text embedding (its `get_text_features`)"}


def teacher_rows(source: str | None, distill_target: str | None) -> list[tuple[str, str]]:
    """Which teacher family read the checkpoint, its distillation target and its image preprocessing."""
    from altclip_train.models.teachers import load_teacher

    if not source:
        return []
    try:
        teacher = load_teacher(str(source), distill_target)
    except (OSError, ValueError) as error:
        log.debug("model card: teacher %s not described (%s)", source, error)
        return []
    rows = [("teacher family", f"`{teacher.family}`"),
            ("distillation target", f"`{teacher.distill_target}`: {TARGET_MEANINGS[teacher.distill_target]}")]
    try:
        rows.append(("image preprocessing", describe_preprocessing(teacher.image_processor().description)))
    except (OSError, ValueError) as error:  # e.g. SigLIP 2 NaFlex, whose image side phase 2 does not read
        log.debug("model card: no image preprocessing for %s (%s)", source, error)
    return rows


def describe_preprocessing(description: dict) -> str:
    settings = description.get("settings", {})
    parts = [f"`{description.get('class')}` ({description.get('library')})"]
    for key in ("size", "crop_size", "resample", "image_mean", "image_std",  # transformers' names
                "resize_mode", "interpolation", "mean", "std"):  # open_clip's
        if settings.get(key) is not None:
            parts.append(f"{key} {settings[key]}")
    return ", ".join(parts)


def recipe_rows(cfg: DictConfig) -> list[tuple[str, str]]:
    """The key hyper-parameters of one phase, as (name, value) rows."""
    phase = _value(cfg, "phase")
    if phase == "distill":
        target = _value(cfg, "model.distill_target", None)
        rows = [("teacher (frozen text tower)", f"`{_value(cfg, 'model.teacher')}`"),
                *teacher_rows(_value(cfg, "model.teacher", None), target),
                ("student (XLM-R → AltCLIPTextModel)", f"`{_value(cfg, 'model.student')}`"),
                ("loss", "MSE to the teacher's target, English and translation sides"),
                ("parallel corpora", "; ".join(_corpora(cfg)) or "-")]
    else:
        loss = _value(cfg, "model.loss", None)
        rows = [("teacher (image side, frozen)", f"`{_value(cfg, 'model.model.teacher')}`"),
                *teacher_rows(_value(cfg, "model.model.teacher", None), _value(cfg, "model.model.distill_target", None)),
                ("student (phase-1 text tower)", f"`{_value(cfg, 'model.model.student')}`"),
                ("loss", str(loss) if loss else "the teacher's own (`clip` InfoNCE or `sigmoid`)"),
                ("frozen", ", ".join(f"`{p}`" for p in _value(cfg, "model.freeze", []) or []) or "nothing"),
                ("image-text shards", f"`{_value(cfg, 'data.shards')}`")]
    steps = _value(cfg, "trainer.max_steps", None)
    rows += [
        ("languages", ", ".join(_value(cfg, "data.languages", []) or []) or "-"),
        ("global batch (pairs)", str(_value(cfg, "data.batch_size"))),
        ("optimizer", f"AdamW lr {_value(cfg, 'optim.lr')}, weight decay {_value(cfg, 'optim.weight_decay')}, "
                      f"eps {_value(cfg, 'optim.eps')}, betas {_value(cfg, 'optim.betas')}"),
        ("schedule", f"{_value(cfg, 'optim.schedule')}, warmup {_value(cfg, 'optim.warmup_steps')} steps"),
        ("gradient clipping", str(_value(cfg, "optim.grad_clip"))),
        ("length", f"{steps} steps" if steps else f"{_value(cfg, 'trainer.epochs')} epochs"),
        ("precision", str(_value(cfg, "trainer.mixed_precision"))),
        ("seed", str(_value(cfg, "seed"))),
    ]
    return rows


def recipe_section(title: str, cfg: DictConfig, command: str | None) -> list[str]:
    lines = [f"### {title}", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in recipe_rows(cfg)]
    lines.append("")
    if command:
        lines += ["Trained with:", "", "```bash", command, "```", ""]
    return lines


# ---------------------------------------------------------------------------------------------- results


def results_table(results: Results) -> list[str]:
    from altclip_train.evaluate.report import BENCHMARK_TITLES

    lines = []
    titles = {"zeroshot": "Zero-shot classification (%)", "retrieval": "Image-text retrieval (recall, %)",
              "val": "Held-out parallel sentences (phase 1)"}
    for task, by_lang in results.items():
        metrics = list(dict.fromkeys(m for values in by_lang.values() for m in values))
        title = titles.get(task) or BENCHMARK_TITLES.get(task, task)
        lines += [f"**{title}**", "", "| lang | " + " | ".join(metrics) + " |",
                  "|---|" + "---:|" * len(metrics)]
        for lang, values in by_lang.items():
            cells = ["-" if m not in values else f"{values[m]:.4g}" if task == "val" else f"{values[m]:.2f}"
                     for m in metrics]
            lines.append(f"| {lang} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def eval_results(results: Results, dataset_name: str) -> list:
    """huggingface_hub EvalResults for the model-index: one per task, language and metric."""
    from huggingface_hub import EvalResult

    entries = []
    for task, by_lang in results.items():
        # A benchmark (xtd10, babel_imagenet, ...) is its own dataset; its metrics say which task it is.
        kind = task if task in TASK_TYPES else (
            "retrieval" if any("mean_recall" in values for values in by_lang.values()) else "zeroshot")
        dataset = dataset_name if task in TASK_TYPES else task
        for lang, values in by_lang.items():
            for metric, value in values.items():
                entries.append(EvalResult(
                    task_type=TASK_TYPES[kind], task_name=TASK_NAMES[kind],
                    dataset_type=dataset.replace(" ", "-"), dataset_name=dataset,
                    dataset_config=lang, dataset_split="validation" if task == "val" else "test",
                    metric_type=METRIC_TYPES.get(metric.split("@")[0], metric), metric_name=f"{metric} ({lang})",
                    metric_value=round(float(value), 4), metric_config=lang,
                ))
    return entries


def plot_results(results: Results, path: Path, model_name: str) -> Path | None:
    """The per-language chart of the zero-shot/retrieval results, or None when neither ran."""
    from altclip_train.evaluate.report import plot_comparison

    # Phase 1's held-out MSE and translation accuracy are not on the chart's 0-100 scale; the table has them.
    chartable = {task: by_lang for task, by_lang in results.items() if task != "val"}
    if not chartable:
        return None
    return plot_comparison({model_name: chartable}, path)


def evaluation_dataset(cfg: DictConfig) -> str:
    """A readable name for what the run evaluated on: the evaluator's data path (last two parts)."""
    source = OmegaConf.select(cfg, "model.evaluator.image_source") or OmegaConf.select(cfg, "model.evaluator.pairs")
    if source:
        return "/".join(Path(str(source).rstrip("/")).parts[-2:]) or "evaluation"
    return "held-out parallel sentences" if _value(cfg, "phase") == "distill" else "evaluation"


# ---------------------------------------------------------------------------------------------- the card


def exported_class(model_dir: Path) -> tuple[str, bool]:
    """(class name, whether it ships as remote code) of the model in `model_dir`, from its config.json."""
    import json

    if (model_dir / "open_clip_config.json").is_file():
        return "open_clip CustomTextCLIP", False
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "AltCLIPModel", False
    return (config.get("architectures") or ["AltCLIPModel"])[0], "auto_map" in config


def how_to_load(phase: str, repo: str, model_dir: Path | None = None) -> list[str]:
    model_class, remote = exported_class(model_dir) if model_dir is not None else ("AltCLIPModel", False)
    if phase != "distill" and model_class.startswith("open_clip"):
        name = f"hf-hub:{repo}" if "/" in repo and not Path(repo).exists() else f"local-dir:{repo}"
        code = [
            "import open_clip  # pip install open_clip_torch",
            "",
            "# open_clip's format: XLM-R as an HF text tower, the teacher's image tower and preprocessing",
            f'model, _, preprocess = open_clip.create_model_and_transforms("{name}")',
            f'tokenizer = open_clip.get_tokenizer("{name}")',
            'text = model.encode_text(tokenizer(["a photo of a cat", "一张猫的照片"]))',
        ]
        return ["```python", *code, "```", ""]
    if phase != "distill" and remote:
        code = [
            "from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, pipeline",
            "",
            f"# {model_class}: its modeling file ships next to the weights (it imports only torch and transformers)",
            f'classifier = pipeline("zero-shot-image-classification", model="{repo}", trust_remote_code=True)',
            'classifier("cat.jpg", candidate_labels=["chat", "chien"], hypothesis_template="une photo de {}.")',
            "",
            f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
            f'image_processor = AutoImageProcessor.from_pretrained("{repo}")',
        ]
        return ["```python", *code, "```", ""]
    if phase == "distill":
        code = [
            "from transformers import AutoModel, AutoTokenizer",
            "",
            "# AltCLIPTextModel; the two-line modeling file next to the weights only names transformers' own class",
            f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
            "# or, with no remote code at all: transformers.AltCLIPTextModel.from_pretrained(...)",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
            'inputs = tokenizer(["a photo of a cat", "一张猫的照片"], padding=True, return_tensors="pt")',
            "embeddings = model(**inputs).pooler_output  # the teacher's text space, before text_projection",
        ]
    else:
        code = [
            "from transformers import AltCLIPModel, AltCLIPProcessor, pipeline",
            "",
            f'classifier = pipeline("zero-shot-image-classification", model="{repo}")',
            'classifier("cat.jpg", candidate_labels=["chat", "chien"], hypothesis_template="une photo de {}.")',
            "",
            f'model = AltCLIPModel.from_pretrained("{repo}")',
            f'processor = AltCLIPProcessor.from_pretrained("{repo}")',
        ]
    return ["```python", *code, "```", ""]


def card_languages(cfg: DictConfig, phase1: DictConfig | None, results: Results) -> list[str]:
    languages = ["en"]
    for config in (phase1, cfg):
        if config is not None:
            languages += [str(lang) for lang in _value(config, "data.languages", []) or []]
            languages += [str(c.get("lang")) for c in _value(config, "data.corpora", []) or [] if c.get("lang")]
    languages += [lang for by_lang in results.values() for lang in by_lang]
    # The Hub wants ISO 639 codes; FLORES-200 codes (eng_Latn) are reduced to their language part.
    return list(dict.fromkeys(lang.split("_")[0].lower() for lang in languages if lang and lang != "None"))


def eval_json_results(path: str | Path, model_dir: str | Path, model: str | None = None) -> Results:
    """One model's {task: {lang: {metric}}} from an `altclip-train eval` eval.json: the named model, or the one
    whose path is `model_dir`, or the only one."""
    import json

    document = json.loads(Path(path).read_text(encoding="utf-8"))
    results, models = document.get("results") or {}, document.get("models") or {}
    if model is None:
        same = [name for name, info in models.items()
                if Path(str(info.get("path", ""))).expanduser().resolve() == Path(model_dir).resolve()]
        model = same[0] if same else next(iter(results)) if len(results) == 1 else None
    if model not in results:
        raise ValueError(f"{path}: pick the model to publish with --eval-model (one of {sorted(results)})")
    return results[model]


def build_model_card(model_dir: str | Path, run_dir: str | Path, metrics: dict[str, float] | None = None,
                     license: str | None = None, repo_id: str | None = None,
                     extra_results: Results | None = None) -> str:
    """The README.md text for the model in `model_dir`, trained by the run in `run_dir`; `extra_results`
    (e.g. the standard benchmarks, from `eval_json_results`) join the run's own."""
    from huggingface_hub import ModelCardData

    model_dir, run_dir = Path(model_dir), Path(run_dir)
    cfg = load_run_config(run_dir)
    if cfg is None:
        raise FileNotFoundError(f"{run_dir}: no config.yaml, so no model card can be written")
    phase = str(_value(cfg, "phase", "contrastive"))
    phase1_dir = phase1_run_of(cfg) if phase == "contrastive" else None
    phase1 = load_run_config(phase1_dir) if phase1_dir else None
    results = per_language({**last_metrics(run_dir), **(metrics or {})}) | (extra_results or {})
    name = repo_id.split("/")[-1] if repo_id else str(_value(cfg, "name", model_dir.name))

    if phase == "distill":
        base = [_value(cfg, "model.teacher", None), _value(cfg, "model.student", None)]
        hub_datasets = [c.get("hub") for c in _value(cfg, "data.corpora", []) or [] if c.get("hub")]
    else:
        # The student's base is phase 1's XLM-R when its run is found, else the phase-1 dir itself.
        if phase1 is not None:
            student, corpora = _value(phase1, "model.student", None), _value(phase1, "data.corpora", []) or []
        else:
            student, corpora = _value(cfg, "model.model.student", None), []
        base = [_value(cfg, "model.model.teacher", None), student]
        hub_datasets = [c.get("hub") for c in corpora if c.get("hub")]
        shards = _value(cfg, "data.shards", None)
        if is_hub_id(shards):
            hub_datasets.append(shards)
    data = ModelCardData(
        language=card_languages(cfg, phase1, results),
        license=license or DEFAULT_LICENSE,
        library_name="open_clip" if (Path(model_dir) / "open_clip_config.json").is_file() else "transformers",
        pipeline_tag=PIPELINE_TAGS.get(phase, "feature-extraction"),
        base_model=[b for b in dict.fromkeys(base) if is_hub_id(b)] or None,
        datasets=list(dict.fromkeys(hub_datasets)) or None,
        tags=["altclip", "clip", "multilingual", "altclip-train",
              "knowledge-distillation" if phase == "distill" else "contrastive-learning"],
        model_name=name,
        eval_results=eval_results(results, evaluation_dataset(cfg)) or None,
    )

    lines = [f"# {name}", ""]
    if phase == "distill":
        lines += ["A multilingual text encoder (`transformers.AltCLIPTextModel`: XLM-R, `pre_LN`, `transformation`) "
                  "distilled from a teacher's text tower the [AltCLIP](https://arxiv.org/abs/2211.06679) way "
                  "(phase 1 of 2), trained with altclip-train. It maps text in every "
                  "training language into the teacher's text space; pair it with the teacher's image side "
                  "(`altclip-train contrastive`) for a full AltCLIP model.", ""]
    else:
        lines += [f"A multilingual CLIP model (`{exported_class(model_dir)[0]}`) trained the "
                  "[AltCLIP](https://arxiv.org/abs/2211.06679) way with altclip-train: a teacher's text tower "
                  "distilled into XLM-R (phase 1), then contrastive tuning on multilingual image-text pairs with the "
                  "image tower frozen (phase 2).", ""]
    lines += ["## Training recipe", ""]
    if phase1 is not None:
        lines += recipe_section("Phase 1: distillation", phase1, training_command(phase1_dir, "distill"))
    elif phase == "contrastive":
        lines += ["Phase 1 (distillation) produced the student named below; its run was not found next to it.", ""]
    title = "Phase 1: distillation" if phase == "distill" else "Phase 2: contrastive tuning"
    command = training_command(run_dir, phase)
    lines += recipe_section(title, cfg, None)
    lines += ["## Results", ""]
    if results:
        lines += [f"Final evaluation of this run (`metrics.jsonl`), per language, on `{evaluation_dataset(cfg)}`"
                  + (", and `altclip-train eval` on the benchmarks below." if extra_results else "."), ""]
        lines += results_table(results)
        if (model_dir / CHART_NAME).is_file():
            lines += [f"![per-language results]({CHART_NAME})", ""]
    else:
        lines += ["No evaluation ran during training. `altclip-train eval` scores it per language, on the standard "
                  "benchmarks too (`benchmarks=[xtd10,xm3600]`).", ""]
    lines += ["## How to load", ""] + how_to_load(phase, repo_id or str(model_dir), model_dir)
    lines += ["## Training command", ""]
    if command:
        lines += ["The exact command that trained this model (resolved config: `config.yaml` of its run):", "",
                  "```bash", command, "```", ""]
    else:
        lines += ["Not recorded (the run was not started through Hydra); its resolved config is `config.yaml` in the "
                  "run dir.", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def write_model_card(model_dir: str | Path, run_dir: str | Path, metrics: dict[str, float] | None = None,
                     license: str | None = None, repo_id: str | None = None,
                     extra_results: Results | None = None) -> Path:
    """Write README.md (and the results chart when evaluation ran) into `model_dir`; returns the card's path."""
    model_dir, run_dir = Path(model_dir), Path(run_dir)
    results = per_language({**last_metrics(run_dir), **(metrics or {})}) | (extra_results or {})
    cfg = load_run_config(run_dir)
    name = repo_id.split("/")[-1] if repo_id else str(_value(cfg, "name", model_dir.name)) if cfg else model_dir.name
    plot_results(results, model_dir / CHART_NAME, name)
    path = model_dir / CARD_NAME
    path.write_text(build_model_card(model_dir, run_dir, metrics, license, repo_id, extra_results), encoding="utf-8")
    log.info("model card written to %s", path)
    return path


def card_after_training(model_dir: str | Path, run_dir: str | Path) -> Path | None:
    """The loop's call once final/ is written: a card that cannot be written costs a warning, never the model."""
    try:
        return write_model_card(model_dir, run_dir)
    except Exception as error:  # the exported model is already safe on disk; `altclip-train export` retries
        log.warning("model card not written (%s: %s); `altclip-train export %s` writes it", type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "", run_dir)
        return None
