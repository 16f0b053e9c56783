"""Build the phase-2 model from a teacher and a phase-1 student, whatever the teacher's family.

The teacher adapter (`models/teachers/`) decides the model: `transformers.AltCLIPModel` for CLIP teachers,
`AltCLIPSiglipModel` for SigLIP ones. Which target the student was distilled to (`pre_projection` or
`embedding`) is read from the student's config, where phase 1 records it, so the text projection fits.
Also builds plain CLIP models (random init from a config) for the demo's from-scratch teacher.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel

from altclip_train.models.student import load_phase1_student
from altclip_train.models.teachers import UnsupportedTeacherError, load_teacher


def student_distill_target(student: str) -> str | None:
    """The target phase 1 recorded in the student's config (None for students from before it did)."""
    record = getattr(load_phase1_student(student).config, "altclip_train", None) or {}
    return record.get("distill_target")


def assemble(teacher: str, student: str, distill_target: str | None = None, trust_remote_code: bool = False) -> nn.Module:
    """The teacher's image side, projections and logit scale (and bias) + the phase-1 student as text tower."""
    recorded = student_distill_target(student)
    if distill_target is not None and recorded is not None and distill_target != recorded:
        raise UnsupportedTeacherError(f"model.distill_target={distill_target} but student {student} was distilled "
                                      f"to {recorded}")
    adapter = load_teacher(teacher, distill_target or recorded, trust_remote_code)
    return adapter.build_contrastive_model(student)


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
