"""AltCLIP-SigLIP: a SigLIP teacher's frozen image tower beside an XLM-R (`AltCLIPTextModel`) text tower.

The phase-2 model for SigLIP teachers, and the file an export ships as `modeling_altclip_siglip.py`: it imports
only torch and transformers, so `AutoModel.from_pretrained(DIR, trust_remote_code=True)` and
`pipeline("zero-shot-image-classification", model=DIR, trust_remote_code=True)` load it with plain transformers.
The model_type contains "siglip", so the pipeline scores labels with a sigmoid and pads text to 64 tokens,
as it does for SigLIP itself.

| part              | from                                                                        |
|-------------------|-----------------------------------------------------------------------------|
| `vision_model`    | the teacher's `SiglipVisionModel` (attention-pool head included): its pooled output is SigLIP's image embedding |
| `text_model`      | the phase-1 `AltCLIPTextModel`                                              |
| `text_projection` | Linear(project_dim -> embedding): the teacher's text `head` for a `pre_projection` student, the identity for an `embedding` one |
| `logit_scale`, `logit_bias` | the teacher's                                                     |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AltCLIPTextConfig, AltCLIPTextModel, PreTrainedConfig, PreTrainedModel, SiglipVisionConfig
from transformers import SiglipVisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput


class AltCLIPSiglipConfig(PreTrainedConfig):
    model_type = "altclip_siglip"
    sub_configs_defaults = {"text_config": AltCLIPTextConfig, "vision_config": SiglipVisionConfig}
    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 768


@dataclass
class AltCLIPSiglipOutput(ModelOutput):
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None


class AltCLIPSiglipModel(PreTrainedModel):
    config_class = AltCLIPSiglipConfig
    config: AltCLIPSiglipConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: AltCLIPSiglipConfig):
        super().__init__(config)
        self.text_model = AltCLIPTextModel(config.text_config)
        self.vision_model = SiglipVisionModel(config.vision_config)
        self.text_projection = nn.Linear(config.text_config.project_dim, config.projection_dim)
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.logit_bias = nn.Parameter(torch.zeros(()))
        self.post_init()

    def _init_weights(self, module):
        # Every weight comes from the teacher and phase 1; nothing here is trained from scratch.
        pass

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          **kwargs) -> BaseModelOutputWithPooling:
        output = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return BaseModelOutputWithPooling(last_hidden_state=output.last_hidden_state,
                                          pooler_output=self.text_projection(output.pooler_output))

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        output = self.vision_model(pixel_values=pixel_values, return_dict=True)
        return BaseModelOutputWithPooling(last_hidden_state=output.last_hidden_state,
                                          pooler_output=output.pooler_output)

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs) -> AltCLIPSiglipOutput:
        text = F.normalize(self.get_text_features(input_ids, attention_mask).pooler_output, dim=-1)
        image = F.normalize(self.get_image_features(pixel_values).pooler_output, dim=-1)
        logits_per_text = text @ image.t() * self.logit_scale.exp() + self.logit_bias
        return AltCLIPSiglipOutput(logits_per_image=logits_per_text.t(), logits_per_text=logits_per_text,
                                   text_embeds=text, image_embeds=image)


__all__ = ["AltCLIPSiglipConfig", "AltCLIPSiglipModel"]
