"""Tests for altclip_train/losses.py: each loss against a straightforward reference written
here, and the distributed contrastive losses against the single-process loss on the global
batch with two real gloo processes (loss value and DDP-averaged gradients)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from altclip_train.losses import (
    CLIP_MAX_LOGIT_SCALE,
    build_contrastive_loss,
    clip_contrastive_loss,
    distill_mse_loss,
    gather_with_grad,
    sigmoid_contrastive_loss,
)


def reference_clip_loss(image_embeds, text_embeds, logit_scale):
    images = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    texts = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    similarity = math.exp(logit_scale) * images @ texts.T
    labels = torch.arange(len(images))
    return (F.cross_entropy(similarity, labels) + F.cross_entropy(similarity.T, labels)) / 2


def reference_sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias):
    images = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    texts = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    total = 0.0
    for i in range(len(images)):
        for j in range(len(texts)):
            logit = math.exp(logit_scale) * float(images[i] @ texts[j]) + logit_bias
            label = 1.0 if i == j else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-label * logit)))
    return total / len(images)


def test_distill_mse_matches_torch_and_upcasts_half_inputs():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 16, generator=generator)
    teacher = torch.randn(6, 16, generator=generator)
    torch.testing.assert_close(distill_mse_loss(student, teacher), F.mse_loss(student, teacher))

    student_bf16, teacher_bf16 = student.bfloat16(), teacher.bfloat16()
    loss = distill_mse_loss(student_bf16, teacher_bf16)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.mse_loss(student_bf16.float(), teacher_bf16.float()))


def test_distill_mse_rejects_shape_mismatch_instead_of_broadcasting():
    with pytest.raises(ValueError, match=r"student shape \(4, 8\) != teacher shape \(8,\)"):
        distill_mse_loss(torch.zeros(4, 8), torch.zeros(8))


def test_clip_loss_matches_full_matrix_reference():
    generator = torch.Generator().manual_seed(1)
    image_embeds = torch.randn(7, 12, generator=generator, dtype=torch.float64)
    text_embeds = torch.randn(7, 12, generator=generator, dtype=torch.float64)
    for logit_scale in (0.0, math.log(1 / 0.07), 3.0):
        logit_scale_param = torch.tensor(logit_scale, dtype=torch.float64)
        loss = clip_contrastive_loss(image_embeds, text_embeds, logit_scale_param)
        expected = reference_clip_loss(image_embeds, text_embeds, logit_scale)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_clip_loss_clamps_logit_scale_at_ln100():
    generator = torch.Generator().manual_seed(2)
    image_embeds = torch.randn(5, 8, generator=generator)
    text_embeds = torch.randn(5, 8, generator=generator)
    too_large = torch.tensor(10.0, requires_grad=True)
    clamped_loss = clip_contrastive_loss(image_embeds, text_embeds, too_large)
    torch.testing.assert_close(
        clamped_loss, clip_contrastive_loss(image_embeds, text_embeds, math.log(100.0))
    )
    torch.testing.assert_close(
        clamped_loss, reference_clip_loss(image_embeds, text_embeds, CLIP_MAX_LOGIT_SCALE)
    )
    clamped_loss.backward()
    assert too_large.grad == 0.0  # past the clamp the temperature stops learning


def test_clip_loss_computes_in_float32_for_bf16_embeddings():
    generator = torch.Generator().manual_seed(3)
    image_embeds = torch.randn(6, 8, generator=generator).bfloat16()
    text_embeds = torch.randn(6, 8, generator=generator).bfloat16()
    logit_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.bfloat16)
    loss = clip_contrastive_loss(image_embeds, text_embeds, logit_scale)
    assert loss.dtype == torch.float32
    expected = reference_clip_loss(image_embeds.float(), text_embeds.float(), float(logit_scale))
    torch.testing.assert_close(loss, expected)


def test_sigmoid_loss_matches_pairwise_reference():
    generator = torch.Generator().manual_seed(4)
    image_embeds = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    text_embeds = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    for logit_scale, logit_bias in ((math.log(10.0), -10.0), (1.0, 0.5)):
        loss = sigmoid_contrastive_loss(
            image_embeds,
            text_embeds,
            torch.tensor(logit_scale, dtype=torch.float64),
            torch.tensor(logit_bias, dtype=torch.float64),
        )
        expected = reference_sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias)
        assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_contrastive_losses_reject_unpaired_batches():
    with pytest.raises(ValueError, match=r"image \(4, 8\) and text \(3, 8\)"):
        clip_contrastive_loss(torch.randn(4, 8), torch.randn(3, 8), 1.0)
    with pytest.raises(ValueError, match="2-d"):
        sigmoid_contrastive_loss(torch.randn(4, 8), torch.randn(4, 2, 4), 1.0, 0.0)


def test_gather_with_grad_is_identity_without_distributed():
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x


def test_build_contrastive_loss_dispatches_by_name():
    generator = torch.Generator().manual_seed(5)
    image_embeds = torch.randn(4, 8, generator=generator)
    text_embeds = torch.randn(4, 8, generator=generator)

    clip = build_contrastive_loss("clip", max_logit_scale=1.0)
    assert not clip.uses_logit_bias
    torch.testing.assert_close(
        clip(image_embeds, text_embeds, 5.0), reference_clip_loss(image_embeds, text_embeds, 1.0)
    )
    with pytest.raises(ValueError, match="takes no logit_bias"):
        clip(image_embeds, text_embeds, 1.0, -10.0)

    sigmoid = build_contrastive_loss("sigmoid")
    assert sigmoid.uses_logit_bias and sigmoid.init_logit_bias == -10.0
    torch.testing.assert_close(
        sigmoid(image_embeds, text_embeds, 2.0, -3.0),
        sigmoid_contrastive_loss(image_embeds, text_embeds, 2.0, -3.0),
    )
    with pytest.raises(ValueError, match="needs a logit_bias"):
        sigmoid(image_embeds, text_embeds, 2.0)


def test_build_contrastive_loss_unknown_name_lists_choices():
    expected = r"unknown contrastive loss 'infonce'; choose one of: clip, sigmoid"
    with pytest.raises(ValueError, match=expected):
        build_contrastive_loss("infonce")


# --- distributed: 2 gloo ranks vs one process on the global batch ------------------------

WORLD_SIZE = 2
GLOBAL_BATCH = 8
INPUT_DIM, EMBED_DIM = 6, 5
LOSS_NAMES = ("clip", "sigmoid")


def _make_problem():
    """The same tiny towers and global batch in every process: two linear projections fed
    random features, plus the temperature (and SigLIP bias) parameters. float64, so that a
    1e-6 tolerance sits far above rounding (float32 gradients of size ~10 differ by ~1e-6
    just from summation order) and far below any real scaling or slicing error."""
    generator = torch.Generator().manual_seed(1234)
    image_features = torch.randn(GLOBAL_BATCH, INPUT_DIM, generator=generator, dtype=torch.float64)
    text_features = torch.randn(GLOBAL_BATCH, INPUT_DIM, generator=generator, dtype=torch.float64)
    # Near-parallel pairs, so positives and negatives both carry visible gradient.
    text_features = image_features + 0.5 * text_features
    torch.manual_seed(99)
    modules = torch.nn.ModuleDict(
        {
            "image_proj": torch.nn.Linear(INPUT_DIM, EMBED_DIM),
            "text_proj": torch.nn.Linear(INPUT_DIM, EMBED_DIM),
        }
    )
    modules.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    modules.logit_bias = torch.nn.Parameter(torch.tensor(-2.0))
    return modules.double(), image_features, text_features


def _loss_and_grads(name, rows):
    """Loss on ``rows`` of the global batch and the gradients of every parameter."""
    modules, image_features, text_features = _make_problem()
    loss_fn = build_contrastive_loss(name)
    image_embeds = modules["image_proj"](image_features[rows])
    text_embeds = modules["text_proj"](text_features[rows])
    bias = modules.logit_bias if loss_fn.uses_logit_bias else None
    loss = loss_fn(image_embeds, text_embeds, modules.logit_scale, bias)
    loss.backward()
    grads = {
        param_name: (param.grad if param.grad is not None else torch.zeros_like(param))
        for param_name, param in modules.named_parameters()
    }
    return loss.detach(), grads


def _distributed_worker(rank, store_path, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        local_batch = GLOBAL_BATCH // WORLD_SIZE
        rows = slice(rank * local_batch, (rank + 1) * local_batch)
        results = {}
        for name in LOSS_NAMES:
            loss, grads = _loss_and_grads(name, rows)
            # What DDP does: average losses for logging and gradients for the step.
            dist.all_reduce(loss)
            for grad in grads.values():
                dist.all_reduce(grad)
            results[name] = (loss / WORLD_SIZE, {k: g / WORLD_SIZE for k, g in grads.items()})

        # gather_with_grad on its own: rank r contributes rows filled with r; each rank's loss
        # weights the gathered rows by (rank + 1), so every chunk's gradient is 1 + 2 = 3.
        x = torch.full((2, 3), float(rank), requires_grad=True)
        gathered = gather_with_grad(x)
        (gathered * (rank + 1)).sum().backward()
        results["gather"] = (gathered.detach(), x.grad)

        # Uneven local batches must fail loudly on every rank rather than hang or misalign.
        try:
            gather_with_grad(torch.zeros(rank + 1, 3))
            results["uneven_error"] = ""
        except ValueError as error:
            results["uneven_error"] = str(error)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp_losses")
    # A file store instead of a TCP port: nothing to collide with other test runs.
    mp.spawn(
        _distributed_worker,
        args=(str(out_dir / "store"), str(out_dir)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.mark.distributed
def test_gather_with_grad_two_ranks(distributed_results):
    expected_gathered = torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2)
    for rank_results in distributed_results:
        gathered, grad = rank_results["gather"]
        torch.testing.assert_close(gathered, expected_gathered)
        torch.testing.assert_close(grad, torch.full((2, 3), 3.0))
        assert "same local batch size on every rank, got [1, 2]" in rank_results["uneven_error"]


@pytest.mark.distributed
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_distributed_loss_and_ddp_gradients_match_single_process(name, distributed_results):
    single_loss, single_grads = _loss_and_grads(name, slice(None))
    assert single_grads["logit_scale"].abs() > 1e-3  # the comparison below is not vacuous
    if name == "sigmoid":
        assert single_grads["logit_bias"].abs() > 1e-3
    for rank_results in distributed_results:
        loss, grads = rank_results[name]
        torch.testing.assert_close(loss, single_loss, rtol=0, atol=1e-6)
        assert grads.keys() == single_grads.keys()
        for param_name, grad in grads.items():
            torch.testing.assert_close(
                grad, single_grads[param_name], rtol=0, atol=1e-6, msg=f"{name}: {param_name}"
            )
