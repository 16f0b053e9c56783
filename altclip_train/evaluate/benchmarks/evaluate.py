"""Score any CLIP-style model on one benchmark, per language, the way CLIP_benchmark does.

Retrieval (`zeroshot_retrieval`): per language, its images against its captions, every caption a query of its
own (two images with the same caption stay two queries, as there). Image->text counts a hit at k when any of
the image's captions is among the top k; text->image when its image is. Classification
(`zeroshot_classification`): per language, one classifier row per class (the mean of its normalised prompt
embeddings, renormalised), images of that language's classes only; top-1, top-5 and mean per-class recall
(scikit-learn's balanced accuracy). Numbers are percentages here; `results.py` writes CLIP_benchmark's fractions.

Each image is decoded and embedded once per model, whatever the number of languages that use it.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from altclip_train.data.images import ImagePreprocessor
from altclip_train.evaluate.benchmarks.base import ClassificationBenchmark, RetrievalBenchmark
from altclip_train.evaluate.metrics import RECALL_KS, mean_per_class_recall, retrieval_recalls, topk_accuracy
from altclip_train.evaluate.models import embed_pixels, embed_texts
from altclip_train.evaluate.sources import ImageItem, PreprocessedImages, stream_pixels
from altclip_train.evaluate.zeroshot import TOPK, class_embeddings


class ImageFiles:
    """Image files as a source for `PreprocessedImages`: fresh items each pass (preprocessing empties them)."""

    def __init__(self, paths: list):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        for path in self.paths:
            yield ImageItem(key=str(path), payload=path)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self.paths)} files)"


class BenchmarkEvaluator:
    """Per-language metrics of one benchmark for any model with get_text_features/get_image_features."""

    def __init__(
        self,
        benchmark: RetrievalBenchmark | ClassificationBenchmark,
        transform: ImagePreprocessor,
        batch_size: int = 256,
        num_workers: int = 0,
        cache_images: bool = False,
        amp: bool = True,
    ):
        self.benchmark = benchmark
        if isinstance(benchmark, ClassificationBenchmark):
            self.files = [path for path, _ in benchmark.images]
            self.labels = torch.tensor([label for _, label in benchmark.images], dtype=torch.long)
        else:
            self.files = list(benchmark.images)
        if not self.files:
            raise ValueError(f"benchmark {benchmark.name}: no usable images (skipped: {dict(benchmark.skipped)})")
        self.images = PreprocessedImages(ImageFiles(self.files), transform, batch_size, num_workers, cache=cache_images)
        self.batch_size = batch_size
        self.amp = amp
        self.kept: list[int] | None = None  # indices of the images that decoded, known after the first pass

    def _image_embeddings(self, model: nn.Module, device: torch.device) -> tuple[torch.Tensor, dict[int, int]]:
        """Embeddings of the images that decoded, and image index -> embedding row."""
        row_of_key = {str(path): index for index, path in enumerate(self.files)}
        seen: list[ImageItem] = []
        embeds = embed_pixels(model, stream_pixels(self.images, seen), device, self.amp, self.images.num_batches,
                              desc=f"{self.benchmark.name} images")
        self.kept = [row_of_key[item.key] for item in seen]
        return embeds, {image: row for row, image in enumerate(self.kept)}

    def evaluate_languages(self, model: nn.Module, device: torch.device, tokenizer,
                           max_length: int | None = None) -> dict[str, dict[str, float]]:
        """{lang: metrics}: retrieval `i2t_r@k`, `t2i_r@k`, `mean_recall`; classification `top1`, `top5`,
        `mean_per_class_recall`."""
        device = torch.device(device)
        image_embeds, row_of = self._image_embeddings(model, device)
        if isinstance(self.benchmark, RetrievalBenchmark):
            return self._retrieval(model, device, tokenizer, max_length, image_embeds, row_of)
        return self._classification(model, device, tokenizer, max_length, image_embeds, row_of)

    def _retrieval(self, model, device, tokenizer, max_length, image_embeds, row_of) -> dict:
        entries = {lang: [(row_of[image], captions) for image, captions in per_image if image in row_of]
                   for lang, per_image in self.benchmark.languages.items()}
        unique = list(dict.fromkeys(c for per_image in entries.values() for _, captions in per_image for c in captions))
        text_embeds = embed_texts(model, tokenizer, unique, device, self.batch_size, max_length, self.amp,
                                  desc=f"{self.benchmark.name} captions")
        text_row = {text: row for row, text in enumerate(unique)}
        results = {}
        for lang, per_image in entries.items():
            if not per_image:
                raise ValueError(f"benchmark {self.benchmark.name}: no usable image with a {lang} caption")
            rows = [text_row[c] for _, captions in per_image for c in captions]
            text_images = [[position] for position, (_, captions) in enumerate(per_image) for _ in captions]
            image_rows = torch.tensor([row for row, _ in per_image])
            results[lang] = retrieval_recalls(image_embeds[image_rows].to(device),
                                              text_embeds[torch.tensor(rows)].to(device), text_images, RECALL_KS)
        return results

    def _classification(self, model, device, tokenizer, max_length, image_embeds, row_of) -> dict:
        sets = self.benchmark.languages
        weights = class_embeddings(model, tokenizer, {lang: s.names for lang, s in sets.items()},
                                   {lang: s.templates for lang, s in sets.items()}, device, self.batch_size,
                                   max_length, self.amp)
        kept_labels = self.labels[torch.tensor(self.kept)]
        results = {}
        for lang, class_set in sets.items():
            # Global class id -> this language's class position; images of other classes are not its to score.
            position = torch.full((max(int(self.labels.max()), max(class_set.classes)) + 1,), -1, dtype=torch.long)
            position[torch.tensor(class_set.classes)] = torch.arange(len(class_set.classes))
            local = position[kept_labels]
            mine = local >= 0
            if not mine.any():
                raise ValueError(f"benchmark {self.benchmark.name}: no image of any {lang} class")
            logits = image_embeds[mine] @ weights[lang].T
            accuracy = topk_accuracy(logits, local[mine], TOPK)
            results[lang] = {f"top{k}": value for k, value in accuracy.items()}
            results[lang]["mean_per_class_recall"] = mean_per_class_recall(logits.argmax(dim=1), local[mine])
        return results

    def summary(self) -> dict:
        """What was evaluated: images, per-language entry counts, skipped inputs per reason."""
        skipped = Counter(self.benchmark.skipped)
        skipped.update(self.images.skipped)
        if isinstance(self.benchmark, RetrievalBenchmark):
            counts = {lang: sum(len(c) for _, c in per_image) for lang, per_image in self.benchmark.languages.items()}
            sizes = {"num_captions": counts}
        else:
            sizes = {"num_classes": {lang: len(s.classes) for lang, s in self.benchmark.languages.items()}}
        return {
            "benchmark": self.benchmark.name,
            "task": self.benchmark.task,
            "num_images": len(self.kept) if self.kept is not None else len(self.files),
            **sizes,
            "languages": list(self.benchmark.languages),
            "skipped": dict(skipped),
        }
