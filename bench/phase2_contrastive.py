"""Phase-2 benchmark: one locked-image contrastive run of one recipe, on the benchmark's tiny towers and shards.

Recipes (same shards, image size, text tower initialisation, batch of 64 pairs, 1 epoch, fp32 on CPU):

  framework  `altclip_train.train.train` on the composed `altclip-train contrastive` config, as the CLI
             runs it, with `data.image_cache=true`: every image is decoded and embedded once by the
             frozen image side into a fresh cache dir (inside the wall time), then training reads
             captions + cached float16 vectors; captions padded per batch.
  openclip   open_clip's own training loop (`open_clip_train.main`, open-clip-torch 3.3.0) with
             `--lock-image`: every step decodes the batch's JPEGs in its WebDataset pipeline, runs the
             frozen ViT forward, and trains the text tower. Its HF tokenizer pads every caption to the
             77-token context, as open_clip always does.

How open_clip's model matches ours. It is a `CustomTextCLIP` from a model config written here: vision
`VisionTransformer` with the teacher's ViT shape (4 layers, width 128, 64-wide heads, mlp 512, 112 px,
8 px patches, quick_gelu, projection 96), text `HFTextEncoder` on the same XLM-R checkpoint the phase-1
student was built from, pooled at <s> (`cls_last_hidden_state_pooler`) with a linear projection to 96.
Same shapes, so the same FLOPs per pair; the differences are open_clip's own modules: its ViT runs
`nn.MultiheadAttention` where ours runs the HF CLIP vision tower, its text head is one Linear where
AltCLIP has pre_LN + transformation + text_projection (0.3% of the text tower's FLOPs), the ViT starts
from random weights (the values do not change the cost), and its training augmentation is
RandomResizedCrop(scale 0.9-1) where our cache uses resize + centre crop. Hyper-parameters: lr 1e-4,
weight decay 0.05, warmup 2 steps, grad clip 5.0 in both; open_clip's AdamW, ours from the config.

    python bench/phase2_contrastive.py --recipe framework --json-out bench/results/runs/p2-framework.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the working tree's altclip_train

from harness import RunMeter, library_versions, machine, quiet_libraries, this_command, write_json  # noqa: E402
from phase1_distill import STUDENT_PAD_ID, PaddingCounter  # noqa: E402

RECIPES = ("framework", "openclip")
OPENCLIP_MODEL = "bench-tiny-altclip"


# ----------------------------------------------------------------------------- framework
def framework_config(root: Path, workdir: Path, args):
    from altclip_train.cli import compose_config

    overrides = [
        f"model.model.teacher={root / 'teacher'}", f"model.model.student={root / 'phase1_student'}",
        f"data.shards={root / 'phase2' / 'shards'}", "data.image_cache=true",
        f"data.cache_dir={args.cache_dir or workdir / 'cache'}",
        f"data.batch_size={args.batch_size}", f"data.num_workers={args.num_workers}",
        "logger=jsonl", "name=bench-phase2", f"run_dir={workdir / 'run'}",
        f"trainer.epochs={args.epochs}", "trainer.eval_at_start=false", "trainer.eval_every=0",
        "trainer.save_every=0", "trainer.log_every=10",
        "optim.lr=1e-4", "optim.weight_decay=0.05", "optim.warmup_steps=2", "optim.grad_clip=5.0",
        f"seed={args.seed}",
    ] + (["data.bucket_by_length=false"] if args.no_bucketing else [])
    return compose_config("contrastive", overrides), overrides


def run_framework(root: Path, workdir: Path, args, meter: RunMeter) -> dict:
    from altclip_train.train import train

    cfg, overrides = framework_config(root, workdir, args)
    meter.start()
    train(cfg)
    meter.finish()
    return {"overrides": overrides}


# ----------------------------------------------------------------------------- open_clip
def openclip_model_config(root: Path, manifest: dict) -> dict:
    teacher = manifest["teacher_shape"]
    return {
        "embed_dim": teacher["projection_dim"],
        "quick_gelu": True,
        "vision_cfg": {"image_size": teacher["image_size"], "layers": teacher["vision_layers"],
                       "width": teacher["vision_hidden"], "head_width": 64, "mlp_ratio": 4.0,
                       "patch_size": teacher["patch"]},
        "text_cfg": {"hf_model_name": str(root / "student"), "hf_tokenizer_name": str(root / "student"),
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "hf_proj_type": "linear",
                     "context_length": 77},
    }


def openclip_argv(root: Path, workdir: Path, args, manifest: dict) -> list[str]:
    shards = sorted(path.stem for path in (root / "phase2" / "shards").glob("shard-*.tar"))
    brace = f"{root / 'phase2' / 'shards'}/shard-{{{shards[0][6:]}..{shards[-1][6:]}}}.tar"
    return [
        "--model", OPENCLIP_MODEL, "--train-data", brace,
        "--dataset-type", "webdataset", "--train-num-samples", str(manifest["phase2_images"]),
        "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--workers", str(args.num_workers),
        "--precision", "fp32", "--device", "cpu", "--lock-image",
        "--lr", "1e-4", "--wd", "0.05", "--warmup", "2", "--grad-clip-norm", "5.0", "--seed", str(args.seed),
        "--logs", str(workdir / "logs"), "--name", "bench", "--report-to", "", "--log-every-n-steps", "10",
    ]


def webdataset_compat() -> None:
    """open_clip's trainer pins webdataset<=0.2.86; the project needs >=0.2.100. The one difference it
    trips over is the end-of-shard marker (an empty dict) that webdataset 1.x's `tar_file_expander`
    yields, which open_clip's `group_by_keys_nothrow` cannot read; turning the marker off restores the
    0.2.x stream exactly."""
    import functools

    import open_clip_train.data as openclip_data
    from webdataset.tariterators import tar_file_expander

    openclip_data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)


def run_openclip(root: Path, workdir: Path, args, meter: RunMeter, manifest: dict) -> dict:
    import open_clip
    from open_clip_train.main import main as openclip_main

    webdataset_compat()
    config_dir = workdir / "model_configs"
    config_dir.mkdir()
    (config_dir / f"{OPENCLIP_MODEL}.json").write_text(json.dumps(openclip_model_config(root, manifest), indent=2))
    open_clip.add_model_config(config_dir)
    argv = openclip_argv(root, workdir, args, manifest)
    meter.start()
    status = openclip_main(argv)
    meter.finish()
    if status not in (None, 0):
        raise RuntimeError(f"open_clip_train.main exited with {status}")
    return {"open_clip_argv": argv, "model_config": openclip_model_config(root, manifest)}


# ----------------------------------------------------------------------------- entry point
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--assets", default=None, help="bench assets dir (default: built on first use, see bench_assets.py)")
    parser.add_argument("--batch-size", type=int, default=64, help="image-text pairs per step")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=1,
                        help="data-loader workers, both recipes (1: image decoding beside a 1-thread model)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of the steady-state pairs/s")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every recipe")
    parser.add_argument("--no-bucketing", action="store_true",
                        help="framework: batches without length bucketing (what bucketing buys, for BENCHMARKS.md)")
    parser.add_argument("--cache-dir", default=None,
                        help="framework: image-cache dir kept after the run (default: a fresh one, removed after), "
                             "so a second run with the same dir measures a warm cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    import torch  # imported before the clock starts, like every library below
    import transformers  # noqa: F401

    torch.set_num_threads(args.threads)
    from bench_assets import ensure_assets, load_manifest

    root = ensure_assets(args.assets)
    manifest = load_manifest(root)
    if args.recipe == "openclip":
        import open_clip_train.main  # noqa: F401
        import torchvision  # noqa: F401
        import webdataset  # noqa: F401
    else:
        import altclip_train.data.image_text  # noqa: F401
        import altclip_train.tasks.contrastive  # noqa: F401
        import altclip_train.train  # noqa: F401
        from transformers import AltCLIPModel, CLIPModel  # noqa: F401  (resolve the lazy modules)
    padding = PaddingCounter(manifest["student_vocab"], STUDENT_PAD_ID)
    meter = RunMeter(warmup_steps=args.warmup_steps)
    with tempfile.TemporaryDirectory(prefix=f"bench-p2-{args.recipe}-") as tmp:
        workdir = Path(tmp)
        if args.recipe == "openclip":
            details = run_openclip(root, workdir, args, meter, manifest)
        else:
            details = run_framework(root, workdir, args, meter)
    result = {
        "phase": 2, "recipe": args.recipe, "command": this_command(argv), **meter.summary(args.batch_size),
        "text_pad_efficiency": padding.efficiency(), "details": details, "machine": machine(),
        "libraries": library_versions("transformers", "open-clip-torch", "torchvision", "webdataset", "accelerate"),
        "assets": manifest,
    }
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
