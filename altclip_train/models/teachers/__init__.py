"""Teacher families behind one protocol (`base.Teacher`); `load_teacher` picks the family from the checkpoint.

| family      | checkpoints                                                        | file          |
|-------------|--------------------------------------------------------------------|---------------|
| `clip`      | transformers `CLIPModel` (OpenAI, LAION/DFN/MetaCLIP ports)        | `clip.py`     |
| `siglip`    | transformers `SiglipModel`, `Siglip2Model`                         | `siglip.py`   |
| `open_clip` | `open_clip:MODEL` (+ `pretrained` file), `hf-hub:ORG/NAME`, or a dir with `open_clip_config.json` | `open_clip.py` |

A new family is one file with a `Teacher` subclass, listed in `FAMILIES`. An unknown checkpoint is refused
in one line naming its `model_type` and the supported ones; its weights are never loaded into a foreign class.
"""

from __future__ import annotations

from altclip_train.models.teachers.base import (DISTILL_TARGETS, Teacher, TextTargetEncoder,
                                                UnsupportedTeacherError, load_model_config, model_fingerprint)
from altclip_train.models.teachers.clip import ClipTeacher
from altclip_train.models.teachers.open_clip import OpenClipTeacher
from altclip_train.models.teachers.siglip import SiglipTeacher

FAMILIES: tuple[type[Teacher], ...] = (ClipTeacher, SiglipTeacher, OpenClipTeacher)

__all__ = ["DISTILL_TARGETS", "FAMILIES", "Teacher", "TextTargetEncoder", "UnsupportedTeacherError",
           "image_preprocessor", "load_model_config", "load_teacher", "model_fingerprint", "teacher_family"]


def _read_config(source: str, trust_remote_code: bool):
    """The transformers config of `source`, or None for a checkpoint that has none (e.g. open_clip's)."""
    if OpenClipTeacher.is_open_clip_name(source):
        return None
    try:
        return load_model_config(source, trust_remote_code)
    except (OSError, ValueError) as error:
        raise UnsupportedTeacherError(f"teacher {source}: cannot read its config.json "
                                      f"({str(error).strip().splitlines()[0]})") from None


def teacher_family(source: str, trust_remote_code: bool = False) -> type[Teacher]:
    """The family class that reads `source`, or a one-line `UnsupportedTeacherError`."""
    config = _read_config(source, trust_remote_code)
    for family in FAMILIES:
        if family.claims(source, config):
            return family
    supported = ", ".join(f"{family.family} ({'/'.join(family.handles)})" for family in FAMILIES)
    model_type = getattr(config, "model_type", None)
    raise UnsupportedTeacherError(f"teacher {source}: model_type {model_type!r} belongs to no supported teacher "
                                  f"family; supported: {supported}")


def load_teacher(source: str, distill_target: str | None = None, trust_remote_code: bool = False) -> Teacher:
    """The adapter for `source` (cheap: configs only; weights load on `load_text_encoder`/`load_image_encoder`)."""
    return teacher_family(str(source), trust_remote_code)(str(source), distill_target, trust_remote_code)


def image_preprocessor(source: str, trust_remote_code: bool = False):
    """The preprocessing that belongs to `source`: its family's own for a teacher (or a phase-2 export of one),
    else the image processor saved in the dir (`preprocessor_config.json`)."""
    from altclip_train.data.images import ImagePreprocessor

    config = None if OpenClipTeacher.is_open_clip_name(source) else _optional_config(source, trust_remote_code)
    for family in FAMILIES:
        if family.claims(str(source), config):
            return family(str(source), None, trust_remote_code).image_processor()
    return ImagePreprocessor.from_pretrained(str(source))


def _optional_config(source: str, trust_remote_code: bool):
    try:
        return load_model_config(source, trust_remote_code)
    except (OSError, ValueError):
        return None  # a processor-only dir
