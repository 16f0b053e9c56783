"""Ranking metrics shared by zero-shot classification and retrieval, in percent.

One rule decides every hit: a query's rank is the number of *wrong* candidates scoring at least as high as its
best correct candidate, and it is a hit at k when that rank is below k. This is the CLIP-paper retrieval
definition (any correct caption in the top k counts) and plain top-k accuracy when there is one correct class.
Ties count against the query, so a model whose embeddings collapse to a constant scores zero, not 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RECALL_KS = (1, 5, 10)


def metric_name(task: str, metric: str, lang: str) -> str:
    """The flat, namespaced name used in logs: eval/zeroshot_top1/ja, eval/retrieval/t2i_r@1/fr."""
    if task == "zeroshot":
        return f"eval/zeroshot_{metric}/{lang}"
    return f"eval/{task}/{metric}/{lang}"


def flatten_task(task: str, per_language: dict[str, dict[str, float]]) -> dict[str, float]:
    """{lang: {metric: value}} of one task as {flat metric name: value}."""
    return {
        metric_name(task, metric, lang): value
        for lang, metrics in per_language.items()
        for metric, value in metrics.items()
    }


def positive_ranks(scores: torch.Tensor, positives: Sequence[Sequence[int]]) -> torch.Tensor:
    """Rank of each query's best-scoring correct candidate among the wrong ones: (Q,) int64.

    `scores` is (Q, C); `positives[q]` lists the correct candidate columns for query q (at least one).
    """
    if scores.shape[0] != len(positives):
        raise ValueError(f"{scores.shape[0]} score rows but {len(positives)} positive lists")
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    rows = [q for q, columns in enumerate(positives) for _ in columns]
    columns = [c for columns in positives for c in columns]
    if len(set(rows)) != len(positives):
        empty = next(q for q, cols in enumerate(positives) if not cols)
        raise ValueError(f"query {empty} has no correct candidate")
    mask[torch.tensor(rows, dtype=torch.long), torch.tensor(columns, dtype=torch.long)] = True
    best = scores.masked_fill(~mask, float("-inf")).amax(dim=1, keepdim=True)
    return ((scores >= best) & ~mask).sum(dim=1)


def hit_rates(ranks: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Percentage of queries whose rank is below k, for each k."""
    return {k: 100.0 * (ranks < k).double().mean().item() for k in ks}


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for (N, C) logits and (N,) labels, keyed by the requested k.

    A k larger than the number of classes is clamped to it (so top-5 over 3 classes is 100).
    """
    num_classes = logits.shape[1]
    ranks = positive_ranks(logits, [[int(label)] for label in labels])
    return {k: hit_rates(ranks, [min(k, num_classes)])[min(k, num_classes)] for k in ks}


def mean_per_class_recall(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Recall of each class present in `labels`, averaged over those classes, in percent.

    This is scikit-learn's `balanced_accuracy_score`, which CLIP_benchmark reports as
    `mean_per_class_recall`: every class weighs the same however many images it has.
    """
    if labels.numel() == 0:
        raise ValueError("no labels to score")
    classes, inverse = torch.unique(labels, return_inverse=True)
    correct = (predictions == labels).double()
    hits = torch.zeros(len(classes), dtype=torch.double).index_add_(0, inverse, correct)
    counts = torch.bincount(inverse, minlength=len(classes)).double()
    return 100.0 * (hits / counts).mean().item()


def recall_at_k(
    query_embeds: torch.Tensor,
    candidate_embeds: torch.Tensor,
    positives: Sequence[Sequence[int]],
    ks: Sequence[int] = RECALL_KS,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Recall@k in percent of queries against candidates by dot product, computed in query chunks."""
    ranks = []
    for start in range(0, len(positives), chunk_size):
        scores = query_embeds[start : start + chunk_size] @ candidate_embeds.T
        ranks.append(positive_ranks(scores, positives[start : start + chunk_size]))
    return hit_rates(torch.cat(ranks), ks)


def retrieval_recalls(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_images: Sequence[Sequence[int]],
    ks: Sequence[int] = RECALL_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image->text and text->image recall@k and their mean.

    `text_images[t]` lists the images text t describes; every image must be described by at least one text.
    Returns `i2t_r@{k}`, `t2i_r@{k}` for each k and `mean_recall` (the mean of all of them).
    """
    image_texts: list[list[int]] = [[] for _ in range(image_embeds.shape[0])]
    for text, images in enumerate(text_images):
        for image in images:
            image_texts[image].append(text)
    i2t = recall_at_k(image_embeds, text_embeds, image_texts, ks, chunk_size)
    t2i = recall_at_k(text_embeds, image_embeds, text_images, ks, chunk_size)
    metrics = {f"i2t_r@{k}": v for k, v in i2t.items()} | {f"t2i_r@{k}": v for k, v in t2i.items()}
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics
