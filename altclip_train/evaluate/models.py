"""Load a CLIP or AltCLIP checkpoint for evaluation, and embed texts and images with any such model.

A checkpoint is anything plain `transformers` loads: an exported `AltCLIPModel` directory (XLM-R tokenizer +
CLIP image processor) or a `CLIPModel` directory or hub id (the teacher); or a model in open_clip's format, read
by open_clip itself as CLIP_benchmark reads it (`open_clip.create_model_and_transforms(name)` and
`open_clip.get_tokenizer(name)`):

| path                                   | loaded as                                                          |
|----------------------------------------|--------------------------------------------------------------------|
| a dir with `open_clip_config.json`     | `local-dir:DIR` (checked before `config.json`: our open_clip export also holds XLM-R's `config.json`) |
| `local-dir:DIR`, `hf-hub:ORG/NAME`     | that name                                                          |
| anything else                          | transformers, by `config.json`'s `model_type`                      |

An open_clip model is evaluated through `OpenClipEvalModel` (`get_text_features` = `encode_text`,
`get_image_features` = `encode_image`) with `OpenClipTokenizer` (open_clip's tokenizer, from the teacher adapter; rows are laid out at
its `context_length` again before `encode_text`, so every text is embedded exactly as open_clip embeds it) and
open_clip's own eval transform (`ImagePreprocessor.from_open_clip` of the `preprocess_cfg` open_clip resolved).
open_clip is an optional extra, imported only for such a model. The embedding helpers also take an
in-memory model, so the training loop can evaluate without exporting: anything with `get_text_features` and
`get_image_features` works, including one wrapped by DDP (`.module`) or held by a Task (`.model`).

Embeddings come back L2-normalised, float32, on the CPU, in input order.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from altclip_train.data.images import ImagePreprocessor

# Below this many batches a progress bar is noise.
PROGRESS_MIN_BATCHES = 8


OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_PREFIXES = ("local-dir:", "hf-hub:")
OPEN_CLIP_EXTRA = "pip install 'altclip-train[open_clip]'"


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
    """Load an AltCLIP, AltCLIP-SigLIP, CLIP or SigLIP checkpoint, picking the class from `config.json`'s model_type,
    or an open_clip-format model with open_clip (see the module docstring).

    An AltCLIP-SigLIP export ships its class as remote code; the class is this package's own, so it is loaded
    from here rather than by running the file in the model dir.
    """
    if is_open_clip_model(path):
        return load_open_clip_eval_model(path, name, device)

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


# ------------------------------------------------------------------------------------------ open_clip format
def is_open_clip_model(path: str | Path) -> bool:
    """A `local-dir:`/`hf-hub:` name, or a dir holding `open_clip_config.json` (whatever else it holds)."""
    return str(path).startswith(OPEN_CLIP_PREFIXES) or (Path(path) / OPEN_CLIP_CONFIG).is_file()


def open_clip_model_name(path: str | Path) -> str:
    """The name open_clip (and CLIP_benchmark's `--model`) takes for an open_clip-format model."""
    path = str(path)
    if path.startswith("hf-hub:"):
        return path
    directory = Path(path.removeprefix("local-dir:")).expanduser()
    if not (directory / OPEN_CLIP_CONFIG).is_file():
        raise FileNotFoundError(f"{path}: no {OPEN_CLIP_CONFIG} in {directory}")
    return f"local-dir:{directory.resolve()}"


def import_open_clip(path: str | Path):
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(f"{path} is an open_clip-format model; evaluating it needs open_clip: {OPEN_CLIP_EXTRA} "
                          f"({error})") from None
    return open_clip


def open_clip_config(path: str | Path) -> dict:
    """The model's `open_clip_config.json` (downloaded for `hf-hub:` names)."""

    name = open_clip_model_name(path)
    if name.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        file = Path(hf_hub_download(name.removeprefix("hf-hub:"), OPEN_CLIP_CONFIG))
    else:
        file = Path(name.removeprefix("local-dir:")) / OPEN_CLIP_CONFIG
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: bad JSON: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ValueError(f"{file}: no model_cfg object (not an open_clip model config)")
    return config


def canonical_preprocess_cfg(preprocess_cfg: dict) -> dict:
    """JSON-plain settings, a square size as one int (open_clip's transform treats (n, n) and n alike)."""

    settings = json.loads(json.dumps(dict(preprocess_cfg)))
    size = settings.get("size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        settings["size"] = size[0]
    return settings


def open_clip_preprocess_cfg(path: str | Path) -> dict:
    """The `preprocess_cfg` open_clip resolves for the model, read from its config without loading weights:
    the file's `preprocess_cfg` merged over `PreprocessCfg()`'s defaults, `size` the vision tower's image size."""
    from dataclasses import asdict

    import_open_clip(path)
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    config = open_clip_config(path)
    settings = merge_preprocess_dict(asdict(PreprocessCfg()), config.get("preprocess_cfg") or {})
    image_size = (config["model_cfg"].get("vision_cfg") or {}).get("image_size")
    if image_size is not None:  # open_clip takes the size from the vision tower it built
        settings["size"] = image_size
    return canonical_preprocess_cfg(settings)


def eval_transform(path: str | Path) -> ImagePreprocessor:
    """The image transform a checkpoint is evaluated with, without loading its weights."""
    if is_open_clip_model(path):
        return ImagePreprocessor.from_open_clip(open_clip_preprocess_cfg(path))
    return ImagePreprocessor.from_pretrained(str(path))


class OpenClipEvalModel(nn.Module):
    """An open_clip model behind `get_text_features`/`get_image_features` (its `encode_text`/`encode_image`)."""

    def __init__(self, model: nn.Module, context_length: int, pad_token_id: int):
        super().__init__()
        self.model = model
        self.context_length, self.pad_token_id = int(context_length), int(pad_token_id)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # open_clip's towers read padding from the ids (HF towers) or need the full positional width (its own
        # TextTransformer): rows are laid out at context_length with the pad id, as open_clip's tokenizer does.
        if attention_mask is not None:
            input_ids = input_ids.masked_fill(attention_mask == 0, self.pad_token_id)
        width = input_ids.shape[1]
        if width < self.context_length:
            input_ids = nn.functional.pad(input_ids, (0, self.context_length - width), value=self.pad_token_id)
        return self.model.encode_text(input_ids[:, : self.context_length])

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


def load_open_clip_eval_model(path: str, name: str | None = None, device: str | torch.device = "cpu") -> EvalModel:
    """An open_clip-format model loaded as CLIP_benchmark loads it (`create_model_and_transforms` + `get_tokenizer`)."""
    from altclip_train.models.teachers.open_clip import OpenClipTokenizer

    open_clip = import_open_clip(path)
    model_name = open_clip_model_name(path)
    if model_name.startswith("local-dir:"):
        directory = Path(model_name.removeprefix("local-dir:"))
        # open_clip only warns and initialises at random when the dir has no weights file (*.safetensors/bin/pth).
        if not any(any(directory.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pth")):
            raise FileNotFoundError(f"{path}: no weights beside {OPEN_CLIP_CONFIG} (open_clip_model.safetensors)")
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name)
        tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, ValueError, KeyError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: open_clip cannot load it: {first}") from error
    context_length = getattr(tokenizer, "context_length", None) or getattr(model, "context_length", None)
    if not context_length:
        raise ValueError(f"{path}: open_clip's tokenizer for it has no context_length")
    pad_id = OpenClipTokenizer.pad_id_of(tokenizer)
    wrapped = OpenClipEvalModel(model, context_length, pad_id).to(resolve_device(device)).eval()
    preprocess_cfg = getattr(getattr(model, "visual", model), "preprocess_cfg", None)
    if preprocess_cfg is None:
        preprocess_cfg = open_clip_preprocess_cfg(path)
    return EvalModel(
        name=name or str(path),
        path=str(path),
        model_type="open_clip",
        model=wrapped,
        tokenizer=OpenClipTokenizer(tokenizer, model_name, context_length, pad_id),
        transform=ImagePreprocessor.from_open_clip(canonical_preprocess_cfg(preprocess_cfg)),
        max_length=int(context_length),
    )


def text_max_length(model: nn.Module, tokenizer) -> int:
    """Longest input the text tower accepts: its position table, capped by the tokenizer's own limit."""
    encoder = encoder_of(model)
    if isinstance(encoder, OpenClipEvalModel):
        return encoder.context_length
    config = encoder.config
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
