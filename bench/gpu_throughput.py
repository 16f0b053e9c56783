"""Training-step throughput and MFU of both AltCLIP phases on one GPU, timed on the shipped code path.

What runs is what `altclip-train distill|contrastive` runs, piece by piece: the config composed as the
CLI composes it (`experiment=altclip_m9_distill` / `altclip_m9_contrastive` plus the overrides below),
`altclip_train.train.build_accelerator` (bf16 autocast on GPU), the Task `cfg.model` instantiates, the data
module `cfg.data` instantiates (`setup(accelerator)`, `train_batches(0)`) over a synthetic parallel corpus
(TSV and Moses files) and synthetic WebDataset shards, `build_optimizer`'s fused AdamW, and the loop's own
`training_step` (accumulate, Task forward, `accelerator.backward`, grad clip, step, zero_grad). This script
adds only the clock and the FLOP count (`altclip_train/flops.py`: useful FLOPs from the batches' real token
lengths, so padding shows up as lower MFU).

Models are random-init checkpoints written once from configs, nothing downloaded: `--size real` is CLIP
ViT-L/14 (text 12 x 768, vision 24 x 1024 at 224 px) and XLM-R large (24 x 1024, vocab 250002); `bench` has
the CPU benchmark's proportions (bench_assets.py) and `tiny` is for smoke tests. Tokenizers are trained
locally on the demo's nine-language sentences; captions join 1-4 of them (about 24 student tokens on
average, with a long tail), as bench_assets.py does.

Cases (each a fresh build, `--warmup` untimed steps, then `--steps` timed ones):
  phase1/teacher-cache   teacher targets from the on-disk cache (filled by data setup, not timed)
  phase1/live-teacher    model.teacher_cache=false: the frozen teacher text tower runs every step
  phase2/image-cache     image embeddings from the on-disk cache (filled by data setup, not timed)
  phase2/live-tower      data.image_cache=false: JPEG decoding in workers + frozen ViT every step
  phase1/teacher-cache+<option>   one option's effect: grad-ckpt (model.gradient_checkpointing=true),
                         pad1 (data.pad_to_multiple_of=1, against the default auto = 8 on GPU), compile
                         (trainer.compile=true; its warmup absorbs compilation), reported as ratios

MFU = counted FLOPs / timed seconds / the card's dense bf16 peak (altclip_train.flops table, or
--peak-tflops); the measured peak of a large bf16 matmul is reported beside it. A case that would not finish
inside --budget-s (default 230 s in all) is skipped and reported as such.

    python bench/gpu_throughput.py --json-out bench/results/gpu_throughput.json     # one H100/H200, < 4 min
    python bench/gpu_throughput.py --dry-run     # no GPU: parameter counts and GFLOP/pair at the real sizes
    python bench/gpu_throughput.py --device cpu --size bench --cases phase1/teacher-cache,phase1/teacher-cache+compile
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the working tree's altclip_train

import numpy as np  # noqa: E402
import torch  # noqa: E402

from altclip_train import flops  # noqa: E402
from altclip_train import train as loop  # noqa: E402  (looked up at call time: tests spy on it)

ASSETS_VERSION = "gpu-throughput-v1"
EXPERIMENTS = {"distill": "altclip_m9_distill", "contrastive": "altclip_m9_contrastive"}
CASES = {
    "phase1/teacher-cache": ("distill", []),
    "phase1/live-teacher": ("distill", ["model.teacher_cache=false"]),
    "phase2/image-cache": ("contrastive", []),
    "phase2/live-tower": ("contrastive", ["data.image_cache=false"]),
    "phase1/teacher-cache+grad-ckpt": ("distill", ["model.gradient_checkpointing=true"]),
    "phase1/teacher-cache+pad1": ("distill", ["data.pad_to_multiple_of=1"]),
    "phase1/teacher-cache+compile": ("distill", ["trainer.compile=true"]),
}
# (CLIP text, CLIP vision, XLM-R): layers, width, heads, mlp; vocab; vision image size and patch.
SIZES = {
    "real": dict(text=(12, 768, 12, 3072), vision=(24, 1024, 16, 4096), image=(224, 14), projection=768,
                 student=(24, 1024, 16, 4096), clip_vocab=49408, xlmr_vocab=250002, xlmr_positions=514),
    "bench": dict(text=(2, 96, 2, 384), vision=(4, 128, 2, 512), image=(112, 8), projection=96,
                  student=(4, 128, 2, 512), clip_vocab=1000, xlmr_vocab=5000, xlmr_positions=79),
    "tiny": dict(text=(1, 32, 2, 64), vision=(1, 32, 2, 64), image=(32, 8), projection=32,
                 student=(1, 32, 2, 64), clip_vocab=1000, xlmr_vocab=5000, xlmr_positions=79),
}
PHOTOS = 32  # distinct JPEGs, reused across samples: decoding costs the same, building them does not


# ----------------------------------------------------------------------------- assets
def model_configs(size: str, clip_tokenizer):
    from transformers import CLIPConfig, XLMRobertaConfig

    s = SIZES[size]
    (tl, th, tn, tf), (vl, vh, vn, vf), (image, patch) = s["text"], s["vision"], s["image"]
    clip = CLIPConfig(projection_dim=s["projection"], text_config=dict(
        num_hidden_layers=tl, hidden_size=th, num_attention_heads=tn, intermediate_size=tf, vocab_size=s["clip_vocab"],
        max_position_embeddings=77, projection_dim=s["projection"], bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id, pad_token_id=clip_tokenizer.pad_token_id), vision_config=dict(
        num_hidden_layers=vl, hidden_size=vh, num_attention_heads=vn, intermediate_size=vf, image_size=image,
        patch_size=patch, projection_dim=s["projection"]))
    sl, sh, sn, sf = s["student"]
    xlmr = XLMRobertaConfig(num_hidden_layers=sl, hidden_size=sh, num_attention_heads=sn, intermediate_size=sf,
                            vocab_size=s["xlmr_vocab"], max_position_embeddings=s["xlmr_positions"], type_vocab_size=1,
                            layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return clip, xlmr


def build_assets(root: Path, size: str, pairs: int, images: int, device: torch.device, weights: bool = True) -> Path:
    """Teacher CLIP, XLM-R and its phase-1 form (AltCLIPTextModel) as local checkpoints, a parallel corpus
    (4 TSV + 4 Moses corpora) and WebDataset shards; built once per (size, pairs, images)."""
    from transformers import AltCLIPTextModel, CLIPModel, CLIPProcessor, XLMRobertaModel

    from altclip_train.assets import build_once
    from altclip_train.data.images import clip_preprocessor
    from altclip_train.data.prepare_wds import prepare_wds
    from altclip_train.demo.build_data import load_everyday
    from altclip_train.models.student import student_config_from_xlmr
    from altclip_train.models.tiny import train_clip_tokenizer, train_xlmr_tokenizer
    from bench_assets import LANGUAGES, compose_captions, synthetic_photo

    def build(out: Path) -> None:
        rows, rng = load_everyday(), np.random.default_rng(0)
        clip_tok = train_clip_tokenizer([r["en"] for r in rows], out / "teacher", vocab_size=1000)
        xlmr_tok = train_xlmr_tokenizer([r[lang] for r in rows for lang in LANGUAGES], out / "student",
                                        vocab_size=5000, model_max_length=77)
        xlmr_tok.save_pretrained(out / "phase1")
        clip_config, xlmr_config = model_configs(size, clip_tok)
        image = clip_config.vision_config.image_size
        CLIPProcessor(image_processor=clip_preprocessor(image).processor,
                      tokenizer=clip_tok).save_pretrained(out / "teacher")
        for model_class, config, where in ((CLIPModel, clip_config, "teacher"), (XLMRobertaModel, xlmr_config, "student"),
                                           (AltCLIPTextModel, student_config_from_xlmr(xlmr_config, clip_config.text_config.hidden_size), "phase1")):
            if not weights:  # --dry-run: configs only
                config.save_pretrained(out / where)
                continue
            with torch.device(device):  # random init on the GPU: seconds instead of minutes on the host
                model_class(config).save_pretrained(out / where, safe_serialization=True)
        corpus = out / "corpus"
        corpus.mkdir()
        for i, lang in enumerate(LANGUAGES[1:]):  # half TSV, half Moses/OPUS aligned files
            captions = compose_captions(rows, -(-pairs // 8), rng)
            if i % 2 == 0:
                lines = [f"en\t{lang}"] + [f"{c['en']}\t{c[lang]}" for c in captions]
                (corpus / f"{lang}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
            else:
                for side in ("en", lang):
                    (corpus / f"en-{lang}.{side}").write_text("\n".join(c[side] for c in captions) + "\n",
                                                               encoding="utf-8")
        for k in range(PHOTOS):
            (corpus / f"{k}.jpg").write_bytes(synthetic_photo(rng, 256))
        with open(corpus / "pairs.tsv", "w", encoding="utf-8") as handle:
            handle.write("image\tcaption\tlang\n")
            for k, caption in enumerate(compose_captions(rows, images, rng)):
                lang = LANGUAGES[k % len(LANGUAGES)]
                handle.write(f"{k % PHOTOS}.jpg\t{caption[lang]}\t{lang}\n")
        prepare_wds(corpus / "pairs.tsv", out / "shards", image_root=corpus, shard_size=max(8, -(-images // 16)))
        (out / "COMPLETE").write_text("ok\n")

    where = root / f"{ASSETS_VERSION}-{size}-{pairs}-{images}{'' if weights else '-configs'}"
    return build_once(where, where / "COMPLETE", build)


def asset_overrides(command: str, assets: Path, work: Path) -> list[str]:
    from bench_assets import LANGUAGES

    if command == "distill":
        corpora = []
        for i, lang in enumerate(LANGUAGES[1:]):
            corpus = assets / "corpus"
            corpora.append(f"{{lang: {lang}, path: '{corpus / f'{lang}.tsv'}'}}" if i % 2 == 0 else
                           f"{{lang: {lang}, source_path: '{corpus / f'en-{lang}.en'}', "
                           f"target_path: '{corpus / f'en-{lang}.{lang}'}'}}")
        return [f"model.teacher={assets / 'teacher'}", f"model.student={assets / 'student'}",
                f"data.corpora=[{','.join(corpora)}]", "data.val_size=0"]
    return [f"model.model.teacher={assets / 'teacher'}", f"model.model.student={assets / 'phase1'}",
            f"data.shards={assets / 'shards'}", f"data.cache_dir={work / 'image-cache'}", "data.cache_dtype=bfloat16"]


# ----------------------------------------------------------------------------- one case
def flop_counter(command: str, core, assets: Path):
    """batch -> useful FLOPs, with tower shapes read from the models the Task built."""
    from transformers import AutoConfig

    if command == "distill":
        student = flops.altclip_text_shape(core.model.config)
        teacher = flops.clip_text_shape(AutoConfig.from_pretrained(assets / "teacher").text_config)
        return lambda batch: flops.phase1_batch_flops(batch, student, teacher)
    config = core.model.config
    text = flops.altclip_text_shape(config.text_config, text_projection_dim=config.projection_dim)
    vision = flops.vision_shape(config.vision_config, projection_dim=config.projection_dim)
    return lambda batch: flops.phase2_batch_flops(batch, text, config.projection_dim, vision)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, args, assets: Path, work: Path, peak_tflops: float | None) -> dict:
    from hydra.utils import instantiate

    from altclip_train.cli import compose_config

    command, case_overrides = CASES[name]
    cfg = compose_config(command, [f"experiment={EXPERIMENTS[command]}", *asset_overrides(command, assets, work),
                                   f"run_dir={work / 'run'}", f"cache_dir={work / 'cache'}", "logger=jsonl",
                                   f"data.batch_size={args.batch_size}", *args.override, *case_overrides])
    started = time.perf_counter()
    accelerator = loop.build_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    task = instantiate(cfg.model, _convert_="all")
    data = instantiate(cfg.data, _convert_="all")
    data.setup(accelerator)
    optimizer = loop.build_optimizer(task, cfg.optim)
    task, optimizer = accelerator.prepare(task, optimizer)
    core = accelerator.unwrap_model(task)
    loop.compile_model(core, cfg.trainer.compile)
    task.train()
    count = flop_counter(command, core, assets)
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    setup_s = time.perf_counter() - started

    text_key = "student_attention_mask" if command == "distill" else "attention_mask"
    # Every case times the same batches (same seed, same plan) after the same warmup, which must also absorb
    # compilation: compiled code recompiles for new length ranges (dynamic sizes after the second shape, then
    # guards such as transformers' mask code at 32 tokens), so graphs compiled while timed are counted.
    warmup = args.warmup
    from torch._dynamo.utils import counters

    graphs = counters["stats"]
    totals = dict(pairs=0, flops=0.0, real_tokens=0, padded_tokens=0, host_wait_s=0.0)
    batches, losses, steps = iter(data.train_batches(0)), [], 0
    while steps < warmup + args.steps:
        if steps == warmup:
            synchronize(device)
            clock, graphs_before = time.perf_counter(), graphs["unique_graphs"]
        waited = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            raise RuntimeError(f"{name}: the corpus ran out after {steps} batches")
        batch.pop("skipped", None)
        if steps >= warmup:
            totals["host_wait_s"] += time.perf_counter() - waited
            mask = batch[text_key]
            totals["pairs"] += len(batch["lang"]) // (2 if command == "distill" else 1)
            totals["flops"] += count(batch)
            totals["real_tokens"] += int(mask.sum())
            totals["padded_tokens"] += mask.numel()
        outputs = loop.training_step(accelerator, task, core, optimizer, loop.to_device(batch, device),
                                     cfg.optim.grad_clip)
        losses.append(outputs["loss"].detach())
        steps += 1
    synchronize(device)
    seconds = time.perf_counter() - clock
    del batches  # stops the loader's workers
    final_loss = float(losses[-1])
    if not math.isfinite(final_loss):
        raise RuntimeError(f"{name}: loss is {final_loss}")
    tflops = totals["flops"] / seconds / 1e12
    result = {
        "case": name, "overrides": case_overrides, "batch_pairs": args.batch_size, "timed_steps": args.steps,
        "step_ms": 1e3 * seconds / args.steps, "pairs_per_s": totals["pairs"] / seconds,
        "text_tokens_per_s": totals["real_tokens"] / seconds,
        "mean_text_tokens": totals["real_tokens"] / (totals["pairs"] * (2 if command == "distill" else 1)),
        "pad_efficiency": totals["real_tokens"] / totals["padded_tokens"],
        "gflops_per_pair": totals["flops"] / totals["pairs"] / 1e9, "achieved_tflops": tflops,
        "mfu": tflops / peak_tflops if peak_tflops else None,
        "host_wait_share": totals["host_wait_s"] / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "graphs_compiled_while_timed": graphs["unique_graphs"] - graphs_before,
        "final_loss": final_loss, "setup_s": setup_s, "warmup_steps": warmup,
        "fused_adamw": bool(getattr(optimizer, "optimizer", optimizer).defaults.get("fused")),
    }
    accelerator.free_memory(task, optimizer)
    del task, optimizer, core, data, accelerator
    release(device)
    return result


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measured_matmul_tflops(device: torch.device) -> float | None:
    """The best rate of a large bf16 matmul on this device: what a step could reach at most."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(5):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(30):
        a @ b
    synchronize(device)
    return 2 * 8192**3 * 30 / (time.perf_counter() - start) / 1e12


# ----------------------------------------------------------------------------- reporting
def add_ratios(results: list[dict]) -> dict[str, float]:
    """Each option's effect: its pairs/s and peak memory over the base case's of the same repeat; returns
    the median ratio per option over the repeats."""
    done = {(r["case"], r.get("repeat", 0)): r for r in results if "error" not in r and "skipped" not in r}
    ratios: dict[str, list[float]] = {}
    for (case, repeat), r in done.items():
        base = done.get((case.split("+")[0], repeat))
        if "+" in case and base:
            r["pairs_per_s_vs_base"] = r["pairs_per_s"] / base["pairs_per_s"]
            ratios.setdefault(case, []).append(r["pairs_per_s_vs_base"])
            if r["peak_memory_gib"] and base["peak_memory_gib"]:
                r["peak_memory_vs_base"] = r["peak_memory_gib"] / base["peak_memory_gib"]
        live = done.get(("phase2/live-tower", repeat))
        if case == "phase2/image-cache" and live:
            r["pairs_per_s_vs_live_tower"] = r["pairs_per_s"] / live["pairs_per_s"]
            ratios.setdefault(case + " vs live-tower", []).append(r["pairs_per_s_vs_live_tower"])
    return {case: float(np.median(values)) for case, values in ratios.items()}


def table(results: list[dict]) -> str:
    columns = [("case", "case", "{}"), ("pairs/s", "pairs_per_s", "{:.1f}"), ("tok/s", "text_tokens_per_s", "{:.0f}"),
               ("MFU", "mfu", "{:.1%}"), ("TFLOP/s", "achieved_tflops", "{:.1f}"), ("GFLOP/pair", "gflops_per_pair", "{:.1f}"),
               ("pad eff", "pad_efficiency", "{:.2f}"), ("host wait", "host_wait_share", "{:.0%}"),
               ("peak GiB", "peak_memory_gib", "{:.1f}"), ("vs base", "pairs_per_s_vs_base", "{:.2f}x")]
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|---" * len(columns) + "|"]
    for r in results:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['case']} | {r.get('error') or r['skipped']} |" + " |" * (len(columns) - 2))
            continue
        cells = [fmt.format(r[key]) if r.get(key) is not None else "" for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dry_run(args, root: Path) -> dict:
    """The real shapes on meta (parameter counts) and GFLOP/pair from the synthetic corpus's token lengths."""
    from transformers import AltCLIPTextModel, AutoConfig, AutoTokenizer, CLIPModel

    from altclip_train.models.student import student_config_from_xlmr

    assets = build_assets(root, "real", 8 * 64, 64, torch.device("meta"), weights=False)
    clip, xlmr = AutoConfig.from_pretrained(assets / "teacher"), AutoConfig.from_pretrained(assets / "student")
    student_config = student_config_from_xlmr(xlmr, clip.text_config.hidden_size)
    with torch.device("meta"):
        params = {"student": sum(p.numel() for p in AltCLIPTextModel(student_config).parameters()),
                  "teacher_clip": sum(p.numel() for p in CLIPModel(clip).parameters())}
    student_tok, teacher_tok = AutoTokenizer.from_pretrained(assets / "student"), AutoTokenizer.from_pretrained(assets / "teacher")
    lines = [line.split("\t") for f in sorted((assets / "corpus").glob("*.tsv")) if f.name != "pairs.tsv"
             for line in f.read_text(encoding="utf-8").splitlines()[1:]]
    lengths = lambda tok, texts: torch.tensor([len(ids) for ids in tok(texts, truncation=True, max_length=77)["input_ids"]])  # noqa: E731
    student_lengths = torch.cat([lengths(student_tok, [l[0] for l in lines]), lengths(student_tok, [l[1] for l in lines])])
    teacher_lengths = lengths(teacher_tok, [l[0] for l in lines])
    s1, t1 = flops.altclip_text_shape(student_config), flops.clip_text_shape(clip.text_config)
    s2 = flops.altclip_text_shape(student_config, clip.projection_dim)
    (v2, tokens), b = flops.vision_shape(clip.vision_config, clip.projection_dim), args.batch_size
    pairs = len(lines)
    p1 = s1.flops(student_lengths, trained=True) / pairs
    p2 = s2.flops(student_lengths[:pairs], trained=True) / pairs + flops.clip_loss_flops(1, b, clip.projection_dim)
    per_pair = {"phase1/teacher-cache": p1, "phase1/live-teacher": p1 + t1.flops(teacher_lengths, trained=False) / pairs,
                "phase2/image-cache": p2, "phase2/live-tower": p2 + v2.flops(torch.tensor([tokens]), trained=False)}
    peak = flops.dense_bf16_peak_tflops("H100")
    return {"dry_run": True, "params": params, "mean_student_tokens": float(student_lengths.double().mean()),
            "cases": [{"case": case, "gflops_per_pair": value / 1e9, "pairs_per_s_at_50pct_989": 0.5 * peak * 1e12 / value}
                      for case, value in per_pair.items()]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke runs)")
    parser.add_argument("--size", choices=tuple(SIZES), default="real")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--batch-size", type=int, default=256, help="pairs per optimizer step (data.batch_size)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps per case (compilation included)")
    parser.add_argument("--repeats", type=int, default=1, help="run the cases this many times, order alternating")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every case")
    parser.add_argument("--work-dir", default=None, help="assets and caches (default: $ALTCLIP_CACHE_DIR)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, for a card not in the table")
    parser.add_argument("--budget-s", type=float, default=230.0, help="skip cases that would end after this")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: parameter counts and GFLOP/pair at real sizes")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown or args.steps < 1 or args.warmup < 1:
        parser.error(f"unknown cases {unknown} (choose from {list(CASES)}), or --steps/--warmup below 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from altclip_train.assets import cache_root
    from harness import quiet_libraries, this_command, write_json

    args = parse_args(argv)
    quiet_libraries()
    started = time.perf_counter()
    root = Path(args.work_dir) if args.work_dir else cache_root()
    if args.dry_run:
        payload = {"command": this_command(argv), **dry_run(args, root)}
        for row in payload["cases"]:
            print(f"{row['case']:<22} {row['gflops_per_pair']:8.1f} GFLOP/pair  {row['pairs_per_s_at_50pct_989']:7.0f} pairs/s at 50% of 989")
        write_json(args.json_out, payload)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible (use --device cpu --size tiny for a smoke run)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or flops.dense_bf16_peak_tflops(name)
    rows = args.batch_size * (args.warmup + args.steps + 1)
    assets = build_assets(root, args.size, rows, rows, device)
    work = root / f"{ASSETS_VERSION}-runs"
    print(f"{name}: dense bf16 peak {peak} TFLOP/s; assets in {assets} ({time.perf_counter() - started:.0f} s)", flush=True)
    measured = measured_matmul_tflops(device)

    results, last_cost = [], {}
    # Repeats alternate the case order, so drift in a shared machine's load spreads over every case.
    order = [(repeat, case) for repeat in range(args.repeats)
             for case in (args.cases if repeat % 2 == 0 else args.cases[::-1])]
    for repeat, case in order:
        command = CASES[case][0]
        if case.endswith("+pad1") and not pad_key_exists():
            results.append({"case": case, "skipped": "no data.pad_to_multiple_of key in this checkout"})
            continue
        expected = last_cost.get(command, 0.0) * (3 if case.endswith("+compile") else 1)
        if time.perf_counter() - started + expected > args.budget_s:
            results.append({"case": case, "skipped": f"would pass --budget-s {args.budget_s:.0f}"})
            continue
        case_started = time.perf_counter()
        try:
            result = run_case(case, args, assets, work, peak)
        except torch.OutOfMemoryError:
            release(device)
            result = {"case": case, "error": f"out of memory at batch {args.batch_size}"}
        last_cost[command] = time.perf_counter() - case_started
        result.update(elapsed_s=last_cost[command], repeat=repeat)
        print(f"  {case}: {result.get('pairs_per_s', 0):.1f} pairs/s ({last_cost[command]:.0f} s)", flush=True)
        results.append(result)
    medians = add_ratios(results)
    print("\n" + table(results))
    for case, ratio in medians.items():
        print(f"{case}: {ratio:.2f}x pairs/s (median over {args.repeats} repeat(s))")
    payload = {"command": this_command(argv), "device": name, "torch": torch.__version__, "size": args.size,
               "peak_tflops": peak, "measured_bf16_matmul_tflops": measured, "batch_pairs": args.batch_size,
               "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
               "median_ratios": medians, "cases": results, "elapsed_s": time.perf_counter() - started}
    write_json(args.json_out, payload)
    return 1 if any("error" in r for r in results) else 0


def pad_key_exists() -> bool:
    from altclip_train.cli import compose_config

    return "pad_to_multiple_of" in compose_config("distill").data


if __name__ == "__main__":
    sys.exit(main())
