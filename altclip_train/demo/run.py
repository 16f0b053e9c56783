"""`altclip-train demo` (what `make demo` runs): the whole AltCLIP method, offline, on real images.

scikit-learn's handwritten digits with captions in 9 languages stand in for LAION, and tiny
models stand in for ViT-L/14 and XLM-R large. Every step is a real `altclip-train` command with a
bundled experiment config, exactly as a user would run it:

  step 0  altclip-train contrastive experiment=demo_teacher    English-only teacher CLIP from scratch
  step 1  altclip-train distill experiment=demo_distill        its text tower -> multilingual XLM-R
  step 2  altclip-train contrastive experiment=demo_contrastive  AltCLIP, image tower frozen
  step 3  altclip-train eval ...                               zero-shot per language, held-out digits
                                                               and held-out prompt templates
Everything lands in one run dir (default outputs/demo): models, report, chart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LANGUAGES = ["en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it"]
# Short runs for the test suite: the same commands with fewer steps.
QUICK_OVERRIDES = {"teacher": ["trainer.max_steps=20"], "distill": ["trainer.max_steps=30", "trainer.eval_every=15"],
                   "contrastive": ["trainer.max_steps=10", "trainer.eval_every=5"]}


def banner(text: str) -> None:
    print(f"\n{'=' * 78}\n{text}\n{'=' * 78}", flush=True)


def run_command(args: list[str], env: dict) -> None:
    """One `altclip-train` command in a child process, its progress bars shown as they run."""
    command = [sys.executable, "-m", "altclip_train", *args]
    print("$ altclip-train " + " ".join(args), flush=True)
    result = subprocess.run(command, env=env)
    if result.returncode:
        raise SystemExit(f"altclip-train demo: step failed ({' '.join(args[:2])}), exit code {result.returncode}")


def prepare(out: Path, seed: int, env: dict) -> None:
    """Data, locally trained tokenizers, randomly initialised tiny models, WebDataset shards."""
    from altclip_train.demo.build_data import build_demo_data
    from altclip_train.models.tiny import build_tiny_clip, build_tiny_xlmr

    # 16 px already holds every pixel of an 8x8 scan; patch 4 gives the ViT 16 patches to read.
    data = build_demo_data(out / "data", seed=seed, image_size=16)
    manifest = data.read_manifest()
    print(f"digits: {manifest.get('counts', manifest)}", flush=True)
    build_tiny_clip(out / "init" / "teacher", data.all_texts("en"), seed=seed, vocab_size=600,
                    hidden=64, layers=2, patch=4, image_size=16, projection_dim=64)
    build_tiny_xlmr(out / "init" / "student", data.all_texts(), seed=seed, vocab_size=4000,
                    hidden=64, layers=2, intermediate=256)
    for name, pairs in (("teacher", data.teacher_pairs), ("multilingual", data.multilingual_pairs)):
        if not (out / "shards" / name / "manifest.json").is_file():
            run_command(["prepare-wds", str(pairs), str(out / "shards" / name), "--image-root", str(data.root),
                         "--shard-size", "500"], env)


def phase1_validation(run_dir: Path) -> tuple[dict, dict]:
    from altclip_train.tracking import read_metrics

    val = [m for m in read_metrics(run_dir) if "val/mse" in m]
    return (val[0], val[-1]) if val else ({}, {})


def summarise(out: Path, started: float) -> None:
    first, last = phase1_validation(out / "step1-distill")
    banner("altclip-train demo: summary")
    if first:
        print("Phase 1 validation (held-out parallel sentences), start -> end:")
        print(f"  {'lang':<5} {'MSE':>17}  {'translation acc':>19}")
        for lang in LANGUAGES:
            mse, acc = f"val/mse/{lang}", f"val/translation_acc/{lang}"
            if mse in first:
                print(f"  {lang:<5} {first[mse]:>7.4f} -> {last[mse]:<7.4f}  {first[acc]:>8.3f} -> {last[acc]:<8.3f}")
    report = out / "step3-eval" / "eval.md"
    if report.is_file():
        print("\nZero-shot classification on held-out digits, held-out prompt templates (%):\n")
        print(report.read_text())
    print(f"run dir: {out}")
    for label, path in (("teacher CLIP", "step0-teacher/final"), ("phase-1 student", "step1-distill/final"),
                        ("phase-1 AltCLIP", "step1-altclip"), ("phase-2 AltCLIP", "step2-contrastive/final"),
                        ("report", "step3-eval/eval.md"), ("chart", "step3-eval/eval.png"),
                        ("results", "step3-eval/eval.json")):
        print(f"  {label:<16} {out / path}")
    print(f"total time: {time.time() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="altclip-train demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo", help="run dir for every artifact (default outputs/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps per phase (used by the tests)")
    parser.add_argument("--grow", action="store_true", help="after a finished demo: add 3 languages with and "
                                                            "without replay, and the MSE vs combined-loss ablation")
    parser.add_argument("--grow-epochs", type=int, default=30, help="phase-1 epochs of each --grow run")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    started = time.time()
    if args.grow:
        from altclip_train.demo.grow import grow, summarise as summarise_growth

        summarise_growth(out, grow(out, env, args.grow_epochs), started)
        return 0
    common = [f"demo_dir={out}", f"seed={args.seed}", "trainer.resume=null"]
    quick = QUICK_OVERRIDES if args.quick else {}

    banner("preparing: digits, captions in 9 languages, tokenizers, tiny models, WebDataset shards")
    prepare(out, args.seed, env)

    banner("step 0: pretrain a tiny English-only teacher CLIP from scratch (both towers trained)")
    run_command(["contrastive", "experiment=demo_teacher", *common, *quick.get("teacher", [])], env)

    banner("step 1: distil the teacher's text tower into a multilingual XLM-R student (no images)")
    run_command(["distill", "experiment=demo_distill", *common, *quick.get("distill", [])], env)
    from altclip_train.models.assemble import save_assembled

    save_assembled(str(out / "step0-teacher" / "final"), str(out / "step1-distill" / "final"),
                           out / "step1-altclip")

    banner("step 2: contrastive tuning on multilingual captions, image tower frozen (cached once)")
    run_command(["contrastive", "experiment=demo_contrastive", *common, *quick.get("contrastive", [])], env)

    banner("step 3: zero-shot accuracy per language on held-out digits and held-out templates")
    data = out / "data"
    run_command(["eval", f"models.teacher={out / 'step0-teacher' / 'final'}", f"models.phase1={out / 'step1-altclip'}",
                 f"models.phase2={out / 'step2-contrastive' / 'final'}", f"zeroshot.images={data / 'images' / 'test'}",
                 f"zeroshot.classnames_dir={data / 'eval' / 'classnames'}",
                 f"zeroshot.templates_dir={data / 'eval' / 'templates'}", "num_workers=0",
                 f"output_dir={out / 'step3-eval'}", f"seed={args.seed}"], env)
    summarise(out, started)
    (out / "demo.json").write_text(json.dumps({"seconds": round(time.time() - started, 1), "quick": args.quick,
                                               "seed": args.seed}, indent=2))
    return 0
