"""Build the phase-2 model from a teacher and a phase-1 student, whatever the teacher's family.

The teacher adapter (`models/teachers/`) decides the model: `transformers.AltCLIPModel` for CLIP teachers,
`AltCLIPSiglipModel` for SigLIP ones. Which target the student was distilled to (`pre_projection` or
`embedding`) is read from the student's config, where phase 1 records it, so the text projection fits.
A phase-2 model given as the student (BAAI/AltCLIP-m9, an earlier run's `final/`) is continued whole instead.
Also builds plain CLIP models (random init from a config) for the demo's from-scratch teacher.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel

from altclip_train.models.student import config_model_type, load_phase1_student
from altclip_train.models.teachers import UnsupportedTeacherError, load_teacher

log = logging.getLogger(__name__)


def student_distill_target(student: str) -> str | None:
    """The target phase 1 recorded in the student's config (None for students from before it did)."""
    record = getattr(load_phase1_student(student).config, "altclip_train", None) or {}
    return record.get("distill_target")


# Phase-2 models a new phase-2 run continues as a whole (BAAI/AltCLIP-m9, or an earlier run's final/).
PHASE2_MODEL_TYPES = ("altclip", "altclip_siglip")


def assemble(teacher: str, student: str, distill_target: str | None = None, trust_remote_code: bool = False) -> nn.Module:
    """The teacher's image side, projections and logit scale (and bias) + the phase-1 student as text tower.

    `student` may also be a phase-2 model (an `AltCLIPModel` such as BAAI/AltCLIP-m9, or an earlier run's
    `final/`): the run then continues that model whole, its trained text projection and logit scale included,
    once its image side is checked to be the teacher's (phase 2 freezes and caches the teacher's)."""
    if phase2_model_type(student, trust_remote_code) in PHASE2_MODEL_TYPES:
        return continue_contrastive_model(teacher, student, trust_remote_code)
    recorded = student_distill_target(student)
    if distill_target is not None and recorded is not None and distill_target != recorded:
        raise UnsupportedTeacherError(f"model.distill_target={distill_target} but student {student} was distilled "
                                      f"to {recorded}")
    adapter = load_teacher(teacher, distill_target or recorded, trust_remote_code)
    return adapter.build_contrastive_model(student)


def phase2_model_type(name_or_path: str, trust_remote_code: bool = False) -> str | None:
    """The model_type of `name_or_path`, or None where it has no readable config (phase 1's loader then says
    in one line what it expected)."""
    try:
        return config_model_type(name_or_path, trust_remote_code)
    except (OSError, ValueError):
        return None


def continue_contrastive_model(teacher: str, model_dir: str, trust_remote_code: bool = False) -> nn.Module:
    """An earlier phase-2 model, whole, refused in one line if its image side is not `teacher`'s."""
    adapter = load_teacher(teacher, None, trust_remote_code)
    model = adapter.load_contrastive_model(model_dir)
    height, width = adapter.image_processor().image_size
    pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = adapter.load_image_encoder()(pixels)
        got = model.get_image_features(pixel_values=pixels).pooler_output
    if expected.shape != got.shape or not torch.allclose(expected, got, atol=1e-4, rtol=1e-4):
        raise UnsupportedTeacherError(
            f"model.model.student={model_dir}: its image side is not teacher {teacher}'s, whose frozen vectors phase "
            f"2 caches; name the model itself as the teacher (model.model.teacher={model_dir}) to keep its image side")
    log.info("phase 2 continues %s whole (text tower, text projection, logit scale)", model_dir)
    return model


def clip_from_config(config: str, seed: int = 0) -> CLIPModel:
    """A randomly initialised CLIPModel from a config.json (file or dir) - e.g. the demo's teacher."""
    path = Path(config)
    clip_config = CLIPConfig.from_pretrained(path if path.is_dir() else path.parent) if path.exists() else None
    if clip_config is None:
        raise FileNotFoundError(f"CLIP config not found: {config}")
    torch.manual_seed(seed)
    return CLIPModel(clip_config)


def save_assembled(teacher: str, student: str, output_dir: str | Path) -> Path:
    """Phase 1 + its teacher as a loadable phase-2 model dir (what phase 2 starts from), for evaluation."""
    from transformers import AutoTokenizer

    output_dir = Path(output_dir)
    adapter = load_teacher(teacher, student_distill_target(student))
    adapter.save_contrastive_model(adapter.build_contrastive_model(student), output_dir,
                                   AutoTokenizer.from_pretrained(student))
    return output_dir
