"""`altclip-train demo --grow` (what `make demo-languages` runs): growing a trained model to new languages, and
phase 1's two objectives side by side, on the demo's data (needs `make demo` first: it reuses its teacher).

  base      phase 1 on 6 of the 9 demo languages (en zh es fr ru ja)
  replay    continue from base on ko ar it, 30% of every batch replayed from zh es fr ru ja
  no-replay the same continuation with the old languages evaluated only (replay fraction 0)
  combined  phase 1 on all 9 languages with model.loss=mse+contrastive, against the demo's own MSE student

Each continuation writes its forgetting report (forgetting.json/.md/.png); the summary prints the tables and the
per-language zero-shot accuracy of the MSE and the combined student (each assembled with the teacher's image
side, the demo's step-1 AltCLIP). Everything lands under <demo dir>/grow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from altclip_train.demo.run import banner, run_command

OLD, NEW = ["zh", "es", "fr", "ru", "ja"], ["ko", "ar", "it"]
# The demo's phase-1 settings (configs/phases/distill/experiment/demo_distill.yaml), for runs that cannot use
# that experiment because they use another one (add_languages).
DEMO_DATA = ["data.batch_size=128", "data.val_size=40", "data.num_workers=0", "optim.weight_decay=0.01",
             "optim.warmup_steps=50", "trainer.log_every=25", "trainer.save_every=400", "logger=jsonl",
             "trainer.resume=null"]


def corpora(demo: Path, langs: list[str]) -> str:
    return "[" + ",".join(f"{{lang: {lang}, path: '{demo}/data/parallel/{lang}.tsv'}}" for lang in langs) + "]"


def grow(demo: Path, env: dict, epochs: int = 30) -> dict:
    out = demo / "grow"
    teacher = demo / "step0-teacher" / "final"
    if not (teacher / "config.json").is_file():
        raise SystemExit(f"altclip-train demo --grow: no demo teacher at {teacher}; run `make demo` first")
    common = [f"model.teacher={teacher}", f"data.cache_dir={demo}/cache", *DEMO_DATA]
    banner("grow 1/3: phase 1 on en zh es fr ru ja")
    run_command(["distill", f"run_dir={out}/base", f"model.student={demo}/init/student", *common,
                 f"data.corpora={corpora(demo, OLD)}", "optim.lr=2e-3", f"trainer.epochs={epochs}",
                 f"trainer.eval_every={10 ** 6}"], env)
    for name, fraction in (("replay", 0.3), ("no-replay", 0.0)):
        banner(f"grow: add ko ar it ({name})")
        run_command(["distill", "experiment=add_languages", f"run_dir={out}/{name}", f"model.student={out}/base/final",
                     *common, f"data.corpora={corpora(demo, NEW)}", f"data.replay.corpora={corpora(demo, OLD)}",
                     f"data.replay.fraction={fraction}", "optim.lr=1e-3", f"trainer.epochs={epochs}",
                     f"trainer.eval_every={10 ** 6}"], env)
    banner("ablation: phase 1 on all 9 languages with model.loss=mse+contrastive")
    run_command(["distill", "experiment=demo_distill", f"demo_dir={demo}", f"hydra.run.dir={out}/combined",
                 "model.loss=mse+contrastive", "trainer.resume=null"], env)
    from altclip_train.models.assemble import save_assembled

    save_assembled(str(teacher), str(out / "combined" / "final"), out / "combined-altclip")
    data = demo / "data"
    run_command(["eval", f"+models.mse={demo / 'step1-altclip'}", f"+models.combined={out / 'combined-altclip'}",
                 f"zeroshot.images={data / 'images' / 'test'}", f"zeroshot.classnames_dir={data / 'eval' / 'classnames'}",
                 f"zeroshot.templates_dir={data / 'eval' / 'templates'}", "num_workers=0",
                 f"output_dir={out / 'ablation-eval'}"], env)
    return {name: json.loads((out / name / "forgetting.json").read_text()) for name in ("replay", "no-replay")}


def summarise(demo: Path, tables: dict, started: float) -> None:
    out = demo / "grow"
    banner("grow: translation accuracy (held-out pairs), before -> after adding ko ar it")
    print("| language | role | replay 0.3 | no replay |\n|---|---|---|---|")
    rows = {name: {r["lang"]: r for r in table["rows"] if r["metric"] == "val/translation_acc"}
            for name, table in tables.items()}
    for lang in ["en", *OLD, *NEW]:
        cells = [f"{rows[n][lang]['before']:.3f} -> {rows[n][lang]['after']:.3f}" for n in ("replay", "no-replay")]
        print(f"| {lang} | {rows['replay'][lang]['role']} | {cells[0]} | {cells[1]} |")
    for name, table in tables.items():
        print(f"{name}: mean change " + ", ".join(f"{k} {v:+.3f}" for k, v in table["mean_change"].items()
                                                  if k.startswith("val/translation_acc")))
    report = out / "ablation-eval" / "eval.md"
    if report.is_file():
        banner("ablation: zero-shot accuracy per language (%), MSE student vs mse+contrastive student")
        print(report.read_text())
    print(f"total time: {time.time() - started:.0f} s; everything under {out}")
