"""Image-text retrieval per language: image->text and text->image recall@1/5/10 and their mean.

Pairs come from a CSV/JSONL table (image path, caption, lang) or captioned WebDataset shards; an image with
several captions is one image (grouped by path or shard sample). Per language the candidates are
that language's distinct captions and the images with at least one caption in it; a query is a hit at k when any
of its correct items is in the top k (CLIP paper). Numbers are percentages.

`RetrievalEvaluator` is built once and called with an in-memory model, e.g. by the training loop every N steps;
it keeps the preprocessed images between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from altclip_train.data.images import ImagePreprocessor
from altclip_train.evaluate.metrics import RECALL_KS, flatten_task, retrieval_recalls
from altclip_train.evaluate.models import embed_pixels, embed_texts, resolve_tokenizer
from altclip_train.evaluate.sources import ImageItem, PairTable, PreprocessedImages, open_pairs, stream_pixels


def language_split(
    captions_per_image: Sequence[Sequence[tuple[str, str]]], lang: str
) -> tuple[list[int], list[str], list[list[int]]]:
    """For one language: the images with a caption in it, its distinct captions, and for each caption the
    positions (within those images) of the images it describes."""
    images: list[int] = []
    text_images: dict[str, list[int]] = {}
    for image, captions in enumerate(captions_per_image):
        texts = [text for caption_lang, text in captions if caption_lang == lang]
        if not texts:
            continue
        position = len(images)
        images.append(image)
        for text in dict.fromkeys(texts):
            text_images.setdefault(text, []).append(position)
    return images, list(text_images), list(text_images.values())


class RetrievalEvaluator:
    """Per-language image<->text recall for any model with get_text_features/get_image_features.

    `pairs` is a .csv/.tsv/.jsonl path, a shard spec, or a `PairTable`/`CaptionedShards`; captions without a
    language get `default_lang`. `languages=None` evaluates every language found in the data. Caching options as
    in `ZeroShotEvaluator`.
    """

    def __init__(
        self,
        pairs,
        languages: Sequence[str] | None,
        transform: ImagePreprocessor,
        tokenizer,
        batch_size: int = 256,
        max_length: int | None = None,
        num_workers: int = 0,
        cache_images: bool = True,
        reuse_image_embeddings: bool = False,
        amp: bool = True,
        image_root: str | Path | None = None,
        default_lang: str = "en",
        ks: Sequence[int] = RECALL_KS,
    ):
        self.source = open_pairs(pairs, image_root=image_root, default_lang=default_lang)
        self.languages = list(languages) if languages is not None else None
        if self.languages is not None and isinstance(self.source, PairTable):
            # A table is read up front, so a language without captions fails here rather than at the first call.
            found = {lang for captions in self.source.images.values() for lang, _ in captions}
            missing = [lang for lang in self.languages if lang not in found]
            if missing:
                raise ValueError(f"{self.source.path} has no usable captions in language(s) {missing}")
        self.images = PreprocessedImages(self.source, transform, batch_size, num_workers, cache=cache_images)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.amp = amp
        self.ks = tuple(ks)
        self.reuse_image_embeddings = reuse_image_embeddings
        self._image_cache: tuple[torch.Tensor, list[list[tuple[str, str]]]] | None = None
        self.num_images: int | None = None  # known after the first pass
        self.num_captions: dict[str, int] = {}

    def _image_embeddings(self, model: nn.Module, device: torch.device) -> tuple[torch.Tensor, list]:
        if self._image_cache is not None:
            return self._image_cache
        items: list[ImageItem] = []
        embeds = embed_pixels(
            model, stream_pixels(self.images, items), device, self.amp, self.images.num_batches, desc="retrieval images"
        )
        # Samples naming an image already seen add captions to it rather than a second copy of the image.
        first_row: dict[str, int] = {}
        keep: list[int] = []
        captions: list[list[tuple[str, str]]] = []
        for row, item in enumerate(items):
            if item.key in first_row:
                captions[first_row[item.key]].extend(item.captions)
                continue
            first_row[item.key] = len(keep)
            keep.append(row)
            captions.append(list(item.captions))
        embeds = embeds[torch.tensor(keep)]
        self.num_images = len(keep)
        if self.languages is None:
            self.languages = sorted({lang for per_image in captions for lang, _ in per_image})
        self.num_captions = {lang: len(language_split(captions, lang)[1]) for lang in self.languages}
        missing = [lang for lang, count in self.num_captions.items() if count == 0]
        if missing:
            raise ValueError(f"{self.source!r} has no captions in language(s) {missing}")
        if self.reuse_image_embeddings:
            self._image_cache = (embeds, captions)
        return embeds, captions

    def evaluate_languages(
        self, model: nn.Module, device: torch.device, tokenizer=None, max_length: int | None = None
    ) -> dict[str, dict[str, float]]:
        """{lang: {"i2t_r@1": %, ..., "t2i_r@10": %, "mean_recall": %}}; overrides apply to this call."""
        device = torch.device(device)
        image_embeds, captions = self._image_embeddings(model, device)
        splits = {lang: language_split(captions, lang) for lang in self.languages}
        unique = list(dict.fromkeys(text for _, texts, _ in splits.values() for text in texts))
        text_embeds = embed_texts(
            model,
            resolve_tokenizer(tokenizer, self.tokenizer),
            unique,
            device,
            self.batch_size,
            max_length or self.max_length,
            self.amp,
            desc="captions",
        )
        row_of = {text: row for row, text in enumerate(unique)}
        results = {}
        for lang, (images, texts, text_images) in splits.items():
            results[lang] = retrieval_recalls(
                image_embeds[torch.tensor(images)].to(device),
                text_embeds[torch.tensor([row_of[t] for t in texts])].to(device),
                text_images,
                self.ks,
            )
        return results

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Flat metrics for logging: `eval/retrieval/<metric>/<lang>`, e.g. `eval/retrieval/t2i_r@1/fr`."""
        return flatten_task("retrieval", self.evaluate_languages(model, device))

    def summary(self) -> dict:
        """What was evaluated: images, distinct captions per language, and the pairs/images skipped per reason."""
        skipped = dict(getattr(self.source, "skipped", {}))
        for reason, count in self.images.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
        return {
            "source": repr(self.source),
            "num_images": self.num_images,
            "num_captions": dict(self.num_captions),
            "languages": self.languages,
            "skipped": skipped,
        }

