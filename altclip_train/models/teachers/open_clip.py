"""The open_clip family: LAION, DFN, MetaCLIP, EVA and SigLIP checkpoints as open_clip ships them.

| name                            | what it loads                                                            |
|---------------------------------|--------------------------------------------------------------------------|
| `open_clip:MODEL@PRETRAINED`    | a built-in open_clip config, weights from a local file or a pretrained tag (`open_clip:ViT-B-32@/ckpt/model.safetensors`, `open_clip:ViT-H-14@laion2b_s32b_b79k`) |
| `hf-hub:ORG/NAME`               | an open_clip repo on the Hub (`open_clip_config.json` + weights)         |
| a dir (or `local-dir:DIR`)      | the same layout on disk: `open_clip_config.json` + `open_clip_model.safetensors` |

| what                     | how open_clip's authors do it                                                    |
|--------------------------|----------------------------------------------------------------------------------|
| tokenising               | `open_clip.get_tokenizer(name)`: fixed `context_length` rows, open_clip's own truncation (end-of-text kept) |
| `pre_projection` target  | `encode_text` with the text projection taken out: the pooled text state (the default when the tower has a projection) |
| `embedding` target       | `model.encode_text(tokens)`                                                      |
| image side               | `model.encode_image` (`visual`, projection included), open_clip's own `preprocess` (`image_transform_v2` of the model's `preprocess_cfg`) |
| phase-2 model            | `AltCLIPOpenClipModel` (`models/altclip_open_clip.py`), saved in open_clip's format |
| loss                     | sigmoid with the teacher's scale and bias when it has a `logit_bias` (SigLIP), else InfoNCE |

Token ids are stored per row without their trailing padding and laid out again at `context_length` with the
tokenizer's pad id before `encode_text`, so a target equals `model.encode_text(tokenizer(texts))` exactly.
Weights load strictly (open_clip's own `strict=True`): a checkpoint that does not fit its config is refused.

open_clip needs torchvision, so it is an optional extra (`pip install 'altclip-train[open_clip]'`); this module
imports it only when such a teacher is used, and says how to install it when it is missing.
"""

from __future__ import annotations

import hashlib
import json
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

from altclip_train.models.teachers.base import (ImagePreprocessor, Teacher, TextTargetEncoder,
                                                UnsupportedTeacherError, model_fingerprint)

OPEN_CLIP_PREFIXES = ("open_clip:", "hf-hub:", "local-dir:")
CONFIG_FILE = "open_clip_config.json"


def import_open_clip():
    try:
        import open_clip
    except ImportError as error:
        raise UnsupportedTeacherError(f"open_clip teachers need the open_clip extra "
                                      f"(pip install 'altclip-train[open_clip]'): {error}") from None
    return open_clip


def is_open_clip_dir(path: str | Path) -> bool:
    """A dir in open_clip's layout; our own open_clip exports also hold an XLM-R config.json, so it wins."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def open_clip_name(source: str) -> tuple[str, str | None]:
    """(model name as open_clip takes it, pretrained) for one of this family's names."""
    source = str(source)
    if source.startswith("open_clip:"):
        name, _, pretrained = source.removeprefix("open_clip:").partition("@")
        if not name or not pretrained:
            raise UnsupportedTeacherError(f"teacher {source}: name it open_clip:MODEL@PRETRAINED, with PRETRAINED "
                                          f"a weights file or one of open_clip's pretrained tags for MODEL")
        return name, pretrained
    if source.startswith("hf-hub:"):
        return source, None
    path = source.removeprefix("local-dir:")
    if not is_open_clip_dir(path):
        raise UnsupportedTeacherError(f"teacher {source}: no {CONFIG_FILE} in {path}")
    return f"local-dir:{Path(path).resolve()}", None


class OpenClipTokenizer:
    """open_clip's tokenizer behind the calls the corpus store and the data modules make of a tokenizer.

    `__call__` returns each text's ids without trailing padding (lists, or right-padded tensors with
    `return_tensors="pt"`); the ids are exactly open_clip's rows up to where its padding starts.
    """

    backend_tokenizer = None  # no fast backend: the corpus store calls the tokenizer itself
    padding_side = truncation_side = "right"

    def __init__(self, tokenizer, name: str, context_length: int, pad_token_id: int):
        self.tokenizer, self.name_or_path = tokenizer, name
        self.model_max_length = self.context_length = context_length
        self.pad_token_id = pad_token_id
        self.special_tokens_map = {"open_clip": name, "class": type(tokenizer).__name__,
                                   "context_length": context_length, "pad_token_id": pad_token_id}

    def get_vocab(self) -> dict:
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
        return inner.get_vocab() if inner is not None else dict(self.tokenizer.encoder)

    def rows(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        """Each text's ids up to where open_clip's padding starts, cut by open_clip at `max_length` (at most
        the context length)."""
        width = min(max_length or self.context_length, self.context_length)
        full = self.tokenizer(list(texts), context_length=width)
        real = full != self.pad_token_id
        lengths = torch.where(real.any(1), width - real.flip(1).int().argmax(1), torch.zeros(len(full), dtype=torch.long))
        return [row[:length].tolist() for row, length in zip(full, lengths.tolist())]

    @staticmethod
    def pad_id_of(tokenizer) -> int:
        """open_clip pads with the HF tokenizer's pad id (its HFTokenizer) or 0 (its CLIP BPE and the others)."""
        inner = getattr(tokenizer, "tokenizer", None)
        pad = getattr(inner, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    def __call__(self, texts, padding=False, truncation=True, max_length=None, return_tensors=None,
                 return_attention_mask=True, **_):
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = {"input_ids": self.rows(texts, max_length)}
        if return_attention_mask:
            encoded["attention_mask"] = [[1] * len(row) for row in encoded["input_ids"]]
        return self.pad(encoded, return_tensors=return_tensors) if return_tensors == "pt" else encoded

    def pad(self, encoded, padding=True, max_length=None, return_tensors="pt", **_):
        rows = encoded["input_ids"]
        width = max_length if padding == "max_length" and max_length else max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            row = list(row)
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def without_text_projection(model: nn.Module) -> nn.Module:
    """`model.encode_text` then returns the pooled text state before the text projection."""
    text = getattr(model, "text", model)  # CustomTextCLIP keeps its text tower in `.text`
    if hasattr(text, "proj") and hasattr(text, "pooler"):  # an HF text tower (HFTextEncoder)
        text.proj = nn.Identity()
    else:  # CLIP keeps the text tower's projection on itself, CustomTextCLIP on `.text`
        text.text_projection = None
    return model


def text_projection_of(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight [out, in], bias) of the teacher's text projection as one linear map, or None without one."""
    text = getattr(model, "text", model)
    projection = text.proj if hasattr(text, "proj") and hasattr(text, "pooler") else text.text_projection
    if projection is None or isinstance(projection, nn.Identity):
        return None
    if isinstance(projection, nn.Linear):
        return projection.weight.detach().clone(), (None if projection.bias is None else projection.bias.detach().clone())
    if isinstance(projection, nn.Parameter) or torch.is_tensor(projection):
        return projection.detach().t().contiguous().clone(), None  # open_clip computes x @ P
    raise UnsupportedTeacherError(f"the teacher's text projection ({type(projection).__name__}) is not one linear "
                                  f"map; distil with model.distill_target=embedding")


class OpenClipTextTarget(TextTargetEncoder):
    def __init__(self, model, context_length: int, pad_id: int):
        super().__init__()
        self.model, self.context_length, self.pad_id = model, context_length, pad_id

    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.context_length:
            raise ValueError(f"teacher text of {input_ids.shape[1]} tokens is longer than the teacher's "
                             f"context_length {self.context_length}")
        tokens = nn.functional.pad(input_ids, (0, self.context_length - input_ids.shape[1]), value=self.pad_id)
        return self.model.encode_text(tokens)


class OpenClipImageSide(nn.Module):
    """`model.encode_image(pixels)`: open_clip's `visual` with its projection."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)


class OpenClipTeacher(Teacher):
    family = "open_clip"
    handles = ("open_clip:MODEL@PRETRAINED", "hf-hub:ORG/NAME", f"a dir with {CONFIG_FILE}")

    @staticmethod
    def is_open_clip_name(source: str) -> bool:
        return str(source).startswith(OPEN_CLIP_PREFIXES) or is_open_clip_dir(source)

    @classmethod
    def claims(cls, source: str, config) -> bool:
        return cls.is_open_clip_name(source)

    def __init__(self, source: str, distill_target: str | None = None, trust_remote_code: bool = False):
        self.open_clip = import_open_clip()
        self.name, self.pretrained = open_clip_name(source)
        self.model_cfg, self.preprocess_cfg = self._read_configs(source)
        super().__init__(source, distill_target, trust_remote_code)

    # ------------------------------------------------------------ configs (no weights)
    def _read_configs(self, source: str) -> tuple[dict, dict]:
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        open_clip, preprocess = self.open_clip, {}
        if self.name.startswith("local-dir:"):
            stored = json.loads((Path(self.name.removeprefix("local-dir:")) / CONFIG_FILE).read_text("utf-8"))
        elif self.name.startswith("hf-hub:"):
            from huggingface_hub import hf_hub_download

            stored = json.loads(Path(hf_hub_download(self.name.removeprefix("hf-hub:"), CONFIG_FILE)).read_text())
        else:
            model_cfg = open_clip.get_model_config(self.name)
            if model_cfg is None:
                raise UnsupportedTeacherError(f"teacher {source}: open_clip has no model config {self.name!r}")
            tag = open_clip.get_pretrained_cfg(self.name, self.pretrained) or {}
            if not tag and not Path(self.pretrained).is_file():
                raise UnsupportedTeacherError(f"teacher {source}: {self.pretrained} is neither a weights file nor "
                                              f"a pretrained tag of {self.name}")
            stored = {"model_cfg": model_cfg, "preprocess_cfg": tag}
        if "model_cfg" not in stored:
            raise UnsupportedTeacherError(f"teacher {source}: its {CONFIG_FILE} has no model_cfg")
        model_cfg = deepcopy(stored["model_cfg"])
        from dataclasses import asdict

        preprocess = merge_preprocess_dict(asdict(PreprocessCfg()), stored.get("preprocess_cfg") or {})
        preprocess["size"] = model_cfg["vision_cfg"].get("image_size", preprocess["size"])  # as open_clip does
        return model_cfg, json.loads(json.dumps(preprocess))

    @property
    def text_cfg(self) -> dict:
        return self.model_cfg.get("text_cfg", {})

    @property
    def has_text_projection(self) -> bool:
        if "hf_model_name" in self.text_cfg:
            return self.text_cfg.get("hf_proj_type", "linear") is not None or self.text_width != self.embed_dim
        return self.text_cfg.get("proj_type", "linear") != "none"

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def text_width(self) -> int:
        if "hf_model_name" in self.text_cfg:
            from transformers import AutoConfig

            return int(AutoConfig.from_pretrained(self.text_cfg["hf_model_name"]).hidden_size)
        return int(self.text_cfg.get("width", 512))

    # ------------------------------------------------------------ loading
    def load_model(self, device="cpu") -> nn.Module:
        """The whole open_clip model, weights loaded strictly, frozen, in eval mode."""
        try:
            model = self.open_clip.create_model(self.name, pretrained=self.pretrained, device=device,
                                                require_pretrained=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise UnsupportedTeacherError(f"teacher {self.source}: open_clip cannot load it: {first}") from None
        return model.eval().requires_grad_(False)

    def fingerprint(self) -> str:
        if self.name.startswith("local-dir:"):
            return model_fingerprint(self.name.removeprefix("local-dir:"))
        if self.name.startswith("hf-hub:"):
            return model_fingerprint(self.name.removeprefix("hf-hub:"))
        weights = model_fingerprint(self.pretrained) if Path(self.pretrained).is_file() else self.pretrained
        config = hashlib.sha256(json.dumps(self.model_cfg, sort_keys=True).encode()).hexdigest()[:16]
        return f"open_clip:{self.name}:{config}@{weights}"

    # ------------------------------------------------------------ text side
    @property
    def default_distill_target(self) -> str:
        return "pre_projection" if self.has_text_projection else "embedding"

    @property
    def text_dim(self) -> int:
        return self.text_width if self.distill_target == "pre_projection" else self.embed_dim

    @property
    def text_max_length(self) -> int:
        return int(self.text_cfg.get("context_length", 77))

    def text_tokenizer(self) -> OpenClipTokenizer:
        tokenizer = self.open_clip.get_tokenizer(self.name)
        inner = getattr(tokenizer, "tokenizer", None)
        pad_id = OpenClipTokenizer.pad_id_of(tokenizer)
        if inner is not None and getattr(inner, "padding_side", "right") != "right":
            raise UnsupportedTeacherError(f"teacher {self.source}: its tokenizer pads on the left, which this "
                                          f"adapter does not lay out yet")
        return OpenClipTokenizer(tokenizer, self.name, int(getattr(tokenizer, "context_length", None)
                                                           or self.text_max_length), pad_id)

    def load_text_encoder(self, device="cpu") -> TextTargetEncoder:
        model = self.load_model(device)
        model.visual = None  # the image tower is not needed for text targets
        if self.distill_target == "pre_projection":
            without_text_projection(model)
        tokenizer = self.text_tokenizer()
        return OpenClipTextTarget(model, tokenizer.context_length, tokenizer.pad_token_id).to(device).eval()

    def eval_tokenizer(self):
        return self.text_tokenizer()

    # ------------------------------------------------------------ image side
    def image_processor(self) -> ImagePreprocessor:
        return ImagePreprocessor.from_open_clip(self.preprocess_cfg)

    @property
    def image_dim(self) -> int:
        return self.embed_dim

    def load_image_encoder(self, device="cpu") -> nn.Module:
        return OpenClipImageSide(self.load_model(device).visual).to(device).eval()

    # ------------------------------------------------------------ phase 2
    @property
    def has_logit_bias(self) -> bool:
        return self.model_cfg.get("init_logit_bias") is not None

    @property
    def contrastive_loss(self) -> tuple[str, dict]:
        return ("sigmoid", {}) if self.has_logit_bias else ("clip", {})

    def build_contrastive_model(self, student: str) -> nn.Module:
        from altclip_train.models.altclip_open_clip import AltCLIPOpenClipModel
        from altclip_train.models.student import load_phase1_student

        text_model = load_phase1_student(student)
        if text_model.config.project_dim != self.text_dim:
            raise UnsupportedTeacherError(
                f"teacher {self.source} has a {self.distill_target} text width of {self.text_dim} but student "
                f"{student} has project_dim {text_model.config.project_dim}; distil against this teacher and "
                f"target first")
        teacher = self.load_model()
        projection = text_projection_of(teacher) if self.distill_target == "pre_projection" else None
        return AltCLIPOpenClipModel.from_parts(
            open_clip_model_cfg=self.model_cfg, preprocess_cfg=self.preprocess_cfg, visual=teacher.visual,
            text_model=text_model, text_projection=projection, logit_scale=teacher.logit_scale,
            logit_bias=getattr(teacher, "logit_bias", None), teacher=self.source)

    def save_contrastive_model(self, model: nn.Module, output_dir: Path, tokenizer) -> None:
        """The phase-2 model in open_clip's own format (see `models/open_clip_format.py`)."""
        model.save_open_clip(output_dir, tokenizer)
