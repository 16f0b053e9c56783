"""Losses for both AltCLIP phases: MSE distillation (phase 1) and the contrastive losses of
phase 2 (CLIP InfoNCE, SigLIP sigmoid), the latter correct under torch.distributed.

Distributed contrastive losses use the "local loss" scheme: every rank gathers the embeddings
of all ranks with autograd kept (``gather_with_grad``) and scores only its own rows against the
global batch, so memory per rank is O(local x global) rather than O(global^2). Each rank's loss
is a mean over its local rows, so the mean of the rank losses equals the single-process loss on
the global batch, and the gradient DDP produces by averaging equals that loss's gradient.
Local batches must have the same size on every rank (Accelerate's default ``even_batches=True``
or ``drop_last=True`` guarantees it); ``gather_with_grad`` raises if they differ.

All similarity/softmax/sigmoid arithmetic runs in float32 (float64 stays float64), whatever the
dtype the towers emitted under autocast: bf16 logits over a 1024-wide batch lose the small
differences the loss is made of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

CLIP_MAX_LOGIT_SCALE = math.log(100.0)
# SigLIP's initialisation (Zhai et al. 2023, sec. 3): t' = log 10, b = -10, so that the
# overwhelmingly negative pairs start near their optimum instead of dominating early steps.
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    """float32 for half types, the tensor's own dtype when it is already at least as wide."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _as_scalar(value: Tensor | float, name: str, like: Tensor) -> Tensor:
    """A 0-d tensor in ``like``'s dtype/device that keeps the autograd link to a parameter."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        return value.reshape(()).to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(value), device=like.device, dtype=like.dtype)


def _check_pair(image_embeds: Tensor, text_embeds: Tensor) -> None:
    if image_embeds.ndim != 2 or text_embeds.ndim != 2:
        raise ValueError(
            "contrastive loss expects 2-d [batch, dim] embeddings, got image "
            f"{tuple(image_embeds.shape)} and text {tuple(text_embeds.shape)}"
        )
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            "image and text embeddings must pair up row by row, got image "
            f"{tuple(image_embeds.shape)} and text {tuple(text_embeds.shape)}"
        )


def _rank_and_world_size(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def distill_mse_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Phase-1 loss: mean squared error over all elements, computed in float32.

    Shapes must match exactly; broadcasting a [B, D] student against a [D] teacher would
    silently train towards the wrong target.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"distill_mse_loss: student shape {tuple(student.shape)} != teacher shape "
            f"{tuple(teacher.shape)}"
        )
    dtype = torch.promote_types(_compute_dtype(student), _compute_dtype(teacher))
    return F.mse_loss(student.to(dtype), teacher.to(dtype))


def translation_contrastive_loss(translations: Tensor, targets: Tensor, sources: Tensor | None = None,
                                 temperature: float = 0.05) -> Tensor:
    """In-batch InfoNCE from each translation's student vector to its English source's teacher target.

    | input          | shape   | what                                                         |
    |----------------|---------|--------------------------------------------------------------|
    | `translations` | [n, D]  | student vectors of the translated rows                       |
    | `targets`      | [n, D]  | teacher targets of their English sources (row i is i's)      |
    | `sources`      | [n]     | optional source ids: another row with the same English source is not a negative |

    Cosine similarities over `temperature`, cross-entropy towards the own source, in float32. Negatives are
    the rows of this micro-batch (no all-gather: the MSE term it sits beside is per row too).
    """
    if translations.shape != targets.shape:
        raise ValueError(f"translation_contrastive_loss: translations {tuple(translations.shape)} != targets "
                         f"{tuple(targets.shape)}")
    logits = F.normalize(translations.float(), dim=-1) @ F.normalize(targets.float(), dim=-1).t() / temperature
    if sources is not None:
        same = sources[:, None] == sources[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the summed gradient of its rows.

    Why the sum: rank ``s``'s loss uses rank ``r``'s rows through its gathered copy, so
    dLoss_total/d(rows of r) = sum over s of the gradient arriving at rank s's copy of those
    rows. Each rank only sees its own loss's gradient, so backward all-reduces (SUM) the
    gradient of the whole gathered tensor and keeps its own slice. With rank losses that are
    means over local rows, DDP's division by world size then turns that sum into the gradient
    of mean_s(loss_s), which is the single-process loss over the global batch.

    An all-reduce moves twice the bytes of a reduce-scatter, but the tensor is a batch of
    embeddings (a few MB at batch 1024) next to DDP's all-reduce of the whole model, and
    all-reduce works on every backend and torch version (gloo long lacked reduce-scatter).

    Forward first exchanges the local row counts (one tiny all-gather and a host sync) so that
    uneven batches raise on every rank instead of hanging NCCL or misaligning the labels.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        tensor = tensor.contiguous()
        rank, world_size = _rank_and_world_size(group)
        local_rows = torch.tensor([tensor.shape[0]], device=tensor.device)
        all_rows = [torch.empty_like(local_rows) for _ in range(world_size)]
        dist.all_gather(all_rows, local_rows, group=group)
        rows = [int(n) for n in torch.cat(all_rows).tolist()]
        if len(set(rows)) != 1:
            # Uneven chunks would misalign the label offsets and hang NCCL; say so instead.
            raise ValueError(
                f"gather_with_grad needs the same local batch size on every rank, got {rows}; "
                "use even_batches=True (Accelerate default) or drop_last=True"
            )
        chunks = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(chunks, tensor, group=group)
        ctx.group = group
        ctx.rank = rank
        ctx.local_rows = tensor.shape[0]
        return torch.cat(chunks, dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.local_rows
        return grad[start : start + ctx.local_rows], None


def gather_with_grad(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the autograd graph.

    Identity when torch.distributed is not initialised or the world has one rank. Every rank
    must call it with the same shape, and every rank's loss must use the result (backward is
    a collective too).
    """
    _, world_size = _rank_and_world_size(group)
    if world_size == 1:
        return x
    return _GatherWithGrad.apply(x, group)


def clip_contrastive_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    *,
    max_logit_scale: float = CLIP_MAX_LOGIT_SCALE,
) -> Tensor:
    """Symmetric CLIP InfoNCE loss; ``logit_scale`` is the log temperature (the parameter).

    The scale is clamped at ``max_logit_scale`` (ln 100, as in CLIP) before ``exp``; above the
    clamp it receives no gradient. Under torch.distributed each rank scores its local images
    against all gathered texts and its local texts against all gathered images; its positives
    sit at columns ``rank * local_batch + i``.
    """
    _check_pair(image_embeds, text_embeds)
    dtype = torch.promote_types(_compute_dtype(image_embeds), _compute_dtype(text_embeds))
    images = F.normalize(image_embeds.to(dtype), dim=-1)
    texts = F.normalize(text_embeds.to(dtype), dim=-1)
    scale = _as_scalar(logit_scale, "logit_scale", images).clamp(max=max_logit_scale).exp()

    rank, _ = _rank_and_world_size()
    all_images = gather_with_grad(images)
    all_texts = gather_with_grad(texts)
    logits_per_image = scale * images @ all_texts.T
    logits_per_text = scale * texts @ all_images.T
    local_batch = images.shape[0]
    labels = torch.arange(local_batch, device=images.device) + rank * local_batch
    image_to_text = F.cross_entropy(logits_per_image, labels)
    text_to_image = F.cross_entropy(logits_per_text, labels)
    return (image_to_text + text_to_image) / 2


def sigmoid_contrastive_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float,
) -> Tensor:
    """SigLIP pairwise sigmoid loss: -sum over pairs of log sigmoid(+-(exp(t) x.y + b)) / batch.

    Every image/text pair is an independent binary problem (positive on the diagonal). Under
    torch.distributed the text chunks of all ranks are gathered with grad and each rank scores
    its local images against every text, so each of the global N^2 pairs is counted exactly
    once; dividing each rank's sum by its local batch makes the mean of the rank losses equal
    the paper's normalisation (sum over all pairs / global batch).
    """
    _check_pair(image_embeds, text_embeds)
    dtype = torch.promote_types(_compute_dtype(image_embeds), _compute_dtype(text_embeds))
    images = F.normalize(image_embeds.to(dtype), dim=-1)
    texts = F.normalize(text_embeds.to(dtype), dim=-1)
    scale = _as_scalar(logit_scale, "logit_scale", images).exp()
    bias = _as_scalar(logit_bias, "logit_bias", images)

    rank, _ = _rank_and_world_size()
    all_texts = gather_with_grad(texts)
    logits = scale * images @ all_texts.T + bias
    local_batch = images.shape[0]
    signs = torch.full_like(logits, -1.0)
    rows = torch.arange(local_batch, device=images.device)
    signs[rows, rows + rank * local_batch] = 1.0
    return -F.logsigmoid(signs * logits).sum() / local_batch


@dataclass(frozen=True)
class ContrastiveLoss:
    """A contrastive loss chosen by name, called uniformly as
    ``loss(image_embeds, text_embeds, logit_scale, logit_bias=None)``.

    ``init_logit_bias`` is the starting value for the bias parameter the task must create when
    the loss uses one (None: the loss takes no bias); ``init_logit_scale`` the (log) scale the task
    starts from (None: the model's own, e.g. the teacher CLIP's).
    """

    name: str
    fn: Callable[..., Tensor]
    init_logit_bias: float | None
    options: dict = field(default_factory=dict)
    init_logit_scale: float | None = None

    @property
    def uses_logit_bias(self) -> bool:
        return self.init_logit_bias is not None

    def __call__(
        self,
        image_embeds: Tensor,
        text_embeds: Tensor,
        logit_scale: Tensor | float,
        logit_bias: Tensor | float | None = None,
    ) -> Tensor:
        if self.uses_logit_bias:
            if logit_bias is None:
                raise ValueError(f"contrastive loss '{self.name}' needs a logit_bias")
            return self.fn(image_embeds, text_embeds, logit_scale, logit_bias, **self.options)
        if logit_bias is not None:
            raise ValueError(f"contrastive loss '{self.name}' takes no logit_bias")
        return self.fn(image_embeds, text_embeds, logit_scale, **self.options)


# name -> (loss, initial logit bias, initial log logit scale)
_CONTRASTIVE_LOSSES: dict[str, tuple[Callable[..., Tensor], float | None, float | None]] = {
    "clip": (clip_contrastive_loss, None, None),
    "sigmoid": (sigmoid_contrastive_loss, SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE),
}


def build_contrastive_loss(name: str, **options) -> ContrastiveLoss:
    """Look up a contrastive loss by config name ("clip" | "sigmoid"); ``options`` are bound
    keyword arguments (e.g. ``max_logit_scale`` for clip)."""
    if name not in _CONTRASTIVE_LOSSES:
        choices = ", ".join(sorted(_CONTRASTIVE_LOSSES))
        raise ValueError(f"unknown contrastive loss '{name}'; choose one of: {choices}")
    fn, init_logit_bias, init_logit_scale = _CONTRASTIVE_LOSSES[name]
    return ContrastiveLoss(name=name, fn=fn, init_logit_bias=init_logit_bias, options=dict(options),
                           init_logit_scale=init_logit_scale)
