"""FLOPs of a training step, counted from the model configs and the real (non-pad) token lengths of a batch,
and the dense bf16 peaks of common accelerators: the two numbers an MFU figure is made of.

Useful work only: padding is waste and shows up as lower MFU, not as more FLOPs. A transformer tower with
L layers, width h and MLP width f has per-token matmul parameters

    N = L * (4*h*h + 2*h*f)   [+ per-token heads, e.g. AltCLIP's `transformation`, h * project_dim]

Embedding lookups, LayerNorms, biases, softmax and activations are not matmuls and are left out (< 0.5%
at the real sizes). For sequences of real lengths s_i through that tower:

    trained (fwd + bwd)  6 * N * sum(s_i) + 12 * L * h * sum(s_i^2) + 6 * P_seq * n_seq
    frozen  (fwd only)   2 * N * sum(s_i) +  4 * L * h * sum(s_i^2) + 2 * P_seq * n_seq

The s^2 terms are Q K^T and attention x V (2*s*s*h each per layer forward, twice that backward), over
the full s x s square even for CLIP's causal text tower, as SDPA computes it. P_seq are matmuls applied
once per sequence (text_projection; visual_projection; a ViT's patch embedding, 3*p*p*h per patch).
The CLIP loss adds 10 * B * B' * d (B' is the all-gathered batch): two logit matmuls forward,
(scale * images) x texts^T and (scale * texts) x images^T (4 B B' d), and backward three operand
gradients, since the learned temperature makes the scaled images need one while frozen images' own
embeddings do not (6 B B' d). The optimizer step is not counted.

`tests/test_flops.py` checks these against hand counts and against `torch.utils.flop_counter` on
tiny towers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets. The first name
# that occurs in `torch.cuda.get_device_name()` wins, so the more specific names come first.
DENSE_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),   # SXM: "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def dense_bf16_peak_tflops(device_name: str) -> float | None:
    """The card's nominal dense bf16 peak, or None for a device not in the table (e.g. a CPU)."""
    for name, tflops in DENSE_BF16_TFLOPS:
        if name in device_name:
            return tflops
    return None


@dataclass(frozen=True)
class TowerShape:
    """The matmul shape of one transformer tower: enough to count its FLOPs (see module docstring)."""

    layers: int
    hidden: int
    ffn: int
    per_token_extra: int = 0  # matmul parameters applied to every token outside the blocks
    per_seq_extra: int = 0    # matmul parameters applied once per sequence

    @property
    def block_params(self) -> int:
        return self.layers * (4 * self.hidden * self.hidden + 2 * self.hidden * self.ffn)

    @property
    def per_token_params(self) -> int:
        return self.block_params + self.per_token_extra

    def flops(self, lengths: torch.Tensor, trained: bool) -> float:
        """FLOPs of sequences with these real lengths (a 1-d tensor), forward only or forward + backward."""
        lengths = lengths.detach().double().cpu()
        matmul, attention = (6, 12) if trained else (2, 4)
        return (matmul * self.per_token_params * float(lengths.sum())
                + attention * self.layers * self.hidden * float((lengths * lengths).sum())
                + matmul * self.per_seq_extra * lengths.numel())


def altclip_text_shape(config, text_projection_dim: int = 0) -> TowerShape:
    """`AltCLIPTextModel` (XLM-R + pre_LN + `transformation`, which runs on every position). Phase 2 adds
    `text_projection` (project_dim -> projection_dim) once per caption."""
    return TowerShape(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                      per_token_extra=config.hidden_size * config.project_dim,
                      per_seq_extra=config.project_dim * text_projection_dim)


def clip_text_shape(config) -> TowerShape:
    """CLIP's text tower up to the pooled state before `text_projection` (the phase-1 target)."""
    return TowerShape(config.num_hidden_layers, config.hidden_size, config.intermediate_size)


def vision_shape(config, projection_dim: int = 0) -> tuple[TowerShape, int]:
    """A CLIP ViT (patch embedding + blocks, plus `visual_projection` when `projection_dim`) and its
    tokens per image (patches + class token)."""
    patches = (config.image_size // config.patch_size) ** 2
    patch_embedding = config.num_channels * config.patch_size * config.patch_size * config.hidden_size
    shape = TowerShape(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                       per_seq_extra=patch_embedding * patches + config.hidden_size * projection_dim)
    return shape, patches + 1


def clip_loss_flops(local_batch: int, global_batch: int, dim: int) -> float:
    """Both logit matmuls of the CLIP InfoNCE loss, forward and backward (module docstring)."""
    return 10.0 * local_batch * global_batch * dim


def real_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask.sum(dim=1)


def block_matmul_params(model: nn.Module) -> int:
    """Weights of the nn.Linear layers inside a model's transformer blocks (`encoder.` in their name):
    what `TowerShape.block_params` assumes, to check a config against the model it builds."""
    return sum(module.weight.numel() for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and "encoder." in f"{name}.")


def phase1_batch_flops(batch: dict, student: TowerShape, teacher: TowerShape | None = None) -> float:
    """A phase-1 micro-batch (DESIGN's batch keys): the student trained on every row, plus the teacher's
    forward when the batch carries its tokens (a live teacher) rather than cached `teacher_embeds`."""
    flops = student.flops(real_lengths(batch["student_attention_mask"]), trained=True)
    if "teacher_input_ids" in batch:
        if teacher is None:
            raise ValueError("batch runs a live teacher but no teacher shape was given")
        flops += teacher.flops(real_lengths(batch["teacher_attention_mask"]), trained=False)
    return flops


def phase2_batch_flops(batch: dict, text: TowerShape, embed_dim: int,
                       vision: tuple[TowerShape, int] | None = None, global_batch: int | None = None) -> float:
    """A phase-2 micro-batch: the text tower trained, the CLIP loss, and the frozen image tower's forward
    when the batch carries `pixel_values` rather than cached `image_embeds`."""
    rows = batch["input_ids"].shape[0]
    flops = text.flops(real_lengths(batch["attention_mask"]), trained=True)
    flops += clip_loss_flops(rows, global_batch or rows, embed_dim)
    if "pixel_values" in batch:
        if vision is None:
            raise ValueError("batch runs the image tower but no vision shape was given")
        shape, tokens = vision
        flops += shape.flops(torch.full((batch["pixel_values"].shape[0],), tokens), trained=False)
    return flops
