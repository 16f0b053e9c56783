"""Write evaluation results: eval.json, a Markdown table per task and a grouped bar chart comparing models.

Results are nested `{model: {task: {lang: {metric: value}}}}` with task "zeroshot" or "retrieval"; tables have one
row per language (plus the mean over languages) and one column per metric x model. A leakage check
(`evaluate/leakage.py`: `{benchmark: {captions, images, training}}`) adds its own section and an eval.json entry.
"""

from __future__ import annotations

import json
from pathlib import Path

from altclip_train.evaluate.metrics import flatten_task

TASK_TITLES = {"zeroshot": "Zero-shot classification (accuracy, %)", "retrieval": "Image-text retrieval (recall, %)"}
# The one number per task the chart shows.
HEADLINE = {"zeroshot": ("top1", "zero-shot top-1 (%)"), "retrieval": ("mean_recall", "retrieval mean recall (%)")}
# Benchmarks (evaluate/benchmarks/) are tasks of their own, named after the benchmark.
BENCHMARK_TITLES = {"xtd10": "XTD10", "xm3600": "Crossmodal-3600", "flickr30k_200": "Flickr30k-200",
                    "xtd200": "XTD200", "babel_imagenet": "Babel-ImageNet", "imagenet1k": "ImageNet-1k"}
MEAN_ROW = "mean"

Results = dict[str, dict[str, dict[str, dict[str, float]]]]


def flatten(results_of_model: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """One model's {task: {lang: {metric: v}}} as flat logging names."""
    flat: dict[str, float] = {}
    for task, per_language in results_of_model.items():
        flat.update(flatten_task(task, per_language))
    return flat


def _ordered_union(lists) -> list[str]:
    return list(dict.fromkeys(item for sub in lists for item in sub))


def task_kind(results: Results, task: str) -> str:
    """"zeroshot" or "retrieval": the task itself, or for a benchmark what its metrics are."""
    if task in TASK_TITLES:
        return task
    for tasks in results.values():
        for metrics in tasks.get(task, {}).values():
            return "retrieval" if "mean_recall" in metrics else "zeroshot"
    return "zeroshot"


def task_title(results: Results, task: str) -> str:
    kind = task_kind(results, task)
    if task == kind:
        return TASK_TITLES[kind]
    return f"{BENCHMARK_TITLES.get(task, task)}: {TASK_TITLES[kind][0].lower()}{TASK_TITLES[kind][1:]}"


def ordered_tasks(results: Results) -> list[str]:
    """The built-in tasks first, then benchmarks in the order they were evaluated."""
    found = _ordered_union(results.values())
    return [task for task in TASK_TITLES if task in found] + [task for task in found if task not in TASK_TITLES]


def _task_layout(results: Results, task: str) -> tuple[list[str], list[str], list[str]]:
    models = [model for model, tasks in results.items() if task in tasks]
    langs = _ordered_union(results[m][task] for m in models)
    metrics = _ordered_union(metrics for m in models for metrics in results[m][task].values())
    return models, langs, metrics


def _value(results: Results, model: str, task: str, lang: str, metric: str) -> float | None:
    if lang == MEAN_ROW:
        values = [per_lang[metric] for per_lang in results[model][task].values() if metric in per_lang]
        return sum(values) / len(values) if values else None
    return results[model][task].get(lang, {}).get(metric)


def markdown_report(results: Results, data: dict | None = None) -> str:
    """Markdown: per task a table with languages as rows and metric x model columns; then what was evaluated."""
    lines = ["# Evaluation", ""]
    for task in ordered_tasks(results):
        title = task_title(results, task)
        models, langs, metrics = _task_layout(results, task)
        columns = [(metric, model) for metric in metrics for model in models]
        lines += [f"## {title}", ""]
        lines.append("| lang | " + " | ".join(f"{metric} {model}" for metric, model in columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for lang in [*langs, MEAN_ROW] if len(langs) > 1 else langs:
            cells = []
            for metric, model in columns:
                value = _value(results, model, task, lang, metric)
                cells.append("-" if value is None else f"{value:.2f}")
            label = f"**{lang}**" if lang == MEAN_ROW else lang
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if data:
        lines += ["## Data", ""]
        for task, info in data.items():
            details = ", ".join(f"{key}: {value}" for key, value in info.items() if key != "languages")
            lines.append(f"- {task}: {details}")
        lines.append("")
    return "\n".join(lines)


def _count(share: dict | None) -> str:
    if not share:
        return "-"
    if share.get("in_training") is None:
        return f"not checked ({share.get('note', 'no training data of this kind')})"
    return f"{share['in_training']} / {share['total']} ({100 * share['fraction']:.2f}%)"


def leakage_markdown(leakage: dict) -> str:
    """The leakage check as Markdown: per benchmark captions and images found in the training data, then
    captions per language, then what was searched."""
    lines = ["## Leakage: benchmark data found in the training data", "",
             "Captions are compared after NFKC, case folding, punctuation removal and whitespace collapsing; "
             "images by the sha256 of their bytes.", "",
             "| benchmark | captions in training | images in training |", "|---|---:|---:|"]
    for name, entry in leakage.items():
        lines.append(f"| {BENCHMARK_TITLES.get(name, name)} | {_count(entry.get('captions'))} | "
                     f"{_count(entry.get('images'))} |")
    per_language = [(name, lang, share) for name, entry in leakage.items() if entry.get("captions")
                    for lang, share in entry["captions"]["languages"].items()]
    if per_language:
        lines += ["", "| benchmark | lang | captions | in training | % |", "|---|---|---:|---:|---:|"]
        lines += [f"| {BENCHMARK_TITLES.get(name, name)} | {lang} | {share['total']} | {share['in_training']} | "
                  f"{100 * share['fraction']:.2f} |" for name, lang, share in per_language]
    training = next(iter(leakage.values()), {}).get("training")
    if training:
        lines += ["", f"Searched {training['texts']} training texts and {training['images']} training images "
                      f"in {training['seconds']} s: {'; '.join(training['sources'])}."]
    warned = [name for name, entry in leakage.items() if _above(entry)]
    if warned:
        lines += ["", f"**Warning**: above {100 * leakage[warned[0]]['warn_fraction']:.2f}% leaked for "
                      f"{', '.join(BENCHMARK_TITLES.get(name, name) for name in warned)}; their scores overstate "
                      f"zero-shot quality."]
    lines.append("")
    return "\n".join(lines)


def _above(entry: dict) -> bool:
    limit = entry.get("warn_fraction", 0.0)
    captions, images = entry.get("captions"), entry.get("images") or {}
    caption_hit = bool(captions) and (captions["fraction"] > limit
                                      or any(v["fraction"] > limit for v in captions["languages"].values()))
    return caption_hit or (images.get("fraction") is not None and images["fraction"] > limit)


def plot_comparison(results: Results, path: str | Path) -> Path:
    """PNG with one grouped bar chart per task's headline metric: languages on x, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ordered_tasks(results)
    if not tasks:
        raise ValueError("no results to plot")
    # Wide enough for every bar when a benchmark has dozens of languages.
    widest = max(len(_task_layout(results, task)[1]) * len(_task_layout(results, task)[0]) for task in tasks)
    width_inches = min(40, max(10, 0.3 * widest))
    figure, axes = plt.subplots(len(tasks), 1, figsize=(width_inches, 3.6 * len(tasks)), squeeze=False)
    for axis, task in zip(axes[:, 0], tasks):
        metric, label = HEADLINE[task_kind(results, task)]
        if task not in HEADLINE:
            label = f"{BENCHMARK_TITLES.get(task, task)} {label}"
        models, langs, _ = _task_layout(results, task)
        rows = [*langs, MEAN_ROW] if len(langs) > 1 else langs
        width = 0.8 / len(models)
        for number, model in enumerate(models):
            values = [_value(results, model, task, lang, metric) or 0.0 for lang in rows]
            positions = [x + (number - (len(models) - 1) / 2) * width for x in range(len(rows))]
            axis.bar(positions, values, width, label=model)
        axis.set_xticks(range(len(rows)), rows, rotation=90 if len(rows) > 20 else 0)
        axis.set_ylabel(label)
        axis.set_ylim(0, 100)
        axis.grid(axis="y", alpha=0.3)
        # Below the axes: above them it would cover the bars, which reach 100%.
        axis.legend(fontsize="small", ncols=min(len(models), 4), loc="upper center", bbox_to_anchor=(0.5, -0.12),
                    frameon=False)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(results: Results, data: dict, output_dir: str | Path, extra: dict | None = None,
                 leakage: dict | None = None) -> dict[str, str]:
    """Write eval.json, eval.md and eval.png into output_dir; returns their paths. `leakage` (the leakage
    check's result) goes into eval.json as "leakage" and into eval.md as its own section."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "eval.json", "markdown": output_dir / "eval.md", "chart": output_dir / "eval.png"}
    document = {"results": results, "data": data, **(extra or {})}
    if leakage is not None:
        document["leakage"] = leakage
    paths["json"].write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    markdown = markdown_report(results, data)
    if leakage:
        markdown = markdown.rstrip("\n") + "\n\n" + leakage_markdown(leakage)
    paths["markdown"].write_text(markdown, encoding="utf-8")
    plot_comparison(results, paths["chart"])
    return {kind: str(path) for kind, path in paths.items()}
