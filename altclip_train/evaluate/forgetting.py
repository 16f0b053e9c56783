"""What growing a model to new languages cost the old ones: per-language metrics before the first step and at
the end of a continued run, written as `forgetting.json`, `forgetting.md` and `forgetting.png` in its run dir.

The run's data module names each language's role (`language_roles`: `old` for what the model already knew,
`new` for what this run adds); the loop evaluates at step 0 whenever it does, and this module reads both
evaluations back from `metrics.jsonl`. Every per-language metric the task logs counts (`<ns>/<metric>/<lang>`:
phase 1's `val/translation_acc/zh`, `val/mse/zh`; phase 2's evaluators' `eval/...`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from altclip_train.tracking import read_metrics

log = logging.getLogger(__name__)

# Metrics where lower is better; everything else (accuracy, recall) is better higher.
LOWER_IS_BETTER = ("mse", "loss")


def per_language(record: dict, roles: dict[str, str]) -> dict[str, dict[str, float]]:
    """{metric: {lang: value}} for the keys of `record` that end in a language of `roles`."""
    out: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        metric, _, lang = key.rpartition("/")
        if lang in roles and metric and isinstance(value, (int, float)):
            out.setdefault(metric, {})[lang] = float(value)
    return out


def forgetting_table(run_dir: str | Path, roles: dict[str, str]) -> dict:
    """Before/after per metric and language, from the first and the last evaluation in `metrics.jsonl`."""
    evaluations = [r for r in read_metrics(run_dir) if per_language(r, roles)]
    if len(evaluations) < 2 or evaluations[0]["step"] != 0:
        raise ValueError(f"{run_dir}: the forgetting report needs an evaluation at step 0 and one later")
    before, after = per_language(evaluations[0], roles), per_language(evaluations[-1], roles)
    rows = []
    for metric in sorted(before):
        for lang in sorted(before[metric], key=lambda lang: (roles[lang], lang)):
            if lang in after.get(metric, {}):
                rows.append({"metric": metric, "lang": lang, "role": roles[lang], "before": before[metric][lang],
                             "after": after[metric][lang], "change": after[metric][lang] - before[metric][lang]})
    summary = {}
    for metric in sorted(before):
        for role in ("old", "new"):
            changes = [row["change"] for row in rows if row["metric"] == metric and row["role"] == role]
            if changes:
                summary[f"{metric}/{role}"] = sum(changes) / len(changes)
    return {"steps": [evaluations[0]["step"], evaluations[-1]["step"]], "rows": rows, "mean_change": summary}


def markdown(table: dict) -> str:
    lines = [f"# Forgetting: step {table['steps'][0]} -> step {table['steps'][1]}", "",
             "| metric | language | role | before | after | change |", "|---|---|---|---:|---:|---:|"]
    for row in table["rows"]:
        lines.append(f"| {row['metric']} | {row['lang']} | {row['role']} | {row['before']:.4f} | "
                     f"{row['after']:.4f} | {row['change']:+.4f} |")
    lines += ["", "Mean change per role: " + ", ".join(f"{k} {v:+.4f}" for k, v in table["mean_change"].items()), ""]
    return "\n".join(lines)


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({row["metric"] for row in table["rows"]})
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        rows = [row for row in table["rows"] if row["metric"] == metric]
        positions = range(len(rows))
        axis.bar([p - 0.2 for p in positions], [r["before"] for r in rows], width=0.4, label="before")
        axis.bar([p + 0.2 for p in positions], [r["after"] for r in rows], width=0.4, label="after")
        axis.set_xticks(list(positions), [f"{r['lang']}\n({r['role']})" for r in rows])
        axis.set_title(metric)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_forgetting_report(run_dir: str | Path, roles: dict[str, str]) -> dict:
    """forgetting.json / .md / .png in `run_dir`; returns the table."""
    run_dir = Path(run_dir)
    table = forgetting_table(run_dir, roles)
    (run_dir / "forgetting.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    (run_dir / "forgetting.md").write_text(markdown(table), encoding="utf-8")
    plot(table, run_dir / "forgetting.png")
    means = ", ".join(f"{k} {v:+.4f}" for k, v in table["mean_change"].items())
    log.info("forgetting report: %s (%s)", run_dir / "forgetting.md", means)
    return table
