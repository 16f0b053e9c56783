"""The AltCLIP text student: XLM-R, then `pre_LN`, then `transformation`, pooled at `<s>`.

That is exactly `transformers.AltCLIPTextModel`. It is initialised from any XLM-R checkpoint (hub id
or local dir); an existing `AltCLIPTextModel` directory (a phase-1 output) loads as it is.
"""

from __future__ import annotations

import logging
import re

from transformers import AltCLIPTextConfig, AltCLIPTextModel

from altclip_train.models.teacher import load_model_config

log = logging.getLogger(__name__)

# XLM-R names its layers `encoder.layer.N`; transformers 5's AltRoberta names them `encoder.layers.N`.
_XLMR_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")
_SHARED_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
)


class NotAStudentCheckpoint(ValueError):
    """A directory that should hold a phase-1 AltCLIPTextModel but does not."""


def student_config_from_xlmr(xlmr_config, project_dim: int) -> AltCLIPTextConfig:
    fields = {name: getattr(xlmr_config, name) for name in _SHARED_FIELDS if hasattr(xlmr_config, name)}
    return AltCLIPTextConfig(project_dim=project_dim, **fields)


def build_student(name_or_path: str, project_dim: int, trust_remote_code: bool = False) -> AltCLIPTextModel:
    """An AltCLIPTextModel whose encoder carries the XLM-R weights and whose output width is `project_dim`."""
    config = load_model_config(name_or_path, trust_remote_code)
    if config.model_type == "altclip_text_model":
        model = AltCLIPTextModel.from_pretrained(name_or_path)
        if model.config.project_dim != project_dim:
            raise ValueError(f"student {name_or_path} has project_dim {model.config.project_dim}, "
                             f"but the teacher's text width is {project_dim}")
        return model
    if config.model_type not in {"xlm-roberta", "roberta", "xlm-roberta-xl"}:
        raise ValueError(f"student {name_or_path} is a '{config.model_type}' checkpoint; expected XLM-R "
                         "(xlm-roberta) or a phase-1 AltCLIPTextModel")
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False, trust_remote_code=trust_remote_code)
    student = AltCLIPTextModel(student_config_from_xlmr(config, project_dim))
    copy_encoder_weights(encoder.state_dict(), student)
    return student


def copy_encoder_weights(xlmr_state: dict, student: AltCLIPTextModel) -> None:
    """Copy XLM-R encoder weights into `student.roberta`, renaming layers; every weight must land."""
    renamed = {_XLMR_LAYER.sub(r"encoder.layers.\1.", key): value for key, value in xlmr_state.items()
               if not key.startswith("pooler.")}
    target = student.roberta.state_dict()
    missing = sorted(set(target) - set(renamed))
    unexpected = sorted(set(renamed) - set(target))
    if missing or unexpected:
        raise ValueError(f"XLM-R weights do not fit AltCLIPTextModel: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for key, value in renamed.items():
        if value.shape != target[key].shape:
            raise ValueError(f"XLM-R weight {key} has shape {tuple(value.shape)}, expected {tuple(target[key].shape)}")
    student.roberta.load_state_dict(renamed, strict=True)


def load_phase1_student(path: str) -> AltCLIPTextModel:
    """A phase-1 output dir, checked to be one, with a one-line error otherwise."""
    from pathlib import Path

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise NotAStudentCheckpoint(f"{path} is not a phase-1 output: no config.json "
                                    "(expected the final/ dir of `altclip-train distill`)")
    config = load_model_config(path)
    if config.model_type != "altclip_text_model":
        raise NotAStudentCheckpoint(f"{path} is not a phase-1 output: its model_type is "
                                    f"'{config.model_type}', expected 'altclip_text_model'")
    return AltCLIPTextModel.from_pretrained(path)
