"""The CLIP family: transformers `CLIPModel` checkpoints (OpenAI, and the LAION / DFN / MetaCLIP ports).

| what                     | how CLIP's authors do it                                                         |
|--------------------------|----------------------------------------------------------------------------------|
| tokenising               | the checkpoint's CLIP BPE tokenizer, `<|startoftext|> ... <|endoftext|>`, 77 tokens; padding is irrelevant (causal mask, end-of-text pooling) |
| `pre_projection` target  | `CLIPTextModel(...).pooler_output`: final-LN state at the end-of-text token (AltCLIP's choice, the default) |
| `embedding` target       | `CLIPModel.get_text_features`: the same state through `text_projection`          |
| image side               | `CLIPVisionModelWithProjection.image_embeds`, the checkpoint's `CLIPImageProcessor` |
| phase-2 model            | `transformers.AltCLIPModel`: the teacher's vision tower, `visual_projection`, `text_projection`, `logit_scale` |
| loss                     | InfoNCE (`clip`)                                                                 |

An exported `AltCLIPModel` dir is also read here, for its image side only (evaluation, continued training).
"""

from __future__ import annotations

import torch
from torch import nn

from altclip_train.models.teachers.base import (ImagePreprocessor, Teacher, TextTargetEncoder,
                                                UnsupportedTeacherError, load_model_config, load_weights_strictly)


class ClipTextTarget(TextTargetEncoder):
    def __init__(self, model, projected: bool):
        super().__init__()
        self.model, self.projected = model, projected

    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.model.text_projection(pooled) if self.projected else pooled


class ImageFeatures(nn.Module):
    """`model.get_image_features(pixel_values)` as a module: the projected image embedding."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixel_values)
        return output.image_embeds if hasattr(output, "image_embeds") else output.pooler_output


class ClipTeacher(Teacher):
    family = "clip"
    handles = ("clip", "altclip")

    def __init__(self, source: str, distill_target: str | None = None, trust_remote_code: bool = False):
        super().__init__(source, distill_target, trust_remote_code)
        self.config = load_model_config(source, trust_remote_code)

    @classmethod
    def claims(cls, source: str, config) -> bool:
        return config is not None and config.model_type in cls.handles

    @property
    def is_student_export(self) -> bool:
        return self.config.model_type == "altclip"

    def _text_side(self):
        if self.is_student_export:
            raise UnsupportedTeacherError(f"{self.source} is an AltCLIPModel (a trained student); distil from the "
                                          f"CLIP teacher it came from, or use it as model.student to continue")
        return self.config.text_config

    # ------------------------------------------------------------ text side
    @property
    def default_distill_target(self) -> str:
        return "pre_projection"

    @property
    def text_dim(self) -> int:
        text_config = self._text_side()
        return int(text_config.hidden_size if self.distill_target == "pre_projection" else self.config.projection_dim)

    def text_tokenizer(self):
        from transformers import AutoTokenizer

        self._text_side()
        return AutoTokenizer.from_pretrained(self.source, trust_remote_code=self.trust_remote_code)

    @property
    def text_max_length(self) -> int:
        return int(self._text_side().max_position_embeddings)

    def load_text_encoder(self, device="cpu") -> TextTargetEncoder:
        from transformers import CLIPTextModelWithProjection

        self._text_side()
        model = load_weights_strictly(CLIPTextModelWithProjection, self.source,
                                      unexpected_ok=lambda key: key.startswith(("vision_model.", "visual_projection.",
                                                                                "logit_scale")),
                                      trust_remote_code=self.trust_remote_code, attn_implementation="sdpa")
        return ClipTextTarget(model, projected=self.distill_target == "embedding").to(device).eval()

    # ------------------------------------------------------------ image side
    def image_processor(self) -> ImagePreprocessor:
        return ImagePreprocessor.from_pretrained(self.source)

    @property
    def image_dim(self) -> int:
        return int(self.config.projection_dim)

    def load_image_encoder(self, device="cpu") -> nn.Module:
        if self.is_student_export:
            from transformers import AltCLIPModel

            model = load_weights_strictly(AltCLIPModel, self.source)
            return _AltclipImageSide(model).to(device).eval()
        from transformers import CLIPVisionModelWithProjection

        model = load_weights_strictly(CLIPVisionModelWithProjection, self.source,
                                      unexpected_ok=lambda key: key.startswith(("text_model.", "text_projection.",
                                                                                "logit_scale")),
                                      trust_remote_code=self.trust_remote_code, attn_implementation="sdpa")
        return ImageFeatures(model).to(device).eval()

    # ------------------------------------------------------------ phase 2
    @property
    def contrastive_loss(self) -> tuple[str, dict]:
        return "clip", {}

    def build_contrastive_model(self, student: str) -> nn.Module:
        """AltCLIPModel = teacher's image side, projections and logit_scale + the phase-1 student as text tower.

        A student distilled to the `embedding` target already speaks the projected space, so its
        `text_projection` starts as the identity instead of the teacher's.
        """
        from transformers import AltCLIPConfig, AltCLIPModel, CLIPModel

        from altclip_train.models.student import load_phase1_student

        text_model = load_phase1_student(student)
        self._text_side()
        if text_model.config.project_dim != self.text_dim:
            raise UnsupportedTeacherError(
                f"teacher {self.source} has a {self.distill_target} text width of {self.text_dim} but student "
                f"{student} has project_dim {text_model.config.project_dim}; distil against this teacher and "
                f"target first")
        clip = load_weights_strictly(CLIPModel, self.source, trust_remote_code=self.trust_remote_code)
        # Phase 1's auto_map points at a file that only sits next to phase 1's weights; the AltCLIPModel needs none.
        text_config = {k: v for k, v in text_model.config.to_dict().items() if k not in ("auto_map", "altclip_train")}
        config = AltCLIPConfig(text_config=text_config, vision_config=clip.config.vision_config.to_dict(),
                               projection_dim=clip.config.projection_dim,
                               logit_scale_init_value=clip.config.logit_scale_init_value)
        model = AltCLIPModel(config)
        model.text_model.load_state_dict(text_model.state_dict())
        model.vision_model.load_state_dict(clip.vision_model.state_dict())
        model.visual_projection.load_state_dict(clip.visual_projection.state_dict())
        with torch.no_grad():
            if self.distill_target == "pre_projection":
                model.text_projection.load_state_dict(clip.text_projection.state_dict())
            else:
                model.text_projection.weight.copy_(torch.eye(*model.text_projection.weight.shape))
            model.logit_scale.copy_(clip.logit_scale)
        return model

    def load_contrastive_model(self, model_dir: str) -> nn.Module:
        from transformers import AltCLIPModel

        return load_weights_strictly(AltCLIPModel, model_dir).train().requires_grad_(True)

    def save_contrastive_model(self, model: nn.Module, output_dir, tokenizer) -> None:
        """The AltCLIPModel with an `AltCLIPProcessor` (XLM-R tokenizer + this CLIP's image processor)."""
        from transformers import AltCLIPProcessor

        model.save_pretrained(output_dir, safe_serialization=True)
        AltCLIPProcessor(image_processor=self.image_processor().processor, tokenizer=tokenizer).save_pretrained(
            output_dir)


class _AltclipImageSide(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output
