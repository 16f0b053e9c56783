"""The SigLIP family: transformers `SiglipModel` (SigLIP, fixed-resolution SigLIP 2) and `Siglip2Model` (NaFlex).

| what                     | how SigLIP's authors do it                                                       |
|--------------------------|----------------------------------------------------------------------------------|
| tokenising               | the checkpoint's tokenizer (lower-cased SentencePiece for SigLIP, Gemma for SigLIP 2) padded to `max_length` (64): the text tower pools the *last position*, so the pad width is part of the target |
| `embedding` target       | `get_text_features`: final-LN state at the last position through the text `head` (the default: SigLIP has no separate projection) |
| `pre_projection` target  | the same state before `head`                                                     |
| image side               | `SiglipVisionModel.pooler_output` (attention-pool head), the checkpoint's `SiglipImageProcessor` |
| phase-2 model            | `AltCLIPSiglipModel` (`models/altclip_siglip.py`), exported with its code file   |
| loss                     | sigmoid, starting from the teacher's own `logit_scale` and `logit_bias`          |

Token ids arrive padded per batch; `SiglipTextTarget` lays them out at the authors' fixed width, on the pad side
the tokenizer uses, and passes an attention mask only when the tokenizer returns one, so a target equals
`model.get_text_features(**tokenizer(texts, padding="max_length", truncation=True))` exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from altclip_train.models.teachers.base import (ImagePreprocessor, Teacher, TextTargetEncoder,
                                                UnsupportedTeacherError, load_model_config, load_weights_strictly)

_OTHER_TOWERS = ("vision_model.", "logit_scale", "logit_bias", "text_model.")


class SiglipTextTarget(TextTargetEncoder):
    def __init__(self, text_model, width: int, pad_id: int, pass_mask: bool, projected: bool, pad_left: bool):
        super().__init__()
        self.text_model, self.width, self.pad_id = text_model, width, pad_id
        self.pass_mask, self.projected, self.pad_left = pass_mask, projected, pad_left

    def fixed_width(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded rows of any width -> the tokenizer's own `padding="max_length"` layout (its pad side)."""
        if input_ids.shape[1] > self.width:
            raise ValueError(f"teacher text of {input_ids.shape[1]} tokens is longer than SigLIP's {self.width}")
        input_ids = nn.functional.pad(input_ids, (0, self.width - input_ids.shape[1]), value=self.pad_id)
        lengths = attention_mask.sum(dim=1, keepdim=True)
        columns = torch.arange(self.width, device=input_ids.device).unsqueeze(0)
        source = columns - (self.width - lengths) if self.pad_left else columns.expand_as(input_ids)
        real = (source >= 0) & (source < lengths)
        ids = torch.where(real, input_ids.gather(1, source.clamp(min=0)), torch.full_like(input_ids, self.pad_id))
        return ids, real.long()

    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = self.fixed_width(input_ids, attention_mask)
        output = self.text_model(input_ids=input_ids, attention_mask=attention_mask if self.pass_mask else None)
        return output.pooler_output if self.projected else output.last_hidden_state[:, -1, :]


class FixedWidthPadding:
    """A tokenizer whose `pad` always pads to SigLIP's fixed width, for code that pads per batch (evaluation)."""

    def __init__(self, tokenizer, width: int):
        self.tokenizer, self.width = tokenizer, width

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def pad(self, encoded, **kwargs):
        kwargs.update(padding="max_length", max_length=self.width)
        return self.tokenizer.pad(encoded, **kwargs)


class SiglipImageSide(nn.Module):
    def __init__(self, vision_model):
        super().__init__()
        self.vision_model = vision_model

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).pooler_output


class SiglipTeacher(Teacher):
    family = "siglip"
    handles = ("siglip", "siglip2")

    def __init__(self, source: str, distill_target: str | None = None, trust_remote_code: bool = False):
        super().__init__(source, distill_target, trust_remote_code)
        self.config = load_model_config(source, trust_remote_code)

    @classmethod
    def claims(cls, source: str, config) -> bool:
        return config is not None and config.model_type in cls.handles

    @property
    def is_naflex(self) -> bool:
        return self.config.model_type == "siglip2"

    def _classes(self):
        import transformers

        prefix = "Siglip2" if self.is_naflex else "Siglip"
        return getattr(transformers, f"{prefix}TextModel"), getattr(transformers, f"{prefix}Model")

    # ------------------------------------------------------------ text side
    @property
    def default_distill_target(self) -> str:
        return "embedding"

    @property
    def text_dim(self) -> int:
        text = self.config.text_config
        return int(text.hidden_size if self.distill_target == "pre_projection"
                   else (text.projection_size or text.hidden_size))

    def text_tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.source, trust_remote_code=self.trust_remote_code)
        if tokenizer.pad_token_id is None:
            raise UnsupportedTeacherError(f"teacher {self.source}: its tokenizer has no pad token, and SigLIP's "
                                          f"text tower is read at a fixed padded width")
        return tokenizer

    @property
    def text_max_length(self) -> int:
        return int(self.config.text_config.max_position_embeddings)

    def eval_tokenizer(self):
        return FixedWidthPadding(self.text_tokenizer(), self.text_max_length)

    def load_text_encoder(self, device="cpu") -> TextTargetEncoder:
        text_class, _ = self._classes()
        tokenizer = self.text_tokenizer()
        model = load_weights_strictly(text_class, self.source,
                                      unexpected_ok=lambda key: key.startswith(("vision_model.", "logit_")),
                                      trust_remote_code=self.trust_remote_code)
        return SiglipTextTarget(model, self.text_max_length, tokenizer.pad_token_id,
                                pass_mask="attention_mask" in tokenizer.model_input_names,
                                projected=self.distill_target == "embedding",
                                pad_left=tokenizer.padding_side == "left").to(device).eval()

    # ------------------------------------------------------------ image side
    def _fixed_resolution(self) -> None:
        if self.is_naflex:
            raise UnsupportedTeacherError(
                f"teacher {self.source}: SigLIP 2 NaFlex (Siglip2Model) reads images as variable-size patch "
                f"sequences, which phase 2 does not cache yet; phase 1 works, or use a fixed-resolution SigLIP 2 "
                f"checkpoint (model_type siglip, e.g. google/siglip2-base-patch16-224)")

    def image_processor(self) -> ImagePreprocessor:
        self._fixed_resolution()
        return ImagePreprocessor.from_pretrained(self.source)

    @property
    def image_dim(self) -> int:
        return int(self.config.vision_config.hidden_size)

    def load_image_encoder(self, device="cpu") -> nn.Module:
        from transformers import SiglipVisionModel

        self._fixed_resolution()
        model = load_weights_strictly(SiglipVisionModel, self.source,
                                      unexpected_ok=lambda key: key.startswith(("text_model.", "logit_")),
                                      trust_remote_code=self.trust_remote_code)
        return SiglipImageSide(model).to(device).eval()

    # ------------------------------------------------------------ phase 2
    def _full_model(self):
        _, model_class = self._classes()
        return load_weights_strictly(model_class, self.source, trust_remote_code=self.trust_remote_code)

    @property
    def contrastive_loss(self) -> tuple[str, dict]:
        return "sigmoid", {}

    def build_contrastive_model(self, student: str) -> nn.Module:
        from altclip_train.models.altclip_siglip import AltCLIPSiglipConfig, AltCLIPSiglipModel
        from altclip_train.models.student import load_phase1_student

        self._fixed_resolution()
        text_model = load_phase1_student(student)
        if text_model.config.project_dim != self.text_dim:
            raise UnsupportedTeacherError(
                f"teacher {self.source} has a {self.distill_target} text width of {self.text_dim} but student "
                f"{student} has project_dim {text_model.config.project_dim}; distil against this teacher and "
                f"target first")
        teacher = self._full_model()
        text_config = {k: v for k, v in text_model.config.to_dict().items() if k not in ("auto_map", "altclip_train")}
        head = teacher.text_model.head
        config = AltCLIPSiglipConfig(text_config=text_config, vision_config=teacher.config.vision_config.to_dict(),
                                     projection_dim=head.out_features)
        model = AltCLIPSiglipModel(config)
        model.text_model.load_state_dict(text_model.state_dict())
        model.vision_model.load_state_dict(teacher.vision_model.state_dict())
        with torch.no_grad():
            if self.distill_target == "pre_projection":
                model.text_projection.load_state_dict(head.state_dict())
            else:
                model.text_projection.weight.copy_(torch.eye(*model.text_projection.weight.shape))
                model.text_projection.bias.zero_()
            model.logit_scale.copy_(teacher.logit_scale.reshape(()))
            model.logit_bias.copy_(teacher.logit_bias.reshape(()))
        return model

    def load_contrastive_model(self, model_dir: str) -> nn.Module:
        from altclip_train.models.altclip_siglip import AltCLIPSiglipModel

        self._fixed_resolution()
        return load_weights_strictly(AltCLIPSiglipModel, model_dir).train().requires_grad_(True)

    def save_contrastive_model(self, model: nn.Module, output_dir: Path, tokenizer) -> None:
        """`save_pretrained` plus the model's code file and `auto_map`, so plain transformers loads it."""
        from altclip_train.models import altclip_siglip

        model.save_pretrained(output_dir, safe_serialization=True)
        shutil.copyfile(altclip_siglip.__file__, output_dir / "modeling_altclip_siglip.py")
        config_path = output_dir / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["auto_map"] = {"AutoConfig": "modeling_altclip_siglip.AltCLIPSiglipConfig",
                              "AutoModel": "modeling_altclip_siglip.AltCLIPSiglipModel",
                              "AutoModelForZeroShotImageClassification": "modeling_altclip_siglip.AltCLIPSiglipModel"}
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(output_dir)
        self.image_processor().save_pretrained(output_dir)
