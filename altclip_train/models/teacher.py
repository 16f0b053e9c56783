"""The frozen CLIP teacher's text tower and its distillation target.

The target is CLIP's pooled end-of-text hidden state *before* `text_projection` (768-d for
ViT-L/14): exactly `CLIPTextModel(...).pooler_output`. Any HF CLIP checkpoint works, as a hub id
or a local directory; the text tower is read out of the full CLIP checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

# Bumped whenever the meaning of a cached teacher vector changes, so old caches can never be reused.
TARGET_VERSION = "clip-text-pooled-eot-pre-projection-v1"


def load_model_config(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def teacher_text_dim(name_or_path: str, trust_remote_code: bool = False) -> int:
    """Width of the teacher's text target, read from its config without loading weights."""
    config = load_model_config(name_or_path, trust_remote_code)
    text_config = getattr(config, "text_config", config)
    return int(text_config.hidden_size)


def load_teacher_text_model(name_or_path: str, torch_dtype=None, trust_remote_code: bool = False):
    """The teacher's CLIP text tower in eval mode with gradients off."""
    from transformers import CLIPTextModel
    from transformers.utils import logging as hf_logging

    # Loading the text tower out of a full CLIP checkpoint lists every vision weight as
    # "unexpected"; that is the point, so keep the log quiet while it happens.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = CLIPTextModel.from_pretrained(
            name_or_path, dtype=torch_dtype, trust_remote_code=trust_remote_code, attn_implementation="sdpa")
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval().requires_grad_(False)
    return model


def model_fingerprint(name_or_path: str) -> str:
    """Identity of a checkpoint: a content hash of a local dir, or hub id + resolved commit.

    Part of every cache key, so a different teacher can never be served another's vectors.
    """
    path = Path(name_or_path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(path.iterdir()):
            if file.is_file() and file.suffix in {".json", ".txt", ".safetensors", ".bin", ".model"}:
                digest.update(file.name.encode())
                with file.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 24), b""):
                        digest.update(block)
        return f"dir:{digest.hexdigest()}"
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(name_or_path, allow_patterns=["config.json"]))
    return f"hub:{name_or_path}@{snapshot.name}"


class TeacherTextEncoder:
    """Tokenises English text and returns the teacher's distillation targets."""

    def __init__(self, name_or_path: str, max_length: int = 77, device: str | torch.device = "cpu",
                 torch_dtype=None, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        self.model = load_teacher_text_model(name_or_path, torch_dtype, trust_remote_code).to(device)
        self.max_length = max_length
        self.device = torch.device(device)

    @torch.inference_mode()
    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Targets for already tokenised, padded rows (float32, on the encoder's device)."""
        input_ids = input_ids.to(self.device, non_blocking=True)
        attention_mask = attention_mask.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).pooler_output.float()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256, show_progress: bool = True) -> np.ndarray:
        """float32 targets for `texts`, batched and sorted by length so padding stays small."""
        order = np.argsort([len(text) for text in texts], kind="stable")
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="teacher targets", disable=not show_progress, unit="batch"):
            rows = order[start:start + batch_size]
            tokens = self.tokenize([texts[i] for i in rows]).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                pooled = self.model(**tokens).pooler_output
            out[rows] = pooled.float().cpu().numpy()
        return out


def describe_teacher(name_or_path: str, max_length: int) -> str:
    """The string every teacher-cache key is derived from."""
    return json.dumps({"teacher": model_fingerprint(name_or_path), "max_length": max_length,
                       "target": TARGET_VERSION}, sort_keys=True)
