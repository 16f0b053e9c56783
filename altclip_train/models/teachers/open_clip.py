"""The open_clip family: `open_clip:MODEL` (with a local `pretrained` file), `hf-hub:ORG/NAME`, or a local dir
holding `open_clip_config.json` (LAION, DFN, MetaCLIP, EVA checkpoints as open_clip ships them).

open_clip needs torchvision, so it is an optional extra (`pip install altclip-train[open_clip]`); this module
imports it only when such a teacher is used, and says how to install it when it is missing.
"""

from __future__ import annotations

from pathlib import Path

from altclip_train.models.teachers.base import Teacher, UnsupportedTeacherError

OPEN_CLIP_PREFIXES = ("open_clip:", "hf-hub:")


def import_open_clip():
    try:
        import open_clip
    except ImportError as error:
        raise UnsupportedTeacherError(f"open_clip teachers need the open_clip extra "
                                      f"(pip install 'altclip-train[open_clip]'): {error}") from None
    return open_clip


class OpenClipTeacher(Teacher):
    family = "open_clip"
    handles = ("open_clip:MODEL", "hf-hub:ORG/NAME", "dir with open_clip_config.json")

    @staticmethod
    def is_open_clip_name(source: str) -> bool:
        source = str(source)
        return source.startswith(OPEN_CLIP_PREFIXES) or (
            Path(source).is_dir() and (Path(source) / "open_clip_config.json").is_file()
            and not (Path(source) / "config.json").is_file())

    @classmethod
    def claims(cls, source: str, config) -> bool:
        return cls.is_open_clip_name(source)

    def __init__(self, source: str, distill_target: str | None = None, trust_remote_code: bool = False):
        super().__init__(source, distill_target, trust_remote_code)
        import_open_clip()
        raise UnsupportedTeacherError(f"teacher {source}: the open_clip family is not implemented yet")

    # The protocol's methods follow once the adapter lands.
    default_distill_target = "pre_projection"
    text_dim = image_dim = text_max_length = None
    contrastive_loss = ("clip", {})

    def text_tokenizer(self):
        raise NotImplementedError

    def load_text_encoder(self, device="cpu"):
        raise NotImplementedError

    def image_processor(self):
        raise NotImplementedError

    def load_image_encoder(self, device="cpu"):
        raise NotImplementedError

    def build_contrastive_model(self, student: str):
        raise NotImplementedError
