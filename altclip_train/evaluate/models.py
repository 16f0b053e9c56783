"""Load a CLIP or AltCLIP checkpoint for evaluation, and embed texts and images with any such model.

A checkpoint is anything plain `transformers` loads: an exported `AltCLIPModel` directory (XLM-R tokenizer +
CLIP image processor) or a `CLIPModel` directory or hub id (the teacher). The embedding helpers also take an
in-memory model, so the training loop can evaluate without exporting: anything with `get_text_features` and
`get_image_features` works, including one wrapped by DDP (`.module`) or held by a Task (`.model`).

Embeddings come back L2-normalised, float32, on the CPU, in input order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from altclip_train.data.images import ImagePreprocessor

# Below this many batches a progress bar is noise.
PROGRESS_MIN_BATCHES = 8


@dataclass
class EvalModel:
    """A loaded checkpoint with the tokenizer and image transform that belong to it."""

    name: str
    path: str
    model_type: str
    model: nn.Module
    tokenizer: object
    transform: ImagePreprocessor
    max_length: int


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """`auto` (or None) picks CUDA when present, else the CPU; anything else goes to `torch.device`."""
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def load_eval_model(path: str, name: str | None = None, device: str | torch.device = "cpu") -> EvalModel:
    """Load an AltCLIP, AltCLIP-SigLIP, CLIP or SigLIP checkpoint, picking the class from `config.json`'s model_type.

    An AltCLIP-SigLIP export ships its class as remote code; the class is this package's own, so it is loaded
    from here rather than by running the file in the model dir.
    """
    import json
    from pathlib import Path

    from transformers import AltCLIPModel, AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

    from altclip_train.models.altclip_siglip import AltCLIPSiglipModel
    from altclip_train.models.teachers import load_teacher

    model_classes = {"altclip": AltCLIPModel, "altclip_siglip": AltCLIPSiglipModel, "clip": CLIPModel,
                     "siglip": SiglipModel}
    config_file = Path(path) / "config.json"
    model_type = (json.loads(config_file.read_text(encoding="utf-8")).get("model_type") if config_file.is_file()
                  else AutoConfig.from_pretrained(path).model_type)
    if model_type not in model_classes:
        raise ValueError(
            f"{path}: model_type {model_type!r} cannot be evaluated; expected one of {sorted(model_classes)}"
        )
    model = model_classes[model_type].from_pretrained(path)
    model.to(resolve_device(device)).eval()
    # A teacher is read with its family's tokenizer settings (SigLIP pads to its fixed width).
    tokenizer = (load_teacher(path).eval_tokenizer() if model_type in ("clip", "siglip")
                 else AutoTokenizer.from_pretrained(path))
    return EvalModel(
        name=name or str(path),
        path=str(path),
        model_type=model_type,
        model=model,
        tokenizer=tokenizer,
        transform=ImagePreprocessor.from_pretrained(path),
        max_length=text_max_length(model, tokenizer),
    )


def text_max_length(model: nn.Module, tokenizer) -> int:
    """Longest input the text tower accepts: its position table, capped by the tokenizer's own limit."""
    config = encoder_of(model).config
    text_config = getattr(config, "text_config", config)
    limit = text_config.max_position_embeddings
    if text_config.model_type == "altclip_text_model":
        # RoBERTa-style position ids start after the padding index, so the first pad_token_id + 1 rows are unused.
        limit -= (text_config.pad_token_id or 0) + 1
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a configured limit report a huge sentinel (int(1e30)).
    if tokenizer_limit and tokenizer_limit < 1_000_000:
        limit = min(limit, tokenizer_limit)
    return int(limit)


def resolve_tokenizer(override, default):
    """The per-call tokenizer if given, else the evaluator's own; one of them must exist."""
    tokenizer = override if override is not None else default
    if tokenizer is None:
        raise ValueError("no tokenizer: pass one to the evaluator or to evaluate_languages")
    return tokenizer


def encoder_of(model: nn.Module) -> nn.Module:
    """The module that owns get_text_features/get_image_features, looking through DDP and Task wrappers."""
    seen = model
    for _ in range(4):
        if hasattr(seen, "get_text_features") and hasattr(seen, "get_image_features"):
            return seen
        inner = getattr(seen, "module", None)
        if inner is None:
            inner = getattr(seen, "model", None)
        if not isinstance(inner, nn.Module):
            break
        seen = inner
    raise TypeError(
        f"{type(model).__name__} has no get_text_features/get_image_features (nor a .module/.model that has them)"
    )


def feature_tensor(output) -> torch.Tensor:
    """Projected embedding from get_*_features: a tensor (transformers 4) or a ModelOutput (transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"get_*_features returned {type(output).__name__} without pooler_output")
    return pooled


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards (frozen towers stay eval)."""
    was_training = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in was_training.items():
            module.training = training


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _normalise(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=-1)


@torch.inference_mode()
def embed_texts(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
    max_length: int | None = None,
    amp: bool = True,
    desc: str = "texts",
) -> torch.Tensor:
    """Embed each text once: (len(texts), dim), normalised.

    Texts are sorted by token count so each batch pads only to its own longest member.
    """
    encoder = encoder_of(model)
    if max_length is None:
        max_length = text_max_length(model, tokenizer)
    if not texts:
        raise ValueError("no texts to embed")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    out: torch.Tensor | None = None
    with eval_mode(encoder), _autocast(device, amp):
        for chunk in tqdm(chunks, desc=f"embed {desc}", disable=len(chunks) < PROGRESS_MIN_BATCHES, leave=False):
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, padding=True, return_tensors="pt")
            features = feature_tensor(
                encoder.get_text_features(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
                )
            )
            features = _normalise(features).cpu()
            if out is None:
                out = torch.empty(len(texts), features.shape[-1])
            out[torch.tensor(chunk)] = features
    return out


@torch.inference_mode()
def embed_pixels(
    model: nn.Module,
    pixel_batches: Iterable[torch.Tensor],
    device: torch.device,
    amp: bool = True,
    total: int | None = None,
    desc: str = "images",
) -> torch.Tensor:
    """Embed preprocessed pixel batches (B, 3, H, W) in order: (sum of B, dim), normalised."""
    encoder = encoder_of(model)
    dtype = next(encoder.parameters()).dtype
    outputs = []
    bar_off = total is not None and total < PROGRESS_MIN_BATCHES
    with eval_mode(encoder), _autocast(device, amp):
        for pixels in tqdm(pixel_batches, total=total, desc=f"embed {desc}", disable=bar_off, leave=False):
            features = feature_tensor(encoder.get_image_features(pixel_values=pixels.to(device, dtype)))
            outputs.append(_normalise(features).cpu())
    if not outputs:
        raise ValueError("no images to embed")
    return torch.cat(outputs)
