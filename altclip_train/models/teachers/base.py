"""The teacher protocol: what every teacher family (CLIP, SigLIP, open_clip, ...) answers for the rest of the code.

A `Teacher` is built from a checkpoint name (`load_teacher` in this package picks the family). It knows, without
loading weights, the width of its distillation target and image embeddings, how its authors tokenise English
(`text_tokenizer`, `text_max_length`), and its identity for cache keys. On demand it loads the frozen text side
(`load_text_encoder`: token ids -> the target named by `distill_target`) and the frozen image side
(`load_image_encoder`: pixels -> the image embedding), gives its own image preprocessing (`image_processor`),
builds the phase-2 two-tower model around a phase-1 student (`build_contrastive_model`) and names its loss.

Nothing outside `models/teachers/` asks which family a checkpoint is; it asks the adapter.

| distill_target   | meaning                                                                          |
|------------------|----------------------------------------------------------------------------------|
| `pre_projection` | the pooled text state before the family's text projection (AltCLIP's choice)     |
| `embedding`      | the text embedding the model itself returns (`get_text_features`)                |
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from altclip_train.data.images import ImagePreprocessor

DISTILL_TARGETS = ("pre_projection", "embedding")


class UnsupportedTeacherError(ValueError):
    """A checkpoint no family reads, or a setting the family cannot honour; the message is one line."""


def load_model_config(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def model_fingerprint(name_or_path: str) -> str:
    """Identity of a checkpoint: a content hash of a local dir (or file), or hub id + resolved commit.

    Part of every cache key, so a different teacher can never be served another's vectors.
    """
    path = Path(name_or_path)
    if path.is_file():
        return f"file:{_hash_files([path])}"
    if path.is_dir():
        files = [f for f in sorted(path.iterdir())
                 if f.is_file() and f.suffix in {".json", ".txt", ".safetensors", ".bin", ".model", ".py"}]
        return f"dir:{_hash_files(files)}"
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(name_or_path, allow_patterns=["config.json", "open_clip_config.json"]))
    return f"hub:{name_or_path}@{snapshot.name}"


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def load_weights_strictly(model_class, source: str, unexpected_ok: Callable[[str], bool] = lambda key: False,
                          **kwargs):
    """`model_class.from_pretrained(source)`, refusing a checkpoint that leaves any weight of it uninitialised.

    Reading one tower out of a two-tower checkpoint lists the other tower as unexpected, which is the point;
    anything missing means the checkpoint is not what the class thinks it is, and that is never let through.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the report is checked below instead of printed
    try:
        model, info = model_class.from_pretrained(source, output_loading_info=True, **kwargs)
    except RuntimeError as error:
        if "mismatched" not in str(error) and "size mismatch" not in str(error):
            raise
        raise UnsupportedTeacherError(f"{source}: {model_class.__name__} does not fit this checkpoint's weights: "
                                      f"tensor shapes differ from what its config describes") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    unexpected = [key for key in info.get("unexpected_keys") or [] if not unexpected_ok(key)]
    problems = [f"{len(keys)} {what} (e.g. {sorted(keys)[0]})"
                for what, keys in (("missing", missing), ("mismatched", mismatched), ("unexpected", unexpected))
                if keys]
    if problems:
        raise UnsupportedTeacherError(f"{source}: {model_class.__name__} does not fit this checkpoint's weights: "
                                      f"{'; '.join(problems)}")
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------- the protocol
class TextTargetEncoder(nn.Module):
    """The frozen text side: token ids -> distillation targets (float32, on the ids' device).

    Subclasses implement `targets(input_ids, attention_mask)`; ids come padded per batch (pad id on the right)
    and each family re-pads them if its authors pad to a fixed width.
    """

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device = input_ids.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return self.targets(input_ids, attention_mask).float()

    @abstractmethod
    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


class Teacher(ABC):
    """One teacher checkpoint, read the way its family's authors read it (see the module docstring)."""

    family: ClassVar[str]
    #: model_type values (transformers) or name prefixes this family claims; shown in the unsupported-family error
    handles: ClassVar[tuple[str, ...]]

    def __init__(self, source: str, distill_target: str | None = None, trust_remote_code: bool = False):
        self.source, self.trust_remote_code = source, trust_remote_code
        if distill_target not in (None, *DISTILL_TARGETS):
            raise UnsupportedTeacherError(f"model.distill_target={distill_target!r}: expected one of "
                                          f"{', '.join(DISTILL_TARGETS)}")
        self.distill_target = distill_target or self.default_distill_target

    @classmethod
    @abstractmethod
    def claims(cls, source: str, config) -> bool:
        """Does this family read `source`? `config` is its transformers config, or None when it has none."""

    # ------------------------------------------------------------ text side
    @property
    @abstractmethod
    def default_distill_target(self) -> str: ...

    @property
    @abstractmethod
    def text_dim(self) -> int:
        """Width of the distillation target (read from the config, no weights loaded)."""

    @abstractmethod
    def text_tokenizer(self):
        """The English tokenizer, configured as the authors use it (a transformers tokenizer, or one that
        answers `__call__`, `pad_token_id`, `model_max_length` and `backend_tokenizer`/`name_or_path` alike)."""

    @property
    @abstractmethod
    def text_max_length(self) -> int:
        """The authors' context length: teacher text is truncated to it."""

    @abstractmethod
    def load_text_encoder(self, device="cpu") -> TextTargetEncoder: ...

    def eval_tokenizer(self):
        """The tokenizer evaluation pads batches with (`tokenizer(...)`, then `.pad(...)`): the authors' settings."""
        return self.text_tokenizer()

    @torch.no_grad()
    def encode_texts(self, texts: list[str], device="cpu", batch_size: int = 256, encoder=None) -> np.ndarray:
        """float32 targets for `texts`, tokenised as the family's authors do (a convenience; training reads the
        pre-tokenised corpus store instead)."""
        tokenizer, encoder = self.text_tokenizer(), encoder or self.load_text_encoder(device)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                               max_length=self.text_max_length, return_tensors="pt")
            mask = tokens.get("attention_mask", torch.ones_like(tokens["input_ids"]))
            out.append(encoder(tokens["input_ids"].to(device), mask.to(device)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.text_dim), dtype=np.float32)

    # ------------------------------------------------------------ image side
    @abstractmethod
    def image_processor(self) -> ImagePreprocessor: ...

    @property
    @abstractmethod
    def image_dim(self) -> int:
        """Width of the frozen image embedding (what phase 2 caches)."""

    @abstractmethod
    def load_image_encoder(self, device="cpu") -> nn.Module:
        """Frozen `module(pixel_values) -> image embedding`, exactly the phase-2 model's image side."""

    # ------------------------------------------------------------ phase 2 and export
    @property
    @abstractmethod
    def contrastive_loss(self) -> tuple[str, dict]:
        """(loss name, options) the teacher was trained with: `clip`, or `sigmoid` with its scale and bias."""

    @abstractmethod
    def build_contrastive_model(self, student: str) -> nn.Module:
        """The phase-2 two-tower model: this teacher's image side and projections, `student` as text tower."""

    def load_contrastive_model(self, model_dir: str) -> nn.Module:
        """A phase-2 model of this family saved earlier (to continue it): its whole text side, projection and
        logit scale included. Families that cannot read their phase-2 format back refuse in one line."""
        raise UnsupportedTeacherError(f"{model_dir}: continuing phase 2 from a saved model is not supported for "
                                      f"{self.family} teachers; continue from its phase-1 student instead")

    def save_contrastive_model(self, model: nn.Module, output_dir: Path, tokenizer) -> None:
        """Write the phase-2 model as a dir plain transformers loads: weights, tokenizer, this family's processor."""
        model.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
        self.image_processor().save_pretrained(output_dir)

    @property
    def exporters(self) -> dict[str, Callable]:
        """Formats the phase-2 model can be written to besides its native `save_pretrained` dir."""
        return {}

    # ------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        return model_fingerprint(self.source)

    def identity(self, with_preprocessing: bool = False) -> dict:
        """Family, checkpoint hash and target: what every teacher cache key is derived from."""
        identity = {"family": self.family, "checkpoint": self.fingerprint(), "target": self.distill_target,
                    "target_version": 2}
        if with_preprocessing:
            identity["preprocessing"] = self.image_processor().fingerprint()
        return identity

    def describe(self) -> dict:
        """What a model card says about the teacher."""
        return {"family": self.family, "source": self.source, "distill_target": self.distill_target}
