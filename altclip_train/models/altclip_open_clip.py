"""`AltCLIPOpenClipModel`: the phase-2 model for open_clip teachers (LAION, DFN, MetaCLIP, EVA, open_clip SigLIP).

| part              | what                                                                              |
|-------------------|-----------------------------------------------------------------------------------|
| `vision_model`    | the teacher's open_clip `visual` (its projection included), frozen in phase 2     |
| `text_model`      | the phase-1 `AltCLIPTextModel`                                                    |
| `text_projection` | the teacher's text projection (`pre_projection` students), else the identity      |
| `logit_scale`, `logit_bias` | the teacher's (the bias only for sigmoid-trained teachers)              |

It answers `get_text_features` / `get_image_features` as transformers' two-tower models do, so the contrastive
task and evaluation use it unchanged, and it is saved in open_clip's own format (`models/open_clip_format.py`),
which `open_clip.create_model_and_transforms("local-dir:DIR")` loads. Building it needs the open_clip extra.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AltCLIPTextConfig, AltCLIPTextModel
from transformers.modeling_outputs import BaseModelOutputWithPooling


@dataclass
class AltCLIPOpenClipConfig:
    open_clip_model_cfg: dict
    preprocess_cfg: dict
    text_config: dict
    projection_bias: bool = False
    teacher: str | None = None
    logit_bias: float | None = None  # the task's own sigmoid bias, for a teacher without one
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def embed_dim(self) -> int:
        return int(self.open_clip_model_cfg["embed_dim"])

    @property
    def has_logit_bias(self) -> bool:
        return self.open_clip_model_cfg.get("init_logit_bias") is not None


def build_visual(model_cfg: dict) -> nn.Module:
    """A randomly initialised open_clip `visual` for `model_cfg` (weights are loaded over it)."""
    from open_clip.model import _build_vision_tower  # open_clip's own builder: the tower its configs describe

    return _build_vision_tower(int(model_cfg["embed_dim"]), model_cfg["vision_cfg"],
                               quick_gelu=bool(model_cfg.get("quick_gelu", False)))


class AltCLIPOpenClipModel(nn.Module):
    def __init__(self, config: AltCLIPOpenClipConfig):
        super().__init__()
        self.config = config
        self.vision_model = build_visual(config.open_clip_model_cfg)
        text_config = AltCLIPTextConfig(**config.text_config)
        self.text_model = AltCLIPTextModel(text_config)
        self.text_projection = nn.Linear(text_config.project_dim, config.embed_dim, bias=config.projection_bias)
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))
        if config.has_logit_bias:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.open_clip_model_cfg["init_logit_bias"])))

    @classmethod
    def from_parts(cls, *, open_clip_model_cfg: dict, preprocess_cfg: dict, visual: nn.Module,
                   text_model: AltCLIPTextModel, text_projection: tuple[torch.Tensor, torch.Tensor | None] | None,
                   logit_scale: torch.Tensor, logit_bias: torch.Tensor | None, teacher: str | None
                   ) -> "AltCLIPOpenClipModel":
        """Teacher parts + phase-1 student; `text_projection` None means the student already predicts the
        teacher's embedding (`embedding` target), so the projection starts as the identity."""
        text_config = {k: v for k, v in text_model.config.to_dict().items() if k not in ("auto_map", "altclip_train")}
        projection_bias = text_projection is not None and text_projection[1] is not None
        model_cfg = dict(open_clip_model_cfg)
        if logit_bias is not None:
            model_cfg["init_logit_bias"] = float(logit_bias.reshape(()))
        model = cls(AltCLIPOpenClipConfig(model_cfg, dict(preprocess_cfg), text_config, projection_bias, teacher))
        model.vision_model.load_state_dict(visual.state_dict())
        model.text_model.load_state_dict(text_model.state_dict())
        with torch.no_grad():
            if text_projection is None:
                if text_model.config.project_dim != model.config.embed_dim:
                    raise ValueError(f"an embedding-target student has width {text_model.config.project_dim}, "
                                     f"the teacher's embedding {model.config.embed_dim}")
                model.text_projection.weight.copy_(torch.eye(model.config.embed_dim))
            else:
                model.text_projection.weight.copy_(text_projection[0])
                if projection_bias:
                    model.text_projection.bias.copy_(text_projection[1])
            model.logit_scale.copy_(logit_scale.detach().reshape(()))
            if logit_bias is not None:
                model.logit_bias.copy_(logit_bias.detach().reshape(()))
        return model

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_
                          ) -> BaseModelOutputWithPooling:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return BaseModelOutputWithPooling(pooler_output=self.text_projection(pooled))

    def get_image_features(self, pixel_values: torch.Tensor, **_) -> BaseModelOutputWithPooling:
        return BaseModelOutputWithPooling(pooler_output=self.vision_model(pixel_values))

    def save_open_clip(self, output_dir: str | Path, tokenizer) -> Path:
        from altclip_train.models.open_clip_format import text_context_length, write_open_clip_dir

        model_cfg = self.config.open_clip_model_cfg
        extra = {key: value for key, value in model_cfg.items()
                 if key not in ("embed_dim", "vision_cfg", "text_cfg", "init_logit_bias", "custom_text")}
        bias = getattr(self, "logit_bias", None)
        if bias is None and self.config.logit_bias is not None:
            bias = torch.tensor(float(self.config.logit_bias))
        projection_bias = self.text_projection.bias
        return write_open_clip_dir(
            output_dir, embed_dim=self.config.embed_dim, vision_cfg=model_cfg["vision_cfg"],
            visual_state=self.vision_model.state_dict(), text_model=self.text_model,
            projection_weight=self.text_projection.weight, projection_bias=projection_bias,
            logit_scale=self.logit_scale, logit_bias=bias, preprocess_cfg=self.config.preprocess_cfg,
            tokenizer=tokenizer, context_length=text_context_length(self.text_model.config),
            extra_model_cfg=extra, provenance={"teacher": self.config.teacher, "family": "open_clip"})
