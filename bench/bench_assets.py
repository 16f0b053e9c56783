"""The benchmark's models and data: tiny towers in the real models' proportions, and corpora with
realistic caption lengths. Built once, deterministically, and shared by every recipe of a run.

Models (random init, built with `altclip_train.models.tiny`, loadable with plain `from_pretrained`):

  teacher  CLIP: text 2 x 96 (mlp 384), vision ViT 4 x 128 (mlp 512) on 112 px with 8 px patches
           (196 patches + class token = 197 tokens); projection 96
  student  XLM-R: 4 x 128 (intermediate 512), SentencePiece vocabulary trained on the corpus
  phase-1 output  `AltCLIPTextModel` = that XLM-R + pre_LN + transformation (128 -> 96), the
           starting point of phase 2 (what `altclip-train distill` writes)
Heads are 64 wide in the student and the ViT (48 in the teacher's text tower), as in the real models.

The real models are CLIP ViT-L/14 (text 12 x 768, vision 24 x 1024 on 257 tokens) and XLM-R large
(24 x 1024). The tiny ones divide every width by 8 and every depth by 6, which keeps the ratios the
benchmarks are about (FLOPs counted as in gpu_throughput.py, attention included, 24-token captions):
  phase 1  teacher text forward / student forward+backward per pair: 4.66% here, 4.68% real
           (matmul parameters per token: tiny 0.221M / 0.786M, real 85M / 302M)
  phase 2  ViT forward per image / text tower forward+backward per caption: 3.36 here, 3.70 real
           (162 / 44 GFLOPs). At width 128 attention weighs 8x more per token than at 1024, so the tiny
           ViT sees 197 tokens instead of 257; 112 px rather than 120 px (3.97) keeps the image side's
           share on the low side, which can only understate what the image cache saves.

Data, from the nine-language everyday sentences bundled with the demo (`altclip_train/demo/everyday.tsv`):
a caption joins 1-4 aligned sentences (probabilities 0.4/0.38/0.16/0.06), which gives student captions of
about 24 tokens on average with a long tail, like real image captions.

  phase1/<lang>.tsv   en<TAB><lang> parallel pairs for the 8 non-English AltCLIP-m9 languages
  phase2/shards/      WebDataset shards (`prepare_wds`), one JPEG (126 x 126, resized and cropped to 112
                      by either pipeline) and one caption in one of the nine languages per sample

    python bench/bench_assets.py [--root DIR]      # build (or reuse) and print the manifest
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

# As in every bench entry point: the benchmark venv has no altclip_train installed.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the working tree's altclip_train

ASSETS_VERSION = "bench-v4"  # v4: student tokenizer with byte fallback
LANGUAGES = ("en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it")
SENTENCES_PER_CAPTION = (1, 2, 3, 4)
SENTENCE_PROBABILITIES = (0.4, 0.38, 0.16, 0.06)
PHASE1_PAIRS_PER_LANGUAGE = 128      # x 8 languages = 1024 pairs = 16 batches of 64
PHASE2_IMAGES = 768                  # 12 batches of 64
PHASE2_SHARD_SIZE = 128
STORED_IMAGE_SIZE = 126
MAX_TOKENS = 77

TEACHER_SHAPE = dict(hidden=96, layers=2, heads=2, intermediate=384, vision_hidden=128, vision_layers=4,
                     image_size=112, patch=8, projection_dim=96, max_position=MAX_TOKENS)
STUDENT_SHAPE = dict(hidden=128, layers=4, heads=2, intermediate=512, max_length=MAX_TOKENS)
TEACHER_VOCAB = 1000  # English captions come out ~24 tokens, like the student's
STUDENT_VOCAB = 5000


def default_root() -> Path:
    base = Path(os.environ.get("ALTCLIP_CACHE_DIR", "~/.cache/altclip_train")).expanduser()
    return base / ASSETS_VERSION


def join_sentences(lang: str, sentences: list[str]) -> str:
    # Chinese and Japanese run sentences together; the other seven separate them with a space.
    return ("" if lang in ("zh", "ja") else " ").join(sentences)


def compose_captions(rows: list[dict[str, str]], count: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """`count` aligned multi-sentence captions: entry[lang] in all nine languages says the same thing."""
    sizes = rng.choice(SENTENCES_PER_CAPTION, size=count, p=SENTENCE_PROBABILITIES)
    captions = []
    for size in sizes:
        picked = [rows[i] for i in rng.choice(len(rows), size=int(size), replace=False)]
        captions.append({lang: join_sentences(lang, [row[lang] for row in picked]) for lang in LANGUAGES})
    return captions


def synthetic_photo(rng: np.random.Generator, size: int) -> bytes:
    """A JPEG with photo-like statistics (smooth colour fields plus texture), so decoding costs what it would."""
    from PIL import Image

    coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((size, size), resample=Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 12, size=(size, size, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def build(root: Path) -> None:
    from altclip_train.data.prepare_wds import prepare_wds
    from altclip_train.demo.build_data import load_everyday
    from altclip_train.models.student import build_student
    from altclip_train.models.tiny import build_tiny_clip, build_tiny_xlmr, save_model_dir
    from transformers import AutoTokenizer

    staging = root.with_name(f".{root.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rows = load_everyday()
    rng = np.random.default_rng(0)

    teacher_dir = build_tiny_clip(staging / "teacher", [row["en"] for row in rows], vocab_size=TEACHER_VOCAB,
                                  **TEACHER_SHAPE)
    student_dir = build_tiny_xlmr(staging / "student", [row[lang] for row in rows for lang in LANGUAGES],
                                  vocab_size=STUDENT_VOCAB, **STUDENT_SHAPE)
    # What `altclip-train distill` would hand to phase 2: the student as an AltCLIPTextModel.
    phase1_out = staging / "phase1_student"
    save_model_dir(build_student(str(student_dir), TEACHER_SHAPE["hidden"]), phase1_out)  # on any rank
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(phase1_out)

    parallel = staging / "phase1"
    parallel.mkdir()
    for lang in LANGUAGES[1:]:
        # Plain tab-separated lines: the sentences hold no tab or newline (load_everyday checks).
        lines = [f"en\t{lang}"] + [f"{c['en']}\t{c[lang]}" for c in compose_captions(rows, PHASE1_PAIRS_PER_LANGUAGE, rng)]
        (parallel / f"{lang}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    images = staging / "phase2" / "images"
    images.mkdir(parents=True)
    pairs = staging / "phase2" / "pairs.csv"
    with open(pairs, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "lang"])
        for i, caption in enumerate(compose_captions(rows, PHASE2_IMAGES, rng)):
            lang = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
            (images / f"{i:05d}.jpg").write_bytes(synthetic_photo(rng, STORED_IMAGE_SIZE))
            writer.writerow([f"{i:05d}.jpg", caption[lang], lang])
    prepare_wds(pairs, staging / "phase2" / "shards", image_root=images, shard_size=PHASE2_SHARD_SIZE)
    shutil.rmtree(images)

    manifest = describe(staging, teacher_dir.name, student_dir.name)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(staging, root)


def describe(root: Path, teacher: str = "teacher", student: str = "student") -> dict:
    """Sizes and caption-length statistics of the built assets (recorded in every result file)."""
    from transformers import AutoTokenizer

    student_tok = AutoTokenizer.from_pretrained(root / student)
    teacher_tok = AutoTokenizer.from_pretrained(root / teacher)
    english, translations = [], []
    for lang in LANGUAGES[1:]:
        with open(root / "phase1" / f"{lang}.tsv", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(reader)
            for en, other in reader:
                english.append(en)
                translations.append(other)
    with open(root / "phase2" / "pairs.csv", encoding="utf-8") as handle:
        phase2 = [row["caption"] for row in csv.DictReader(handle)]

    def stats(texts, tokenizer) -> dict:
        lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]])
        return {"mean": round(float(lengths.mean()), 2), "std": round(float(lengths.std()), 2),
                "p50": int(np.median(lengths)), "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max())}

    return {
        "version": ASSETS_VERSION,
        "teacher_shape": TEACHER_SHAPE, "student_shape": STUDENT_SHAPE,
        "teacher_vocab": len(teacher_tok), "student_vocab": len(student_tok),
        "phase1_pairs": len(english), "phase2_images": len(phase2),
        "tokens": {"phase1_english_student": stats(english, student_tok),
                   "phase1_translation_student": stats(translations, student_tok),
                   "phase1_english_teacher": stats(english, teacher_tok),
                   "phase2_caption_student": stats(phase2, student_tok)},
    }


def ensure_assets(root: str | Path | None = None) -> Path:
    """The assets directory, built on first use under a file lock (concurrent runs wait, then reuse it)."""
    from altclip_train.assets import build_once

    root = Path(root) if root else default_root()
    return build_once(root, root / "manifest.json", build)


def load_manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def phase1_corpora(root: Path) -> list[dict]:
    return [{"lang": lang, "path": str(root / "phase1" / f"{lang}.tsv")} for lang in LANGUAGES[1:]]


def phase2_shards(root: Path) -> list[str]:
    return sorted(str(path) for path in (root / "phase2" / "shards").glob("shard-*.tar"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help=f"assets directory (default {default_root()})")
    args = parser.parse_args(argv)
    root = ensure_assets(args.root)
    print(root)
    print(json.dumps(load_manifest(root), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
