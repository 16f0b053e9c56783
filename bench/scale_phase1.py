"""Corpus scale: phase 1's setup and the image cache at growing sizes, first start and restart, against
sentence-transformers' make_multilingual recipe in the same run.

For each corpus size (one Moses en-fr corpus of 1-2 everyday sentences per line, so ~8-20 words) a fresh
process runs phase 1's real setup (`ParallelTextData.setup`: read, deduplicate, tokenise into the store,
teacher cache) and one optimizer step of the real `DistillTask` with `build_optimizer`'s AdamW, twice: once
on an empty cache dir (first start) and once more on the filled one (restart). It reports wall time split
into read / tokenise / teacher cache / first step, and the peak RSS of the process tree (tokenising workers
included). The baseline is sentence-transformers' `make_multilingual` recipe on the same files and models:
read the pairs into a `Dataset`, label them with `Dataset.map(teacher.encode, batched=True)`, then one step of
`SentenceTransformerTrainer` with `MSELoss`; it keeps no cache between runs, so its restart is its first start.

Also measured in the same run:
- tokenising per sentence, before and after: the single-process loop of the pre-store `ParallelTextData`
  (`tokenizer(texts[i:i + 10000], truncation=True, max_length=64)` over every sentence) against the store's
  `Dataset.map` over `tokenize_num_proc` processes;
- two ranks: `accelerate launch` of the same setup on 2 gloo processes with a fresh cache: how many
  processes built the store and which teacher-cache chunks each rank computed;
- the image cache (`altclip-train cache-images`'s code path) at three shard-set sizes, first start and restart.

    make bench-scale                                       # the sizes below, ~25 min on 2 cores
    .venv/bin/python bench/scale_phase1.py --sizes 62500,250000,1000000 --images 1250,5000,20000 \
        --json-out bench/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the working tree's altclip_train

from harness import RunMeter, machine, this_command, write_json  # noqa: E402

HERE = Path(__file__).resolve()
MAX_LENGTH = 64
BATCH = 64
# The chunk a 768-d teacher (ViT-L/14) gets by default (~32 MB); this benchmark's 32-d teacher would get
# 512k-row chunks, which would leave a second rank nothing to do at these sizes.
TEACHER_CHUNK_ROWS = 20480


# ----------------------------------------------------------------------------- inputs
def scale_assets(root: Path) -> dict:
    """A tiny CLIP (1 x 32 text and vision towers, 32 px) as teacher and image model, so the frozen forward
    stays small next to the data pipeline this benchmark is about, plus the bench student."""
    from bench_assets import ensure_assets

    from altclip_train.assets import build_once
    from altclip_train.models.tiny import build_tiny_clip

    bench_root = ensure_assets()
    scale_root = root / "models"

    def build(staging: Path) -> None:
        rows = everyday_rows()
        build_tiny_clip(staging / "teacher", [row["en"] for row in rows], vocab_size=800, hidden=32, layers=1,
                        heads=2, intermediate=64, vision_hidden=32, vision_layers=1, image_size=32, patch=8)
        (staging / "COMPLETE").write_text("ok\n")

    build_once(scale_root, scale_root / "COMPLETE", build)
    return {"teacher": str(scale_root / "teacher"), "student": str(bench_root / "student")}


def everyday_rows() -> list[dict[str, str]]:
    import csv

    path = HERE.parents[1] / "altclip_train" / "demo" / "everyday.tsv"
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_corpus(root: Path, pairs: int) -> dict:
    """Moses files en/fr of `pairs` lines; line i joins one or two aligned everyday sentences with a
    line-specific third sentence drawn by the rng, so (almost) every English line is distinct."""
    import numpy as np

    src, tgt = root / f"corpus-{pairs}.en", root / f"corpus-{pairs}.fr"
    if src.is_file() and tgt.is_file():
        return {"source_path": str(src), "target_path": str(tgt)}
    rows = everyday_rows()
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(rows), size=(pairs, 3))
    two = rng.random(pairs) < 0.5
    with open(f"{src}.tmp", "w", encoding="utf-8") as out_en, open(f"{tgt}.tmp", "w", encoding="utf-8") as out_fr:
        for (a, b, c), both in zip(picks.tolist(), two.tolist()):
            chosen = (a, b, c) if both else (a, c)
            out_en.write(" ".join(rows[i]["en"] for i in chosen) + "\n")
            out_fr.write(" ".join(rows[i]["fr"] for i in chosen) + "\n")
    os.replace(f"{src}.tmp", src)
    os.replace(f"{tgt}.tmp", tgt)
    return {"source_path": str(src), "target_path": str(tgt)}


def write_image_shards(root: Path, images: int) -> str:
    """`images` small JPEGs (40 px, decoded and resized to 32) with one caption each, 1000 per shard."""
    import io

    import numpy as np
    from PIL import Image

    from altclip_train.data.prepare_wds import prepare_wds

    out = root / f"images-{images}"
    if (out / "shards" / "manifest.json").is_file():
        return str(out / "shards")
    out.mkdir(parents=True, exist_ok=True)
    rows = everyday_rows()
    rng = np.random.default_rng(1)
    with open(out / "pairs.tsv", "w", encoding="utf-8") as listing:
        listing.write("image\tcaption\tlang\n")
        for image in range(images):
            pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
            name = f"img{image:06d}.jpg"
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
            (out / name).write_bytes(buffer.getvalue())
            listing.write(f"{name}\t{rows[image % len(rows)]['en']}\ten\n")
    prepare_wds(out / "pairs.tsv", out / "shards", shard_size=1000)
    return str(out / "shards")


# ----------------------------------------------------------------------------- workers (one process each)
def worker_framework(args) -> dict:
    import torch
    from accelerate import Accelerator

    from altclip_train.data import corpus_store
    from altclip_train.data.parallel import ParallelTextData
    from altclip_train.tasks.distill import DistillTask
    from altclip_train.train import build_optimizer, set_cpu_threads

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        from accelerate.utils import InitProcessGroupKwargs

        accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    else:
        accelerator = Accelerator(cpu=True)
    set_cpu_threads("auto")
    builds = []
    real_build = corpus_store.build_store
    corpus_store.build_store = lambda *a, **k: builds.append(1) or real_build(*a, **k)
    corpus = json.loads(args.corpus)
    meter = RunMeter(warmup_steps=0)
    meter.start()
    data = ParallelTextData(corpora=[{"lang": "fr", **corpus}], languages=["en", "fr"], batch_size=BATCH,
                            student=args.student, teacher=args.teacher, student_max_length=MAX_LENGTH,
                            teacher_max_length=MAX_LENGTH, cache_dir=args.cache_dir, val_size=500, num_workers=0,
                            teacher_batch_size=512, tokenize_num_proc=args.num_proc,
                            cache_chunk_rows=TEACHER_CHUNK_ROWS)
    data.setup(accelerator)
    meter.mark("data_ready")
    task = DistillTask(teacher=args.teacher, student=args.student)
    optimizer = build_optimizer(task, _optim())
    task.train()
    batch = next(data.train_batches(0))
    loss = task(batch)["loss"]
    loss.backward()
    optimizer.step()
    meter.mark("first_step")
    meter.finish()
    timings = data.store.meta["timings"] if builds else {}
    return {"rank": accelerator.process_index, "world": accelerator.num_processes, "built_store": bool(builds),
            "read_s": timings.get("read_s", 0.0) + timings.get("dedup_s", 0.0),
            "tokenize_s": timings.get("tokenize_s", 0.0), "corpus_s": data.timings["corpus_s"],
            "teacher_cache_s": data.timings["teacher_cache_s"],
            "teacher_chunks_built": data.teacher_cache_stats["chunks_built"],
            "teacher_forward_share": data.teacher_cache_stats["forward_s"] / max(data.teacher_cache_stats["seconds"], 1e-9),
            "first_step_s": meter.marks["first_step"] - meter.marks["data_ready"],
            "to_first_step_s": meter.marks["first_step"], **_memory(meter),
            "pairs": data.store.num_pairs, "loss": float(loss), "torch_threads": torch.get_num_threads()}


def _optim():
    from omegaconf import OmegaConf

    return OmegaConf.create({"lr": 1e-4, "weight_decay": 0.1, "eps": 1e-8, "betas": [0.9, 0.999]})


def _peak(meter: RunMeter) -> float:
    import resource

    return max(meter.peak_tree_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20


def _memory(meter: RunMeter) -> dict:
    return {"peak_rss_mib": _peak(meter), "peak_pss_mib": meter.peak_tree_pss / 2**20,
            "peak_anon_mib": meter.peak_tree_anon / 2**20}


def worker_sentence_transformers(args) -> dict:
    """make_multilingual's setup: pairs into a Dataset, teacher labels by batched map, one trainer step."""
    import torch
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.modules import Dense, LayerNorm, Pooling, Transformer

    from phase1_distill import clip_teacher_module

    torch.set_num_threads(1)
    corpus = json.loads(args.corpus)
    meter = RunMeter(warmup_steps=0)
    meter.start()
    english = Path(corpus["source_path"]).read_text(encoding="utf-8").splitlines()
    french = Path(corpus["target_path"]).read_text(encoding="utf-8").splitlines()
    datasets = DatasetDict({"en-fr": Dataset.from_dict({"english": english, "non_english": french})})
    del english, french
    meter.mark("read")
    teacher = SentenceTransformer(modules=[clip_teacher_module()(args.teacher, MAX_LENGTH)], device="cpu")

    def add_labels(batch):
        return {"label": teacher.encode(batch["english"], batch_size=512, convert_to_numpy=True,
                                        show_progress_bar=False)}

    datasets = datasets.map(add_labels, batched=True, batch_size=30000)
    meter.mark("labels")
    encoder = Transformer(args.student, max_seq_length=MAX_LENGTH, model_kwargs={"add_pooling_layer": False})
    width = encoder.get_embedding_dimension()
    student = SentenceTransformer(device="cpu", modules=[
        encoder, Pooling(width, pooling_mode="cls"), LayerNorm(width),
        Dense(width, teacher.get_embedding_dimension(), activation_function=torch.nn.Identity())])
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(args.cache_dir) / "st"), max_steps=1, per_device_train_batch_size=BATCH,
        learning_rate=1e-4, eval_strategy="no", save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, logging_steps=100)
    SentenceTransformerTrainer(model=student, args=training_args, train_dataset=datasets,
                               loss=losses.MSELoss(model=student)).train()
    meter.mark("first_step")
    meter.finish()
    return {"read_s": meter.marks["read"], "teacher_cache_s": meter.marks["labels"] - meter.marks["read"],
            "first_step_s": meter.marks["first_step"] - meter.marks["labels"],
            "to_first_step_s": meter.marks["first_step"], **_memory(meter)}


def worker_tokenize_baseline(args) -> dict:
    """The pre-store single-process tokenising loop, on every sentence the store tokenises for the student."""
    from transformers import AutoTokenizer

    corpus = json.loads(args.corpus)
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    texts = Path(corpus["source_path"]).read_text(encoding="utf-8").splitlines()
    texts += Path(corpus["target_path"]).read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(texts), 10_000):
        for ids in tokenizer(texts[start:start + 10_000], truncation=True, max_length=MAX_LENGTH)["input_ids"]:
            tokens += len(ids)
    seconds = time.perf_counter() - started
    return {"sentences": len(texts), "seconds": seconds, "sentences_per_s": len(texts) / seconds, "tokens": tokens}


def worker_images(args) -> dict:
    from altclip_train.data import image_cache

    meter = RunMeter(warmup_steps=0)
    meter.start()
    cache = image_cache.build_image_cache(args.shards, args.teacher, cache_dir=args.cache_dir, batch_size=256,
                                          num_workers=1, device="cpu")
    meter.mark("ready")
    meter.finish()
    return {"images": int(cache.index.num_rows), "wall_s": meter.marks["ready"], **_memory(meter),
            "rss_at_start_mib": meter.rss_at_start / 2**20}


def warm_imports(kind: str) -> None:
    """Import what a worker will use before its clock starts: imports cost every recipe the same."""
    import datasets  # noqa: F401
    import torch  # noqa: F401
    import transformers
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, CLIPTextModel  # noqa: F401

    if kind == "sentence-transformers":
        import sentence_transformers.sentence_transformer.losses  # noqa: F401
    else:
        import altclip_train.data.image_cache  # noqa: F401
        import altclip_train.data.parallel  # noqa: F401
        import altclip_train.tasks.distill  # noqa: F401
        from transformers import AltCLIPTextModel, XLMRobertaModel  # noqa: F401
    del transformers


WORKERS = {"framework": worker_framework, "sentence-transformers": worker_sentence_transformers,
           "tokenize-baseline": worker_tokenize_baseline, "images": worker_images}


# ----------------------------------------------------------------------------- orchestration
def spawn(kind: str, extra: list[str], log: Path, world: int = 1, python: str | None = None) -> list[dict]:
    command = [python or sys.executable, str(HERE), "--worker", kind, *extra]
    if world > 1:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(world),
                   "--num_machines", "1", "--main_process_port", "0", *command[1:]]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        rc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    results = [json.loads(line[len("RESULT "):]) for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    if rc or not results:
        raise RuntimeError(f"{kind} failed (exit {rc}); see {log}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="62500,250000,1000000", help="corpus sizes in pairs")
    parser.add_argument("--images", default="1250,5000,20000", help="image shard-set sizes")
    parser.add_argument("--root", default=None, help="work dir (default: $ALTCLIP_CACHE_DIR/bench-scale)")
    parser.add_argument("--num-proc", default="auto", help="data.tokenize_num_proc for the framework")
    parser.add_argument("--skip-baseline", action="store_true", help="leave out sentence-transformers")
    parser.add_argument("--venv", default=str(HERE.parents[1] / ".venv-bench"),
                        help="venv with sentence-transformers for the baseline (created by bench/setup_env.sh if missing)")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    for name in ("--corpus", "--cache-dir", "--teacher", "--student", "--shards"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        warm_imports(args.worker)
        print("RESULT " + json.dumps(WORKERS[args.worker](args)), flush=True)
        return 0

    root = Path(args.root or Path(os.environ.get("ALTCLIP_CACHE_DIR", "~/.cache/altclip_train")).expanduser()
                / "bench-scale")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    models = scale_assets(root)
    common = ["--teacher", models["teacher"], "--student", models["student"], "--num-proc", str(args.num_proc)]
    report = {"command": this_command(argv), "machine": machine(), "phase1": [], "images": []}
    import shutil

    baseline_python = None
    if not args.skip_baseline:
        from run_all import ensure_venv

        baseline_python = str(ensure_venv(Path(args.venv)))
    for size in [int(s) for s in args.sizes.split(",")]:
        corpus = json.dumps(write_corpus(root, size))
        cache = root / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        row = {"pairs": size}
        run = ["--corpus", corpus, "--cache-dir", str(cache), *common]
        row["first"] = spawn("framework", run, root / "logs" / f"framework-{size}-first.log")[0]
        row["restart"] = spawn("framework", run, root / "logs" / f"framework-{size}-restart.log")[0]
        if not args.skip_baseline:
            row["sentence_transformers"] = spawn("sentence-transformers", run, root / "logs" / f"st-{size}.log",
                                                 python=baseline_python)[0]
        if size == int(args.sizes.split(",")[1 if "," in args.sizes else 0]):
            row["tokenize_before"] = spawn("tokenize-baseline", run, root / "logs" / f"tokenize-{size}.log")[0]
            two = root / f"cache-{size}-two-ranks"
            shutil.rmtree(two, ignore_errors=True)
            row["two_ranks"] = spawn("framework", ["--corpus", corpus, "--cache-dir", str(two), *common],
                                     root / "logs" / f"framework-{size}-two-ranks.log", world=2)
            shutil.rmtree(two, ignore_errors=True)
        report["phase1"].append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    for images in [int(s) for s in args.images.split(",") if s]:
        shards = write_image_shards(root, images)
        cache = root / f"image-cache-{images}"
        shutil.rmtree(cache, ignore_errors=True)
        run = ["--shards", shards, "--cache-dir", str(cache), *common]
        row = {"images": images, "first": spawn("images", run, root / "logs" / f"images-{images}-first.log")[0],
               "restart": spawn("images", run, root / "logs" / f"images-{images}-restart.log")[0]}
        report["images"].append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    print("RESULT " + json.dumps(report))
    write_json(args.json_out, report)
    print(summary_table(report))
    return 0


def summary_table(report: dict) -> str:
    lines = ["| pairs | first start: read / tokenise / teacher cache / first step | first wall | first peak anon / PSS / RSS | "
             "restart wall | restart peak anon / PSS / RSS | sentence-transformers wall | ST peak anon / PSS / RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["phase1"]:
        first, again, st = row["first"], row["restart"], row.get("sentence_transformers", {})
        lines.append(f"| {row['pairs']:,} | {first['read_s']:.1f} / {first['tokenize_s']:.1f} / "
                     f"{first['teacher_cache_s']:.1f} / {first['first_step_s']:.1f} s | {first['to_first_step_s']:.1f} s | "
                     f"{_mib(first)} | {again['to_first_step_s']:.1f} s | {_mib(again)} | "
                     f"{st.get('to_first_step_s', float('nan')):.1f} s | {_mib(st)} |")
    lines += ["", "| images | first wall | first peak anon / PSS / RSS | restart wall | restart peak anon / PSS / RSS |", "|---|---|---|---|---|"]
    for row in report["images"]:
        lines.append(f"| {row['images']:,} | {row['first']['wall_s']:.1f} s | {_mib(row['first'])} | "
                     f"{row['restart']['wall_s']:.1f} s | {_mib(row['restart'])} |")
    return "\n".join(lines)


def _mib(result: dict) -> str:
    if "peak_rss_mib" not in result:
        return "n/a"
    return f"{result['peak_anon_mib']:.0f} / {result['peak_pss_mib']:.0f} / {result['peak_rss_mib']:.0f} MiB"


if __name__ == "__main__":
    sys.exit(main())
