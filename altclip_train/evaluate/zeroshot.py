"""Zero-shot image classification per language, with CLIP-paper prompt ensembling.

Inputs: labelled images (an image folder `root/<class_dir>/*` or WebDataset shards with `.cls` / json "label"),
`classnames/<lang>.txt` (line i names class i, in sorted-folder order) and `templates/<lang>.txt` (one prompt per
line, `{}` marks where the class name goes). A class is represented by the mean of its normalised prompt
embeddings, renormalised; an image is assigned the class with the highest cosine similarity.

`ZeroShotEvaluator` is built once (it validates every file up front) and called with an in-memory model, e.g. by
the training loop every N steps; it keeps the preprocessed images between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from altclip_train.data.images import ImagePreprocessor
from altclip_train.evaluate.metrics import flatten_task, topk_accuracy
from altclip_train.evaluate.models import embed_pixels, embed_texts, resolve_tokenizer
from altclip_train.evaluate.sources import ImageItem, PreprocessedImages, open_labelled_images, stream_pixels

TOPK = (1, 5)
BARE_TEMPLATE = "{}"


def read_class_names(classnames_dir: str | Path, lang: str, num_classes: int | None = None) -> list[str]:
    """Class names for one language; line i names class i. Checks the count against `num_classes` when given."""
    path = Path(classnames_dir) / f"{lang}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no class names for language {lang!r}: {path} not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"no class names for language {lang!r}: {path} is empty")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"{path}:{number}: empty class name")
    if num_classes is not None and len(lines) != num_classes:
        raise ValueError(f"{path} has {len(lines)} class names but the images have {num_classes} classes")
    return [line.strip() for line in lines]


def read_templates(templates_dir: str | Path | None, lang: str) -> list[str]:
    """Prompt templates for one language, each containing `{}`; with no directory, the bare class name."""
    if templates_dir is None:
        return [BARE_TEMPLATE]
    path = Path(templates_dir) / f"{lang}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no prompt templates for language {lang!r}: {path} not found")
    templates = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if "{}" not in line:
            raise ValueError(f"{path}:{number}: template has no '{{}}' placeholder: {line!r}")
        templates.append(line.strip())
    if not templates:
        raise ValueError(f"no prompt templates for language {lang!r}: {path} is empty")
    return templates


def fill_template(template: str, class_name: str) -> str:
    # str.replace, not str.format: templates may contain other braces.
    return template.replace("{}", class_name)


def ensemble_class_embeddings(prompt_embeds: torch.Tensor) -> torch.Tensor:
    """(classes, templates, dim) prompt embeddings -> (classes, dim): mean of the normalised, renormalised."""
    prompt_embeds = torch.nn.functional.normalize(prompt_embeds.float(), dim=-1)
    return torch.nn.functional.normalize(prompt_embeds.mean(dim=1), dim=-1)


def class_embeddings(
    model: nn.Module,
    tokenizer,
    class_names: dict[str, list[str]],
    templates: dict[str, list[str]],
    device: torch.device,
    batch_size: int = 256,
    max_length: int | None = None,
    amp: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-language (classes, dim) classifier weights; every distinct prompt across languages is embedded once."""
    prompts = {
        lang: [[fill_template(template, name) for template in templates[lang]] for name in names]
        for lang, names in class_names.items()
    }
    unique = list(dict.fromkeys(p for per_class in prompts.values() for row in per_class for p in row))
    embeds = embed_texts(model, tokenizer, unique, device, batch_size, max_length, amp, desc="class prompts")
    row_of = {prompt: row for row, prompt in enumerate(unique)}
    weights = {}
    for lang, per_class in prompts.items():
        index = torch.tensor([[row_of[p] for p in row] for row in per_class])
        weights[lang] = ensemble_class_embeddings(embeds[index])
    return weights


class ZeroShotEvaluator:
    """Zero-shot top-1/top-5 accuracy per language for any model with get_text_features/get_image_features.

    `image_source` is a folder path, a shard spec, or an `ImageFolder`/`LabelledShards`. Preprocessed images are
    cached across calls when `cache_images`; with `reuse_image_embeddings` (only when the image tower is frozen,
    as in phase 2) the image embeddings of the first call are reused too.
    """

    def __init__(
        self,
        image_source,
        classnames_dir: str | Path,
        templates_dir: str | Path | None,
        languages: Sequence[str] | None,
        transform: ImagePreprocessor,
        tokenizer,
        batch_size: int = 256,
        max_length: int | None = None,
        num_workers: int = 0,
        cache_images: bool = True,
        reuse_image_embeddings: bool = False,
        amp: bool = True,
    ):
        self.source = open_labelled_images(image_source)
        if languages is None:
            languages = sorted(p.stem for p in Path(classnames_dir).glob("*.txt"))
            if not languages:
                raise FileNotFoundError(f"no <lang>.txt class-name files in {classnames_dir}")
        self.languages = list(languages)
        if not self.languages:
            raise ValueError("zero-shot evaluation needs at least one language")
        self.class_names = {
            lang: read_class_names(classnames_dir, lang, self.source.num_classes) for lang in self.languages
        }
        counts = {lang: len(names) for lang, names in self.class_names.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"class-name files in {classnames_dir} disagree on the number of classes: {counts}")
        self.num_classes = next(iter(counts.values()))
        self.templates = {lang: read_templates(templates_dir, lang) for lang in self.languages}
        self.images = PreprocessedImages(self.source, transform, batch_size, num_workers, cache=cache_images)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.amp = amp
        self.reuse_image_embeddings = reuse_image_embeddings
        self._image_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.num_images: int | None = None  # known after the first pass

    def _image_embeddings(self, model: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._image_cache is not None:
            return self._image_cache
        items: list[ImageItem] = []
        embeds = embed_pixels(
            model, stream_pixels(self.images, items), device, self.amp, self.images.num_batches, desc="zero-shot images"
        )
        labels = torch.tensor([item.label for item in items], dtype=torch.long)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            item = items[int(bad.nonzero()[0])]
            raise ValueError(f"{item.key}: class label {item.label} outside the {self.num_classes} class names")
        self.num_images = len(labels)
        if self.reuse_image_embeddings:
            self._image_cache = (embeds, labels)
        return embeds, labels

    def evaluate_languages(
        self, model: nn.Module, device: torch.device, tokenizer=None, max_length: int | None = None
    ) -> dict[str, dict[str, float]]:
        """{lang: {"top1": %, "top5": %}}; `tokenizer`/`max_length` override the constructor's for this call."""
        device = torch.device(device)
        image_embeds, labels = self._image_embeddings(model, device)
        weights = class_embeddings(
            model,
            resolve_tokenizer(tokenizer, self.tokenizer),
            self.class_names,
            self.templates,
            device,
            self.batch_size,
            max_length or self.max_length,
            self.amp,
        )
        results = {}
        for lang in self.languages:
            accuracy = topk_accuracy(image_embeds @ weights[lang].T, labels, TOPK)
            results[lang] = {f"top{k}": value for k, value in accuracy.items()}
        return results

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Flat metrics for logging: `eval/zeroshot_top1/<lang>`, `eval/zeroshot_top5/<lang>`."""
        return flatten_task("zeroshot", self.evaluate_languages(model, device))

    def summary(self) -> dict:
        """What was evaluated: image and class counts, and the images skipped per reason in the last pass."""
        return {
            "source": repr(self.source),
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            "languages": self.languages,
            "skipped": dict(self.images.skipped),
        }

