"""Training-step throughput and MFU of both AltCLIP phases on one device, at the real model sizes.

A benchmark, not a test. It builds the real architectures at random init from configs written
below (nothing is downloaded) and times short training loops:

  teacher  openai/clip-vit-large-patch14 shapes: text 12 x 768 (12 heads, mlp 3072, vocab 49408,
           77 positions), vision ViT-L/14 24 x 1024 (16 heads, mlp 4096, 224 px), projection 768
  student  XLM-R large as transformers.AltCLIPTextModel: 24 x 1024 (16 heads, 4096 intermediate,
           vocab 250002, 514 positions, 1 token type), project_dim 768
  phase 2  transformers.AltCLIPModel = CLIP vision config + student text config, projection 768

Cases (every one is a full optimizer step: zero_grad, autocast forward, backward, grad clip, AdamW):

  phase1/teacher-cache  student fwd+bwd on English + translation captions, MSE to cached teacher vectors
  phase1/live-teacher   the same plus a no-grad teacher text forward on the English captions
  phase2/image-cache    text tower fwd+bwd + text_projection + CLIP loss against cached image embeddings
  phase2/live-vit       the same plus a no-grad ViT-L/14 forward + visual_projection on pixel tensors

Captions have random per-caption lengths (normal around --mean-tokens, clipped to [4, 77], special
tokens included). As in the framework's data modules, rows are sorted by length inside windows of
--bucket-span batches before batches are cut (phase 1 by the longer side of a pair), and each batch is
padded to its own longest caption, as the real collate does. Data
loading is not timed: batches are made on the host and copied to the device before the clock starts.

FLOP accounting (useful work only; padding is waste and shows up as lower MFU):

  A transformer tower with L layers, width h, mlp width f has per-token matmul parameters
      N = L * (4*h*h + 2*h*f)  [+ per-token heads, e.g. AltCLIP's `transformation` h*project_dim]
  Embedding tables, LayerNorms and biases are left out: a lookup is no matmul, and the rest is < 0.1%.
  For a batch of sequences with real (non-pad) lengths s_i:
      trained (fwd+bwd)   6 * N * sum(s_i) + 12 * L * h * sum(s_i^2) + 6 * P_seq * n_seq
      frozen  (fwd only)  2 * N * sum(s_i) +  4 * L * h * sum(s_i^2) + 2 * P_seq * n_seq
  where the s^2 terms are QK^T and attention*V (2*s*s*h each per layer forward; backward twice
  that), counted over the full s x s square even for the causal CLIP text tower, and P_seq are
  matmuls applied once per sequence (text_projection, visual_projection; the ViT patch embedding
  3*p*p*h applied to its (224/14)^2 = 256 patches is folded into the vision P_seq). The ViT sees
  257 tokens per image. The CLIP loss adds 4 * B * B * d (logits forward, and their gradient
  with respect to the text side only). The AdamW step is not counted.

  MFU = counted FLOPs / timed seconds / peak, reported against two peaks: the bf16 (or fp32)
  matmul rate measured on this device at start-up (a large torch.matmul loop), and the nominal
  989 TFLOP/s dense bf16 of an H100 SXM. "pairs/s @50%" is what 50% of 989 TFLOP/s would give.

Run:
  python bench/gpu_throughput.py                          # real sizes, cuda, bf16, batch 256
  python bench/gpu_throughput.py --json-out bench/results/gpu_throughput.json
  python bench/gpu_throughput.py --dry-run                # build on meta, print params/FLOPs, exit
  python bench/gpu_throughput.py --tiny --device cpu      # shrunken configs, fp32, < 1 minute
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AltCLIPConfig,
    AltCLIPModel,
    AltCLIPTextConfig,
    AltCLIPTextModel,
    AltCLIPVisionConfig,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)

H100_DENSE_BF16_TFLOPS = 989.0
XLMR_LARGE_PARAMS = 559_890_432  # XLMRobertaModel("xlm-roberta-large"), pooler included
MAX_CAPTION_TOKENS = 77  # CLIP's context; AltCLIP's processor truncates to the same length
MIN_CAPTION_TOKENS = 4
CASES = ("phase1/teacher-cache", "phase1/live-teacher", "phase2/image-cache", "phase2/live-vit")


# ----------------------------------------------------------------------------- configs


def clip_text_config(tiny: bool) -> CLIPTextConfig:
    if tiny:
        return CLIPTextConfig(
            vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=MAX_CAPTION_TOKENS, projection_dim=48,
            hidden_act="quick_gelu", bos_token_id=998, eos_token_id=999, pad_token_id=999,
        )
    # openai/clip-vit-large-patch14; the tokenizer pads with <|endoftext|>, so pad == eos.
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=MAX_CAPTION_TOKENS, projection_dim=768,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407,
    )


def clip_vision_config(tiny: bool) -> CLIPVisionConfig:
    if tiny:
        return CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, projection_dim=48, hidden_act="quick_gelu",
        )
    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )


def student_config(tiny: bool, teacher_text: CLIPTextConfig) -> AltCLIPTextConfig:
    # project_dim is the teacher's pre-projection width: the distillation target lives there.
    if tiny:
        return AltCLIPTextConfig(
            vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=MAX_CAPTION_TOKENS + 3, type_vocab_size=1,
            project_dim=teacher_text.hidden_size,
        )
    return AltCLIPTextConfig(
        vocab_size=250002, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
        num_attention_heads=16, max_position_embeddings=514, type_vocab_size=1,
        project_dim=teacher_text.hidden_size, hidden_act="gelu", layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )


# The architecture fields AltCLIPVisionConfig shares with CLIPVisionConfig: copying these makes the
# phase-2 vision tower the teacher's, so its CLIP weights load into it unchanged.
VISION_ARCH_KEYS = (
    "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
    "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
)


def altclip_config(student: AltCLIPTextConfig, vision: CLIPVisionConfig, projection_dim: int) -> AltCLIPConfig:
    vision_fields = {key: getattr(vision, key) for key in VISION_ARCH_KEYS}
    return AltCLIPConfig(
        text_config=student.to_dict(),
        vision_config=AltCLIPVisionConfig(**vision_fields).to_dict(),
        projection_dim=projection_dim,
    )


def build(model_cls, config, device: torch.device | str) -> nn.Module:
    # Built directly on the target device: initialising 560M parameters on the host first is slow.
    with torch.device(device):
        return model_cls._from_config(config, attn_implementation="sdpa")


# ----------------------------------------------------------------------------- FLOP accounting


@dataclasses.dataclass(frozen=True)
class TowerShape:
    """The matmul shape of one transformer tower, enough to count its FLOPs (see module docstring)."""

    layers: int
    hidden: int
    ffn: int
    per_token_extra: int = 0  # matmul params applied to every token outside the blocks
    per_seq_extra: int = 0  # matmul params applied once per sequence

    @property
    def block_params(self) -> int:
        return self.layers * (4 * self.hidden * self.hidden + 2 * self.hidden * self.ffn)

    @property
    def per_token_params(self) -> int:
        return self.block_params + self.per_token_extra

    def flops(self, lengths: torch.Tensor, trained: bool) -> float:
        lengths = lengths.double()
        mult, attn = (6, 12) if trained else (2, 4)
        return (
            mult * self.per_token_params * float(lengths.sum())
            + attn * self.layers * self.hidden * float((lengths * lengths).sum())
            + mult * self.per_seq_extra * lengths.numel()
        )


def student_shape(cfg: AltCLIPTextConfig, text_projection_dim: int = 0) -> TowerShape:
    return TowerShape(
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
        per_token_extra=cfg.hidden_size * cfg.project_dim,  # `transformation` runs on every position
        per_seq_extra=cfg.project_dim * text_projection_dim,
    )


def teacher_text_shape(cfg: CLIPTextConfig) -> TowerShape:
    # The phase-1 target is the pooled state before text_projection, so no projection is counted.
    return TowerShape(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size)


def vision_shape(cfg, projection_dim: int) -> tuple[TowerShape, int]:
    patches = (cfg.image_size // cfg.patch_size) ** 2
    patch_embed = cfg.num_channels * cfg.patch_size * cfg.patch_size * cfg.hidden_size
    shape = TowerShape(
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
        per_seq_extra=patch_embed * patches + cfg.hidden_size * projection_dim,
    )
    return shape, patches + 1


def encoder_linear_weights(model: nn.Module) -> int:
    """Linear weights inside the transformer blocks: must equal TowerShape.block_params."""
    return sum(
        m.weight.numel() for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and "encoder." in f"{name}."
    )


def check_shape(model: nn.Module, shape: TowerShape, what: str) -> None:
    counted = encoder_linear_weights(model)
    if counted != shape.block_params:
        raise RuntimeError(
            f"{what}: FLOP formula assumes {shape.block_params:,} block matmul params, model has {counted:,}"
        )


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- synthetic batches


def sample_lengths(n: int, args, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.normal(float(args.mean_tokens), float(args.std_tokens), (n,), generator=gen)
    return lengths.round().clamp(MIN_CAPTION_TOKENS, MAX_CAPTION_TOKENS).long()


class LengthBuckets:
    """Caption lengths served batch by batch the way `altclip_train.data.batching.BatchPlan` cuts them:
    sample `span` batches' worth of rows, sort them by length (longest first; a row of several captions by
    its longest), cut batches, shuffle the batch order. `span` <= 1 samples every batch independently."""

    def __init__(self, batch_size: int, columns: int, span: int, args):
        self.batch_size, self.columns, self.span, self.args = batch_size, columns, span, args
        self.ready: list[list[torch.Tensor]] = []

    def draw(self, gen: torch.Generator) -> list[torch.Tensor]:
        if self.span <= 1:
            return [sample_lengths(self.batch_size, self.args, gen) for _ in range(self.columns)]
        if not self.ready:
            rows = self.batch_size * self.span
            columns = [sample_lengths(rows, self.args, gen) for _ in range(self.columns)]
            order = torch.argsort(torch.stack(columns).amax(dim=0), descending=True, stable=True)
            columns = [column[order] for column in columns]
            batches = [[column[i:i + self.batch_size] for column in columns] for i in range(0, rows, self.batch_size)]
            self.ready = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return self.ready.pop()


def token_ids(lengths: torch.Tensor, vocab_lo: int, vocab_hi: int, bos: int, eos: int, pad: int,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids shaped like tokenizer output: bos, body, eos, then pad up to the batch's longest."""
    width = int(lengths.max())
    ids = torch.randint(vocab_lo, vocab_hi, (lengths.numel(), width), generator=gen)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    ids[:, 0] = bos
    ids[torch.arange(lengths.numel()), lengths - 1] = eos
    ids[~mask] = pad
    return ids, mask.long()


def student_ids(lengths, cfg: AltCLIPTextConfig, gen):
    # XLM-R: <s>=0, <pad>=1, </s>=2, specials below 4.
    return token_ids(lengths, 4, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, gen)


def teacher_ids(lengths, cfg: CLIPTextConfig, gen):
    ids, _ = token_ids(lengths, 0, cfg.bos_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, gen)
    return ids


@dataclasses.dataclass
class Batch:
    tensors: dict[str, torch.Tensor]
    pairs: int
    real_tokens: int  # non-pad tokens through the trained text tower
    padded_tokens: int
    flops: float


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Configs:
    teacher_text: CLIPTextConfig
    vision: CLIPVisionConfig
    student: AltCLIPTextConfig
    projection_dim: int


def make_optimizer(params, device: torch.device) -> torch.optim.Optimizer:
    # Phase-1 paper values; they do not change the cost, fused=True does.
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, eps=1e-8, fused=device.type == "cuda")


def optimizer_step(loss: torch.Tensor, params: list[nn.Parameter], optimizer, clip: float) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def setup_phase1(cfgs: Configs, args, device, live_teacher: bool):
    """(step, make_batch) for the distillation step, with or without a live teacher."""
    student = build(AltCLIPTextModel, cfgs.student, device).train()
    s_shape = student_shape(cfgs.student)
    check_shape(student, s_shape, "student")
    teacher = t_shape = None
    if live_teacher:
        teacher = build(CLIPTextModel, cfgs.teacher_text, device).eval().requires_grad_(False)
        t_shape = teacher_text_shape(cfgs.teacher_text)
        check_shape(teacher, t_shape, "teacher text")
    if args.compile:
        student.compile()
        if teacher is not None:
            teacher.compile()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, device)
    buckets = LengthBuckets(args.batch_size, columns=2, span=args.bucket_span, args=args)

    def step(t: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast_context(args, device):
            if teacher is not None:
                with torch.no_grad():
                    # No attention mask: the tower is causal and pooled at the first eos, so the
                    # padding after it cannot reach the target, and SDPA keeps its causal fast path.
                    target = teacher(input_ids=t["teacher_input_ids"]).pooler_output.float()
            else:
                target = t["teacher_embeds"]
            pooled = student(input_ids=t["student_input_ids"], attention_mask=t["student_attention_mask"]).pooler_output
            # Rows are [English; translation], both pulled to the English teacher vector.
            loss = F.mse_loss(pooled.float(), target.repeat(2, 1))
        optimizer_step(loss, params, optimizer, clip=1.0)
        return loss.detach()

    def make_batch(gen: torch.Generator) -> Batch:
        pairs = args.batch_size
        english, translation = buckets.draw(gen)
        lengths = torch.cat([english, translation])
        ids, mask = student_ids(lengths, cfgs.student, gen)
        tensors = {"student_input_ids": ids, "student_attention_mask": mask}
        flops = s_shape.flops(lengths, trained=True)
        if live_teacher:
            tensors["teacher_input_ids"] = teacher_ids(english, cfgs.teacher_text, gen)
            flops += t_shape.flops(english, trained=False)
        else:
            tensors["teacher_embeds"] = torch.randn(pairs, cfgs.teacher_text.hidden_size, generator=gen)
        return Batch(tensors, pairs, int(lengths.sum()), ids.numel(), flops)

    return step, make_batch


def setup_phase2(cfgs: Configs, args, device, live_vision: bool):
    """(step, make_batch) for the contrastive step, with or without the live frozen ViT."""
    model = build(AltCLIPModel, altclip_config(cfgs.student, cfgs.vision, cfgs.projection_dim), device)
    model.train()
    # LiT: the image side is frozen and stays in eval mode.
    model.vision_model.eval().requires_grad_(False)
    model.visual_projection.requires_grad_(False)
    t_shape = student_shape(cfgs.student, text_projection_dim=cfgs.projection_dim)
    v_shape, vision_tokens = vision_shape(model.config.vision_config, cfgs.projection_dim)
    check_shape(model.text_model, t_shape, "phase-2 text tower")
    check_shape(model.vision_model, v_shape, "phase-2 vision tower")
    if args.compile:
        model.text_model.compile()
        if live_vision:
            model.vision_model.compile()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, device)
    vcfg = model.config.vision_config
    # One pixel tensor reused every step: its values do not change the cost, and a fresh 154 MB
    # host-to-device copy per step would not be part of the model's work anyway.
    pixels = None
    if live_vision:
        pixels = torch.randn(args.batch_size, vcfg.num_channels, vcfg.image_size, vcfg.image_size, device=device)
    buckets = LengthBuckets(args.batch_size, columns=1, span=args.bucket_span, args=args)

    def step(t: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast_context(args, device):
            if pixels is not None:
                with torch.no_grad():
                    image_embeds = model.get_image_features(pixel_values=pixels).pooler_output.float()
                image_embeds = F.normalize(image_embeds, dim=-1)
            else:
                image_embeds = t["image_embeds"]
            text = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
            text_embeds = F.normalize(text.pooler_output.float(), dim=-1)
            logits = model.logit_scale.exp() * text_embeds @ image_embeds.t()
            labels = torch.arange(logits.shape[0], device=logits.device)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        optimizer_step(loss, params, optimizer, clip=5.0)
        return loss.detach()

    def make_batch(gen: torch.Generator) -> Batch:
        pairs = args.batch_size
        (lengths,) = buckets.draw(gen)
        ids, mask = student_ids(lengths, cfgs.student, gen)
        tensors = {"input_ids": ids, "attention_mask": mask}
        flops = t_shape.flops(lengths, trained=True) + 4 * pairs * pairs * cfgs.projection_dim
        if live_vision:
            flops += v_shape.flops(torch.full((pairs,), vision_tokens), trained=False)
        else:
            tensors["image_embeds"] = F.normalize(torch.randn(pairs, cfgs.projection_dim, generator=gen), dim=-1)
        return Batch(tensors, pairs, int(lengths.sum()), ids.numel(), flops)

    return step, make_batch


SETUPS: dict[str, Callable] = {
    "phase1/teacher-cache": lambda c, a, d: setup_phase1(c, a, d, live_teacher=False),
    "phase1/live-teacher": lambda c, a, d: setup_phase1(c, a, d, live_teacher=True),
    "phase2/image-cache": lambda c, a, d: setup_phase2(c, a, d, live_vision=False),
    "phase2/live-vit": lambda c, a, d: setup_phase2(c, a, d, live_vision=True),
}


# ----------------------------------------------------------------------------- timing


def autocast_context(args, device: torch.device):
    if args.dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_peak_matmul_tflops(device: torch.device, dtype: str) -> float:
    """Best sustained square-matmul rate on this device, the ceiling a training step could reach."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    size, warmup, iters = (8192, 10, 50) if device.type == "cuda" else (512, 3, 20)
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    out = torch.empty(size, size, device=device, dtype=torch_dtype)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    best = 0.0
    for _ in range(3):  # best of three: clocks settle and other tenants come and go
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        synchronize(device)
        best = max(best, 2 * size**3 * iters / (time.perf_counter() - start) / 1e12)
    del a, b, out
    release_memory(device)
    return best


def run_case(name: str, cfgs: Configs, args, device: torch.device, peak_tflops: float) -> dict:
    release_memory(device)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    step, make_batch = SETUPS[name](cfgs, args, device)
    gen = torch.Generator().manual_seed(args.seed)
    batches = [make_batch(gen) for _ in range(args.warmup + args.steps)]
    on_device = [{k: v.to(device, non_blocking=True) for k, v in b.tensors.items()} for b in batches]
    setup_s = time.perf_counter() - started

    for tensors in on_device[: args.warmup]:
        step(tensors)
    synchronize(device)
    start = time.perf_counter()
    losses = [step(tensors) for tensors in on_device[args.warmup :]]
    synchronize(device)
    seconds = time.perf_counter() - start

    final_loss = float(losses[-1])
    if not math.isfinite(final_loss):
        raise RuntimeError(f"{name}: loss is {final_loss} after {args.warmup + args.steps} steps")
    timed = batches[args.warmup :]
    pairs = sum(b.pairs for b in timed)
    flops = sum(b.flops for b in timed)
    tflops = flops / seconds / 1e12
    return {
        "case": name,
        "batch_pairs": args.batch_size,
        "timed_steps": args.steps,
        "step_ms": 1e3 * seconds / args.steps,
        "pairs_per_s": pairs / seconds,
        "text_tokens_per_s": sum(b.real_tokens for b in timed) / seconds,
        "pad_efficiency": sum(b.real_tokens for b in timed) / sum(b.padded_tokens for b in timed),
        "gflops_per_pair": flops / pairs / 1e9,
        "achieved_tflops": tflops,
        "mfu_vs_measured_peak": tflops / peak_tflops,
        "mfu_vs_h100_989": tflops / H100_DENSE_BF16_TFLOPS,
        "pairs_per_s_at_50pct_989": 0.5 * H100_DENSE_BF16_TFLOPS * 1e12 / (flops / pairs),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "final_loss": final_loss,
        "setup_s": setup_s,
    }


def run_case_or_oom(name: str, cfgs: Configs, args, device, peak_tflops: float) -> dict:
    # An OOM in one case should not cost the numbers of the others; the case's tensors are freed
    # when run_case's frame goes away with the exception.
    try:
        return run_case(name, cfgs, args, device, peak_tflops)
    except torch.OutOfMemoryError:
        error = f"out of memory at --batch-size {args.batch_size}"
    release_memory(device)
    return {"case": name, "batch_pairs": args.batch_size, "error": error}


# ----------------------------------------------------------------------------- reporting


def format_table(results: list[dict]) -> str:
    columns = [
        ("case", "case", "{}"),
        ("pairs/s", "pairs_per_s", "{:.1f}"),
        ("text tok/s", "text_tokens_per_s", "{:.0f}"),
        ("pad eff", "pad_efficiency", "{:.2f}"),
        ("step ms", "step_ms", "{:.1f}"),
        ("GFLOP/pair", "gflops_per_pair", "{:.4g}"),
        ("TFLOP/s", "achieved_tflops", "{:.4g}"),
        ("MFU meas", "mfu_vs_measured_peak", "{:.1%}"),
        ("MFU 989", "mfu_vs_h100_989", "{:.2%}"),
        ("pairs/s@50%989", "pairs_per_s_at_50pct_989", "{:.0f}"),
        ("peak GiB", "peak_memory_gib", "{:.2f}"),
    ]
    rows = [[title for title, _, _ in columns]]
    for r in results:
        if "error" in r:
            rows.append([r["case"], r["error"]] + [""] * (len(columns) - 2))
            continue
        rows.append([fmt.format(r[key]) if r.get(key) is not None else "n/a" for _, key, fmt in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------- entry points


def make_configs(tiny: bool) -> Configs:
    teacher_text = clip_text_config(tiny)
    return Configs(teacher_text, clip_vision_config(tiny), student_config(tiny, teacher_text),
                   projection_dim=teacher_text.projection_dim)


def report_params(cfgs: Configs, device: torch.device | str, tiny: bool) -> dict:
    """Builds every tower (on meta in --dry-run), prints parameter counts, checks the XLM-R size."""
    student = build(AltCLIPTextModel, cfgs.student, device)
    check_shape(student, student_shape(cfgs.student), "student")
    # AltCLIPTextModel drops XLM-R's pooler (a dense h x h + bias) and pools <s> after pre_LN +
    # transformation instead, so the published XLM-R large size is roberta + that pooler.
    roberta = n_params(student.roberta)
    pooler = cfgs.student.hidden_size * cfgs.student.hidden_size + cfgs.student.hidden_size
    counts = {
        "student_total": n_params(student),
        "student_roberta": roberta,
        "student_roberta_plus_pooler": roberta + pooler,
        "student_block_matmul": student_shape(cfgs.student).block_params,
        "teacher_text": n_params(build(CLIPTextModel, cfgs.teacher_text, device)),
        "teacher_vision": n_params(build(CLIPVisionModel, cfgs.vision, device)),
        "altclip_total": n_params(
            build(AltCLIPModel, altclip_config(cfgs.student, cfgs.vision, cfgs.projection_dim), device)
        ),
    }
    for key, value in counts.items():
        print(f"  {key:<28} {value:>15,}")
    if not tiny and roberta + pooler != XLMR_LARGE_PARAMS:
        raise RuntimeError(
            f"student roberta + pooler = {roberta + pooler:,}, XLM-R large has {XLMR_LARGE_PARAMS:,}: config is wrong"
        )
    if not tiny:
        print(f"  student roberta + pooler == XLM-R large ({XLMR_LARGE_PARAMS:,}): ok")
    return counts


def expected_flops(cfgs: Configs, args) -> list[dict]:
    """FLOPs per pair of every case from the same length sampler, without building anything."""
    gen = torch.Generator().manual_seed(args.seed)
    s1 = student_shape(cfgs.student)
    t1 = teacher_text_shape(cfgs.teacher_text)
    s2 = student_shape(cfgs.student, text_projection_dim=cfgs.projection_dim)
    v2, vision_tokens = vision_shape(cfgs.vision, cfgs.projection_dim)
    b = args.batch_size
    totals = dict.fromkeys(CASES, 0.0)
    batches = 20
    for _ in range(batches):
        english, translation = sample_lengths(b, args, gen), sample_lengths(b, args, gen)
        p1 = s1.flops(torch.cat([english, translation]), trained=True)
        totals["phase1/teacher-cache"] += p1
        totals["phase1/live-teacher"] += p1 + t1.flops(english, trained=False)
        p2 = s2.flops(sample_lengths(b, args, gen), trained=True) + 4 * b * b * cfgs.projection_dim
        totals["phase2/image-cache"] += p2
        totals["phase2/live-vit"] += p2 + v2.flops(torch.full((b,), vision_tokens), trained=False)
    rows = []
    for case in CASES:
        per_pair = totals[case] / (batches * b)
        rows.append({"case": case, "gflops_per_pair": per_pair / 1e9,
                     "pairs_per_s_at_50pct_989": 0.5 * H100_DENSE_BF16_TFLOPS * 1e12 / per_pair})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device, e.g. cuda, cuda:1, cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                        help="bf16 = fp32 weights + bf16 autocast (default on cuda); fp32 (default on cpu)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="image-text or parallel-text pairs per step (default 256, --tiny 8)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 20, --tiny 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per case (default 10, --tiny 2)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--mean-tokens", type=float, default=24.0, help="mean caption length, specials included")
    parser.add_argument("--std-tokens", type=float, default=8.0, help="caption length spread (clipped to [4, 77])")
    parser.add_argument("--bucket-span", type=int, default=64,
                        help="batches sorted by length together, as the framework's data modules do (<= 1: no bucketing)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the towers (warmup absorbs compilation)")
    parser.add_argument("--tiny", action="store_true", help="2-layer 64-wide configs, 32 px images: a CPU smoke run")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the models on meta, print params and FLOPs/pair, exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 8 if args.tiny else 256
    if args.steps is None:
        args.steps = 3 if args.tiny else 20
    if args.warmup is None:
        args.warmup = 2 if args.tiny else 10
    if args.dtype is None:
        args.dtype = "fp32" if args.device.startswith("cpu") else "bf16"
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; choose from {list(CASES)}")
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch-size and --steps must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else ["bench/gpu_throughput.py", *argv])])
    started = time.perf_counter()
    cfgs = make_configs(args.tiny)
    print(f"command: {command}")

    if args.dry_run:
        print("parameters (built on meta):")
        params = report_params(cfgs, "meta", args.tiny)
        rows = expected_flops(cfgs, args)
        print(f"\nFLOPs per pair at --batch-size {args.batch_size}, "
              f"captions ~{args.mean_tokens:g}±{args.std_tokens:g} tokens:")
        for row in rows:
            print(f"  {row['case']:<22} {row['gflops_per_pair']:9.2f} GFLOP/pair   "
                  f"{row['pairs_per_s_at_50pct_989']:8.0f} pairs/s at 50% of {H100_DENSE_BF16_TFLOPS:g} TFLOP/s")
        if args.json_out:
            write_json(args.json_out, {"command": command, "dry_run": True, "params": params, "cases": rows})
        print(f"elapsed {time.perf_counter() - started:.1f} s")
        return 0

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to torch (use --device cpu --tiny to smoke-test)")
        if device.index is None:  # max_memory_allocated & co. want a concrete index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        # Only the fp32 remainder (and --dtype fp32) is affected; bf16 autocast matmuls are not.
        torch.set_float32_matmul_precision("high")
    print(f"device: {describe_device(device)}, dtype {args.dtype}, batch {args.batch_size} pairs, "
          f"{args.warmup} warmup + {args.steps} timed steps, compile={args.compile}")
    print("parameters:")
    params = report_params(cfgs, "meta", args.tiny)
    peak = measure_peak_matmul_tflops(device, args.dtype)
    print(f"measured peak {args.dtype} matmul: {peak:.2f} TFLOP/s "
          f"(nominal H100 dense bf16: {H100_DENSE_BF16_TFLOPS:g})")

    results = []
    for name in args.cases:
        case_started = time.perf_counter()
        result = run_case_or_oom(name, cfgs, args, device, peak)
        result["elapsed_s"] = time.perf_counter() - case_started
        results.append(result)
        print(f"  {name}: done in {result['elapsed_s']:.1f} s" + (f" ({result['error']})" if "error" in result else ""))

    print()
    print(format_table(results))
    print("text tok/s: real (non-pad) tokens through the trained text tower; pad eff: real / padded tokens;")
    print("MFU meas: vs the matmul peak measured above; MFU 989 / pairs/s@50%989: vs H100 dense bf16 nominal.")
    elapsed = time.perf_counter() - started
    print(f"elapsed {elapsed:.1f} s")
    if args.json_out:
        write_json(args.json_out, {
            "command": command,
            "device": describe_device(device),
            "torch": torch.__version__,
            "dtype": args.dtype,
            "compile": args.compile,
            "tiny": args.tiny,
            "batch_pairs": args.batch_size,
            "warmup": args.warmup,
            "steps": args.steps,
            "caption_tokens": {"mean": args.mean_tokens, "std": args.std_tokens,
                               "min": MIN_CAPTION_TOKENS, "max": MAX_CAPTION_TOKENS},
            "measured_peak_tflops": peak,
            "nominal_peak_tflops": H100_DENSE_BF16_TFLOPS,
            "params": params,
            "cases": results,
            "elapsed_s": elapsed,
        })
    return 1 if any("error" in r for r in results) else 0


def write_json(path: str, payload: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
