"""A tiny benchmark fixture on disk in the layouts both CLIP_benchmark and `altclip-train eval` read, and the
open_clip-format models the parity test scores on it.

`build_benchmarks(root)` writes, from 12 of scikit-image's sample photographs:

    root/flickr30k-200/   NLLB-CLIP's release: filenames.txt, <FLORES code>.txt (eng_Latn, deu_Latn, jpn_Jpan),
                          eng_captions.txt (a copy of eng_Latn.txt, as released), images/
    root/flickr30k_200-<code>.json   CLIP_benchmark's annotation file for each language
    root/xtd10/           Adobe's release: test_image_names.txt, test_1kcaptions_<en|de|jp>.txt, images/
    root/xtd10-<code>.json           CLIP_benchmark's annotation file for each language
    root/imagenet1k/      val/<wnid>/*.JPEG (6 classes x 2 photographs), meta.bin for torchvision's ImageNet,
                          <en|jp>_classnames.json and <en|jp>_zeroshot_classification_templates.json (CLIP_benchmark's
                          own format, given to it as --custom_classname_file / --custom_template_file)

The annotation files are written by CLIP_benchmark's own `create_annotation_file`, its download step pointed at the
release files above (there is no network here), so CLIP_benchmark's reading of the release is its own.

`open_clip_export(...)`: `altclip-train export <phase-2 dir> --format open_clip --output DIR` on the output of
`trained_phase2(...)`: phase 1 and phase 2 run on the tiny CLIP teacher and XLM-R student of `tests/conftest.py`,
its heads re-centred on the fixture by `spread_out(...)`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

# (scikit-image sample, English, German, Japanese) for the retrieval sets.
PHOTOS = [
    ("astronaut", "an astronaut in a white space suit", "ein Astronaut im weißen Raumanzug", "白い宇宙服の宇宙飛行士"),
    ("camera", "a man with a camera on a tripod", "ein Mann mit einer Kamera auf einem Stativ", "三脚にカメラを載せた男性"),
    ("coffee", "a cup of coffee on a saucer", "eine Tasse Kaffee auf einer Untertasse", "ソーサーの上のコーヒーカップ"),
    ("chelsea", "a tabby cat looking sideways", "eine getigerte Katze, die zur Seite schaut", "横を見るトラ猫"),
    ("rocket", "a rocket on the launch pad", "eine Rakete auf der Startrampe", "発射台のロケット"),
    ("clock", "a clock on a wall", "eine Uhr an einer Wand", "壁の時計"),
    ("coins", "old coins on a table", "alte Münzen auf einem Tisch", "テーブルの上の古い硬貨"),
    ("brick", "a brick wall", "eine Ziegelmauer", "レンガの壁"),
    ("grass", "a patch of grass", "ein Stück Rasen", "芝生"),
    ("hubble_deep_field", "galaxies in deep space", "Galaxien im tiefen Weltraum", "深宇宙の銀河"),
    ("moon", "the surface of the moon", "die Oberfläche des Mondes", "月の表面"),
    ("horse", "the silhouette of a horse", "die Silhouette eines Pferdes", "馬のシルエット"),
]
FLORES = {"en": "eng_Latn", "de": "deu_Latn", "ja": "jpn_Jpan"}
XTD10 = {"en": "en", "de": "de", "ja": "jp"}  # file codes: CLIP_benchmark's (and Adobe's) Japanese is jp
# wnid -> (sample, English name, Japanese name); class i is the i-th wnid in sorted order.
CLASSES = {
    "n01000001": ("astronaut", "astronaut", "宇宙飛行士"),
    "n01000002": ("coffee", "coffee cup", "コーヒーカップ"),
    "n01000003": ("chelsea", "cat", "猫"),
    "n01000004": ("rocket", "rocket", "ロケット"),
    "n01000005": ("coins", "coin", "硬貨"),
    "n01000006": ("moon", "moon", "月"),
}
TEMPLATES = {"en": ["a photo of a {c}.", "a blurry photo of the {c}."], "jp": ["{c}の写真。"]}


def photo(name: str, size: int = 64) -> Image.Image:
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    image.thumbnail((size, size))
    return image


def write_lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


class ReleaseFiles:
    """Stands in for `requests` in a CLIP_benchmark dataset module: `get(<url>/<file>)` reads `release/<file>`."""

    def __init__(self, release: Path):
        self.release = release

    def get(self, url: str, timeout=None):
        from types import SimpleNamespace

        return SimpleNamespace(text=(self.release / url.rsplit("/", 1)[-1]).read_text(encoding="utf-8"))


def clip_benchmark_annotations(module, root: Path, languages, release: Path) -> None:
    """CLIP_benchmark's own annotation files (`create_annotation_file`), its downloads read from `release`."""
    original = module.requests
    module.requests = ReleaseFiles(release)
    try:
        for language in languages:
            module.create_annotation_file(str(root), language)
    finally:
        module.requests = original


def build_benchmarks(root: Path) -> Path:
    from clip_benchmark.datasets import flickr30k_200, xtd10

    root.mkdir(parents=True, exist_ok=True)
    flickr = root / "flickr30k-200"
    names = [f"{1000 + i}.jpg" for i in range(len(PHOTOS))]
    for name, (sample, *_) in zip(names, PHOTOS):
        (flickr / "images").mkdir(parents=True, exist_ok=True)
        photo(sample).save(flickr / "images" / name)
    write_lines(flickr / "filenames.txt", names)
    for column, lang in enumerate(("en", "de", "ja"), start=1):
        write_lines(flickr / f"{FLORES[lang]}.txt", [row[column] for row in PHOTOS])
    write_lines(flickr / "eng_captions.txt", [row[1] for row in PHOTOS])
    clip_benchmark_annotations(flickr30k_200, root, FLORES.values(), flickr)

    xtd = root / "xtd10"
    coco = [f"COCO_val2014_{i:012d}.jpg" for i in range(len(PHOTOS))]
    for name, (sample, *_) in zip(coco, PHOTOS):
        (xtd / "images").mkdir(parents=True, exist_ok=True)
        photo(sample).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(xtd / "images" / name)
    write_lines(xtd / "test_image_names.txt", coco)
    for column, lang in enumerate(("en", "de", "ja"), start=1):
        write_lines(xtd / f"test_1kcaptions_{XTD10[lang]}.txt", [row[column] for row in PHOTOS])
    clip_benchmark_annotations(xtd10, root, XTD10.values(), xtd)

    imagenet = root / "imagenet1k"
    for wnid, (sample, _, _) in CLASSES.items():
        folder = imagenet / "val" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        photo(sample).save(folder / f"ILSVRC2012_val_{wnid}_a.JPEG", format="JPEG")
        photo(sample, 48).rotate(90).save(folder / f"ILSVRC2012_val_{wnid}_b.JPEG", format="JPEG")
    # torchvision's ImageNet reads its class names from meta.bin (CLIP_benchmark replaces them with its own).
    torch.save(({wnid: (names[1],) for wnid, names in CLASSES.items()}, []), imagenet / "meta.bin")
    for code, column in (("en", 1), ("jp", 2)):
        (imagenet / f"{code}_classnames.json").write_text(
            json.dumps({"imagenet1k": [row[column] for row in CLASSES.values()]}, ensure_ascii=False), "utf-8")
        (imagenet / f"{code}_zeroshot_classification_templates.json").write_text(
            json.dumps({"imagenet1k": TEMPLATES[code]}, ensure_ascii=False), "utf-8")
    return root


def run(command: list[str], log: Path) -> None:
    """Run a command; on failure, the error names the log that holds its output."""
    import os

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=600)
    if done.returncode:
        tail = log.read_text(encoding="utf-8").strip().splitlines()[-15:]
        raise AssertionError(f"{' '.join(map(str, command[:4]))} ... failed ({done.returncode}); log {log}:\n"
                             + "\n".join(tail))


def trained_phase2(teacher: Path, student: Path, corpora_dir: Path, work: Path) -> Path:
    """Both phases run on the tiny models, as a user runs them (debug settings, a few steps each): phase 1 distils
    the teacher into the student on `corpora_dir/<zh|fr|ja>.tsv`, phase 2 tunes the assembled model on 16
    image-caption pairs. Returns phase 2's `final` dir (its run dir holds the `config.yaml` export reads)."""
    import csv

    from altclip_train.cli import compose_config
    from altclip_train.data.prepare_wds import prepare_wds
    from altclip_train.models.tiny import SAMPLE_CAPTIONS
    from altclip_train.train import train

    corpora = ",".join(f"{{lang: {lang}, path: '{corpora_dir / (lang + '.tsv')}'}}" for lang in ("zh", "fr", "ja"))
    phase1 = train(compose_config("distill", [f"model.teacher={teacher}", f"model.student={student}",
                                              f"data.corpora=[{corpora}]", f"run_dir={work / 'phase1'}",
                                              "debug=default", "logger=jsonl"]))
    pairs = work / "pairs"
    pairs.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(16):
        pixels = np.random.default_rng(i).integers(0, 256, size=(32 + 5 * (i % 4), 40 + 3 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(pairs / f"{i}.png")
        for lang in ("en", "ja"):
            rows.append({"image": f"{i}.png", "caption": SAMPLE_CAPTIONS[lang][i % 8] + f" {i}", "lang": lang})
    with open(pairs / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "lang"])
        writer.writeheader()
        writer.writerows(rows)
    prepare_wds(pairs / "pairs.csv", pairs / "shards", shard_size=8)
    overrides = [f"model.model.teacher={teacher}", f"model.model.student={phase1}",
                 f"data.shards={pairs / 'shards'}", f"run_dir={work / 'phase2'}", "data.batch_size=8",
                 "data.num_workers=0", "data.languages=[en,ja]", f"data.cache_dir={work / 'cache'}",
                 "optim.lr=1e-3", "optim.warmup_steps=1", "trainer.max_steps=3", "trainer.log_every=1",
                 "trainer.eval_every=0", "trainer.save_every=3", "trainer.eval_at_start=false", "logger=jsonl"]
    return Path(train(compose_config("contrastive", overrides)))


def spread_out(final: Path, data_root: Path) -> Path:
    """Re-centre a tiny phase-2 model's two heads on the fixture, in place.

    A tiny random XLM-R's `<s>` state hardly depends on the text (and a tiny ViT's on the image), so every caption
    would rank the images in one order and parity would hold even for misaligned captions. Shifting the text
    `transformation` bias and the vision `post_layernorm` bias by the fixture's mean (exactly what a bias can do,
    and what the export must carry over) gives each caption its own ranking."""
    from transformers import AltCLIPModel, AutoTokenizer

    from altclip_train.data.images import ImagePreprocessor

    model = AltCLIPModel.from_pretrained(final).eval()
    preprocess = ImagePreprocessor.from_pretrained(str(final))
    images = sorted((data_root / "flickr30k-200" / "images").iterdir())
    pixels = torch.stack([preprocess(Image.open(path).convert("RGB")) for path in images])
    texts = [caption for row in PHOTOS for caption in row[1:]]
    tokens = AutoTokenizer.from_pretrained(final)(texts, padding=True, return_tensors="pt")
    seen = {}
    hooks = [model.text_model.pre_LN.register_forward_hook(lambda m, i, out: seen.update(text=out[:, 0])),
             model.vision_model.post_layernorm.register_forward_hook(lambda m, i, out: seen.update(image=out))]
    with torch.no_grad():
        model.get_text_features(**tokens)
        model.get_image_features(pixel_values=pixels)
        transformation = model.text_model.transformation
        transformation.bias.copy_(-(seen["text"].mean(0) @ transformation.weight.T))
        model.vision_model.post_layernorm.bias.sub_(seen["image"].mean(0))
    for hook in hooks:
        hook.remove()
    model.save_pretrained(final)
    return final


def open_clip_export(phase2: Path, out: Path, log: Path) -> Path:
    """Our exporter, as a user runs it: `altclip-train export <phase-2 dir> --format open_clip --output DIR`."""
    run([sys.executable, "-m", "altclip_train", "export", str(phase2), "--format", "open_clip", "--output", str(out)],
        log)
    return out


def random_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 50 - 3 * i, 3), dtype=np.uint8)) for i in range(count)]
