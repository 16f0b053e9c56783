"""The FLOP accounting behind the throughput benchmark's MFU: hand counts, and torch's own FLOP counter
run on tiny towers of each kind (eager attention, so every matmul is an aten op the counter sees)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AltCLIPTextConfig, AltCLIPTextModel, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig
from transformers import CLIPVisionModelWithProjection

from altclip_train.flops import (
    TowerShape,
    altclip_text_shape,
    block_matmul_params,
    clip_loss_flops,
    clip_text_shape,
    dense_bf16_peak_tflops,
    phase1_batch_flops,
    phase2_batch_flops,
    real_lengths,
    vision_shape,
)
from altclip_train.losses import clip_contrastive_loss


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_hand_count():
    shape = TowerShape(layers=2, hidden=4, ffn=8, per_token_extra=4 * 3, per_seq_extra=3 * 5)
    assert shape.block_params == 2 * (4 * 16 + 2 * 4 * 8) == 256
    lengths = torch.tensor([3, 5])
    # 6 * (256 + 12) * 8 tokens + 12 * 2 layers * 4 wide * (9 + 25) + 6 * 15 * 2 sequences
    assert shape.flops(lengths, trained=True) == 6 * 268 * 8 + 12 * 2 * 4 * 34 + 6 * 15 * 2 == 16308
    assert shape.flops(lengths, trained=False) == 2 * 268 * 8 + 4 * 2 * 4 * 34 + 2 * 15 * 2 == 5436
    assert clip_loss_flops(4, 8, 16) == 10 * 4 * 8 * 16


def test_real_lengths_ignore_padding():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert real_lengths(mask).tolist() == [3, 4, 1]


@pytest.fixture()
def student():
    config = AltCLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=40, project_dim=24,
                               type_vocab_size=1)
    return AltCLIPTextModel._from_config(config, attn_implementation="eager").train()


def test_student_matches_torch_flop_counter_forward_and_backward(student):
    ids = torch.randint(4, 100, (3, 10))
    shape = altclip_text_shape(student.config)
    assert block_matmul_params(student) == shape.block_params

    def step():
        student(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output.square().sum().backward()

    assert counted(step) == shape.flops(torch.full((3,), 10), trained=True)
    with torch.no_grad():
        forward = counted(lambda: student(input_ids=ids, attention_mask=torch.ones_like(ids)))
    assert forward == shape.flops(torch.full((3,), 10), trained=False)


def test_padding_is_counted_as_waste(student):
    ids = torch.randint(4, 100, (2, 12))
    mask = torch.tensor([[1] * 12, [1] * 5 + [0] * 7])
    shape = altclip_text_shape(student.config)
    with torch.no_grad():
        computed = counted(lambda: student(input_ids=ids, attention_mask=mask))
    assert computed == shape.flops(torch.tensor([12, 12]), trained=False)  # the hardware runs the pads
    assert shape.flops(real_lengths(mask), trained=False) < computed        # useful work excludes them


def test_clip_text_tower_matches_torch_flop_counter():
    config = CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=20, projection_dim=16)
    teacher = CLIPTextModel._from_config(config, attn_implementation="eager").eval()
    shape = clip_text_shape(config)
    assert block_matmul_params(teacher) == shape.block_params
    ids = torch.randint(0, 50, (4, 9))
    with torch.no_grad():
        assert counted(lambda: teacher(input_ids=ids)) == shape.flops(torch.full((4,), 9), trained=False)


def test_vision_tower_with_projection_matches_torch_flop_counter():
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    vision = CLIPVisionModelWithProjection._from_config(config, attn_implementation="eager").eval()
    shape, tokens = vision_shape(config, projection_dim=16)
    assert tokens == 17
    assert block_matmul_params(vision) == shape.block_params
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert counted(lambda: vision(pixel_values=pixels)) == shape.flops(torch.full((3,), tokens), trained=False)


def test_clip_loss_matches_torch_flop_counter():
    images = torch.randn(6, 16)  # cached image embeddings: no gradient
    texts = torch.randn(6, 16, requires_grad=True)
    scale = torch.tensor(2.0, requires_grad=True)
    total = counted(lambda: clip_contrastive_loss(images, texts, scale).backward())
    assert total == clip_loss_flops(6, 6, 16)


def test_peaks_prefer_the_specific_name():
    assert dense_bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert dense_bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert dense_bf16_peak_tflops("NVIDIA H200") == 989.0
    assert dense_bf16_peak_tflops("cpu") is None


def test_batch_flops_follow_the_batch_keys():
    student, teacher = TowerShape(2, 4, 8), TowerShape(1, 4, 8)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    cached = {"student_attention_mask": mask, "teacher_embeds": torch.zeros(2, 4)}
    live = {"student_attention_mask": mask, "teacher_input_ids": torch.zeros(1, 3), "teacher_attention_mask": mask[:1]}
    assert phase1_batch_flops(cached, student) == student.flops(torch.tensor([2, 3]), trained=True)
    assert phase1_batch_flops(live, student, teacher) == (student.flops(torch.tensor([2, 3]), trained=True)
                                                          + teacher.flops(torch.tensor([2]), trained=False))
    text, vision = TowerShape(2, 4, 8, per_seq_extra=12), (TowerShape(1, 4, 8, per_seq_extra=20), 5)
    cached2 = {"input_ids": torch.zeros(2, 3), "attention_mask": mask, "image_embeds": torch.zeros(2, 3)}
    live2 = {**cached2, "pixel_values": torch.zeros(2, 3, 8, 8)}
    base = text.flops(torch.tensor([2, 3]), trained=True) + clip_loss_flops(2, 2, 3)
    assert phase2_batch_flops(cached2, text, 3) == base
    assert phase2_batch_flops(live2, text, 3, vision) == base + vision[0].flops(torch.tensor([5, 5]), trained=False)
    with pytest.raises(ValueError):
        phase1_batch_flops(live, student)
