"""Image decoding and the one preprocessing seam: `ImagePreprocessor` wraps a library's own image processor.

Every image path (the phase-2 cache, streaming, eval, the demo, `cache-images`) turns pixels into tensors
through an `ImagePreprocessor` that the teacher adapter (`models/teachers/`) or a saved model dir provides, so
training sees bit for bit what the exported model's processor produces. transformers' image processors run
on their PIL backend (no torchvision); open_clip's `preprocess` comes with its optional extra.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, UnidentifiedImageError


class BadImageError(ValueError):
    """An image that cannot be decoded; callers count it as a skip."""


class ImagePreprocessor:
    """A library's image preprocessing: PIL image or encoded bytes -> float tensor (3, H, W).

    `processor` is the library's object (a transformers image processor, or open_clip's preprocess) and
    `apply` maps one PIL image to its pixels exactly as that library does. `description` (JSON-able) is what
    the image-cache key and the model card record; `save_pretrained` writes the processor next to an exported
    model where the library has a file format for it. Instances pickle, so DataLoader workers can run them.
    """

    def __init__(self, processor: Any, apply: Callable[[Image.Image], torch.Tensor], description: dict,
                 save: Callable[[str | Path], None] | None = None):
        self.processor, self.apply, self.description, self._save = processor, apply, description, save

    def __call__(self, image: Image.Image | bytes) -> torch.Tensor:
        if isinstance(image, (bytes, bytearray)):
            image = decode_image(image)
        return self.apply(image)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the tensors it produces."""
        return tuple(self.description["output_size"])

    def fingerprint(self) -> str:
        """Stable hash of what the preprocessing does; part of every image-embedding cache key."""
        return hashlib.sha256(json.dumps(self.description, sort_keys=True).encode()).hexdigest()[:16]

    # Two preprocessors that do the same thing are the same (eval preprocesses each image set once per kind).
    def __eq__(self, other) -> bool:
        return isinstance(other, ImagePreprocessor) and other.fingerprint() == self.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def save_pretrained(self, output_dir: str | Path) -> None:
        if self._save is None:
            raise ValueError(f"{self.description.get('class')} preprocessing has no file format to save")
        self._save(output_dir)

    @classmethod
    def from_transformers(cls, processor) -> "ImagePreprocessor":
        """Wrap a transformers image processor (its PIL backend needs no torchvision)."""
        settings = processor.to_dict()
        settings.pop("processor_class", None)
        apply = TransformersImages(processor)
        description = {"library": "transformers", "class": type(processor).__name__.removesuffix("Pil"),
                       "settings": json.loads(json.dumps(settings, sort_keys=True, default=str))}
        description["output_size"] = list(apply(Image.new("RGB", (97, 61))).shape[1:])
        return cls(processor, apply, description, save=processor.save_pretrained)

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "ImagePreprocessor":
        """The image processor saved with a transformers checkpoint (`preprocessor_config.json`)."""
        from transformers import AutoImageProcessor

        return cls.from_transformers(AutoImageProcessor.from_pretrained(str(name_or_path), backend="pil"))


    @classmethod
    def from_open_clip(cls, preprocess_cfg: dict) -> "ImagePreprocessor":
        """open_clip's own evaluation transform for `preprocess_cfg` (its `PreprocessCfg` fields: size, mean,
        std, interpolation, resize_mode, fill_color), built by `open_clip.image_transform_v2` (needs the extra).
        Saved, it is the `preprocess_cfg` of an `open_clip_config.json`."""
        settings = json.loads(json.dumps(dict(preprocess_cfg), sort_keys=True))
        apply = OpenClipImages(settings)
        description = {"library": "open_clip", "class": "image_transform_v2", "settings": settings}
        description["output_size"] = list(apply(Image.new("RGB", (97, 61))).shape[1:])
        return cls(settings, apply, description, save=None)


class OpenClipImages:
    """One image through open_clip's evaluation transform, built on first use (so it pickles as settings)."""

    def __init__(self, settings: dict):
        self.settings, self._transform = settings, None

    def __getstate__(self):
        return {"settings": self.settings, "_transform": None}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self._transform is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            fields = {key: tuple(value) if isinstance(value, list) else value
                      for key, value in self.settings.items()}
            self._transform = image_transform_v2(PreprocessCfg(**fields), is_train=False)
        return self._transform(image)


class TransformersImages:
    """One image through a transformers image processor (a class, not a closure, so it pickles)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def clip_preprocessor(size: int) -> ImagePreprocessor:
    """transformers' CLIP preprocessing at `size` (shortest edge and centre crop), for tiny models and tests."""
    from transformers import CLIPImageProcessorPil

    return ImagePreprocessor.from_transformers(CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_convert_rgb=True))


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
