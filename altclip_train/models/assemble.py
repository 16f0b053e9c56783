"""Build the phase-2 model: `transformers.AltCLIPModel` from a teacher CLIP and a phase-1 student.

From the teacher come the vision tower (its config copied, so ViT-L/14 stays ViT-L/14),
`visual_projection`, `text_projection` and `logit_scale`; from phase 1 comes the text tower. Also
builds plain CLIP models (random init from a config) for the two-tower case.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AltCLIPConfig, AltCLIPModel, CLIPConfig, CLIPModel

from altclip_train.models.student import load_phase1_student


def assemble_altclip(teacher: str, student: str, trust_remote_code: bool = False) -> AltCLIPModel:
    """AltCLIPModel = teacher's image side + projections + logit_scale, phase-1 student as text tower."""
    text_model = load_phase1_student(student)
    clip = CLIPModel.from_pretrained(teacher, trust_remote_code=trust_remote_code)
    teacher_text_dim = clip.config.text_config.hidden_size
    if text_model.config.project_dim != teacher_text_dim:
        raise ValueError(f"teacher {teacher} has text width {teacher_text_dim} but student {student} has "
                         f"project_dim {text_model.config.project_dim}; distil against this teacher first")
    # Phase 1's auto_map points at a file that only sits next to phase 1's weights; the AltCLIPModel needs none.
    text_config = {k: v for k, v in text_model.config.to_dict().items() if k != "auto_map"}
    config = AltCLIPConfig(text_config=text_config, vision_config=clip.config.vision_config.to_dict(),
                           projection_dim=clip.config.projection_dim,
                           logit_scale_init_value=clip.config.logit_scale_init_value)
    model = AltCLIPModel(config)
    model.text_model.load_state_dict(text_model.state_dict())
    model.vision_model.load_state_dict(clip.vision_model.state_dict())
    model.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    model.text_projection.load_state_dict(clip.text_projection.state_dict())
    with torch.no_grad():
        model.logit_scale.copy_(clip.logit_scale)
    return model


def clip_from_config(config: str, seed: int = 0) -> CLIPModel:
    """A randomly initialised CLIPModel from a config.json (file or dir) - e.g. the demo's teacher."""
    path = Path(config)
    clip_config = CLIPConfig.from_pretrained(path if path.is_dir() else path.parent) if path.exists() else None
    if clip_config is None:
        raise FileNotFoundError(f"CLIP config not found: {config}")
    torch.manual_seed(seed)
    return CLIPModel(clip_config)


def build_processor(model_type: str, tokenizer: str, image_processor: str):
    """AltCLIPProcessor (XLM-R tokenizer + CLIP image processor) or CLIPProcessor."""
    from transformers import AltCLIPProcessor, AutoTokenizer, CLIPProcessor

    from altclip_train.data.images import clip_image_processor_class

    processor_class = AltCLIPProcessor if model_type == "altclip" else CLIPProcessor
    return processor_class(image_processor=clip_image_processor_class().from_pretrained(image_processor),
                           tokenizer=AutoTokenizer.from_pretrained(tokenizer))


def save_assembled_altclip(teacher: str, student: str, output_dir: str | Path) -> Path:
    """Phase 1 + its teacher as a loadable AltCLIPModel dir (what phase 2 starts from), for evaluation."""
    output_dir = Path(output_dir)
    assemble_altclip(teacher, student).save_pretrained(output_dir, safe_serialization=True)
    build_processor("altclip", tokenizer=student, image_processor=teacher).save_pretrained(output_dir)
    return output_dir
