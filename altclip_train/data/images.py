"""CLIP image preprocessing without torchvision: decode, resize the short side, centre-crop, normalise.

It follows `transformers.CLIPImageProcessor` (bicubic resize of the shortest edge, centre crop,
rescale to [0, 1], CLIP mean/std), so pixels match what the exported processor produces.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_image_processor_class():
    """transformers' CLIP image processor class that needs no torchvision: `CLIPImageProcessorPil`.

    In transformers 5 the plain `CLIPImageProcessor` name means the torchvision backend; without
    torchvision it falls back to the PIL class and warns on every run. The saved config names
    `CLIPImageProcessor` either way, so exports load with or without torchvision.
    """
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


class BadImageError(ValueError):
    """An image that cannot be decoded; callers count it as a skip."""


@dataclass(frozen=True)
class ClipImageTransform:
    """Deterministic CLIP preprocessing: PIL image or encoded bytes -> float tensor (3, crop, crop)."""

    resize: int = 224
    crop: int = 224
    mean: tuple[float, ...] = field(default=CLIP_MEAN)
    std: tuple[float, ...] = field(default=CLIP_STD)

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "ClipImageTransform":
        """Read size, crop and mean/std from a CLIP/AltCLIP checkpoint's image processor config."""
        return cls.from_processor(clip_image_processor_class().from_pretrained(name_or_path))

    @classmethod
    def from_processor(cls, processor) -> "ClipImageTransform":
        size = processor.size
        resize = (size.get("shortest_edge") or size.get("height")) if hasattr(size, "get") else size
        crop = processor.crop_size
        crop = crop.get("height") if hasattr(crop, "get") else crop  # dict, or transformers 5's SizeDict
        return cls(resize=int(resize), crop=int(crop), mean=tuple(processor.image_mean), std=tuple(processor.image_std))

    def to_processor(self):
        """The CLIP image processor that reproduces this transform, for export next to a model."""
        return clip_image_processor_class()(
            size={"shortest_edge": self.resize},
            crop_size={"height": self.crop, "width": self.crop},
            image_mean=list(self.mean),
            image_std=list(self.std),
            do_convert_rgb=True,
        )

    def fingerprint(self) -> str:
        """Stable hash of the settings; part of every image-embedding cache key."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def __call__(self, image: Image.Image | bytes) -> torch.Tensor:
        if isinstance(image, (bytes, bytearray)):
            image = decode_image(image)
        image = image.convert("RGB")
        width, height = image.size
        scale = self.resize / min(width, height)
        new_size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
        if new_size != image.size:
            image = image.resize(new_size, resample=Image.BICUBIC)
        left = (image.width - self.crop) // 2
        top = (image.height - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def decode_image(data: bytes, name: str = "<bytes>") -> Image.Image:
    """Decode encoded image bytes fully (so truncation shows here), or raise BadImageError."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"cannot decode image {name}: {error}") from error


def load_image_file(path: str | Path) -> Image.Image:
    """Open an image file, raising a one-line error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return decode_image(path.read_bytes(), name=str(path))
