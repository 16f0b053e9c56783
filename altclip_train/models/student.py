"""The AltCLIP text student: XLM-R, then `pre_LN`, then `transformation`, pooled at `<s>`.

That is exactly `transformers.AltCLIPTextModel`. It is initialised from any XLM-R checkpoint (hub id
or local dir); an existing `AltCLIPTextModel` directory (a phase-1 output) loads as it is.
"""

from __future__ import annotations

import logging
import re

from transformers import AltCLIPTextConfig, AltCLIPTextModel

from altclip_train.models.teachers.base import load_model_config

log = logging.getLogger(__name__)

# XLM-R names its layers `encoder.layer.N`; transformers 5's AltRoberta names them `encoder.layers.N`.
_XLMR_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")
_SHARED_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
)


# Heads an XLM-R checkpoint may carry that the student's encoder does not use.
_UNUSED_XLMR_HEADS = ("pooler.", "lm_head.", "roberta.pooler.")
# Above this share of <unk> tokens, the student cannot read much of a language's text.
UNK_RATE_WARNING = 0.03


class NotAStudentCheckpoint(ValueError):
    """A directory that should hold a phase-1 AltCLIPTextModel but does not."""


def student_config_from_xlmr(xlmr_config, project_dim: int) -> AltCLIPTextConfig:
    fields = {name: getattr(xlmr_config, name) for name in _SHARED_FIELDS if hasattr(xlmr_config, name)}
    return AltCLIPTextConfig(project_dim=project_dim, **fields)


def build_student(name_or_path: str, project_dim: int, trust_remote_code: bool = False) -> AltCLIPTextModel:
    """An AltCLIPTextModel whose encoder carries the XLM-R weights and whose output width is `project_dim`."""
    model_type = config_model_type(name_or_path, trust_remote_code)
    if model_type in TRAINED_MODEL_TYPES:
        model = load_trained_text_tower(name_or_path)
        if model.config.project_dim != project_dim:
            raise ValueError(f"student {name_or_path} has project_dim {model.config.project_dim}, "
                             f"but the teacher's text width is {project_dim}")
        return model
    config = load_model_config(name_or_path, trust_remote_code)
    if config.model_type not in {"xlm-roberta", "roberta", "xlm-roberta-xl"}:
        raise ValueError(f"student {name_or_path} is a '{config.model_type}' checkpoint; expected XLM-R "
                         "(xlm-roberta) or a phase-1 AltCLIPTextModel")
    encoder = load_xlmr_encoder(name_or_path, trust_remote_code)
    student = AltCLIPTextModel(student_config_from_xlmr(config, project_dim))
    copy_encoder_weights(encoder.state_dict(), student)
    return student


def load_xlmr_encoder(name_or_path: str, trust_remote_code: bool = False):
    """The XLM-R encoder of a checkpoint, its load checked here rather than by transformers' report.

    A hub XLM-R is a masked-LM checkpoint (and the tiny stand-in keeps a pooler), so transformers
    prints a multi-line table of the `lm_head.*`/`pooler.*` weights it leaves out on every load. Those
    are expected; anything else left out, or any encoder weight the checkpoint lacks, gets one line.
    """
    from transformers import AutoModel

    from altclip_train.logging_setup import transformers_errors_only

    with transformers_errors_only():
        encoder, info = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False, output_loading_info=True,
                                                  trust_remote_code=trust_remote_code)
    unexpected = sorted(key for key in info.get("unexpected_keys", ()) if not key.startswith(_UNUSED_XLMR_HEADS))
    if unexpected:
        log.warning("student %s: %d checkpoint weights not used by the encoder: %s", name_or_path, len(unexpected),
                    ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        log.warning("student %s: %d encoder weights not in the checkpoint, randomly initialised: %s", name_or_path,
                    len(missing), ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return encoder


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


# Trained models whose text tower a new run continues from: phase 1's output, or a whole phase-2 model
# (AltCLIPModel such as BAAI/AltCLIP-m9, or this project's AltCLIPSiglipModel).
TRAINED_MODEL_TYPES = ("altclip_text_model", "altclip", "altclip_siglip")


def config_model_type(name_or_path: str, trust_remote_code: bool = False) -> str:
    """`model_type` from config.json, read as JSON for a local dir so remote-code configs need no code run."""
    import json
    from pathlib import Path

    config_file = Path(name_or_path) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "")
    return load_model_config(name_or_path, trust_remote_code).model_type


def load_trained_text_tower(name_or_path: str) -> AltCLIPTextModel:
    """The AltCLIPTextModel inside a phase-1 output or a phase-2 model (its `text_model`)."""
    model_type = config_model_type(name_or_path)
    if model_type == "altclip_text_model":
        return AltCLIPTextModel.from_pretrained(name_or_path)
    if model_type == "altclip":
        from transformers import AltCLIPModel

        whole = AltCLIPModel.from_pretrained(name_or_path)
    else:
        from altclip_train.models.altclip_siglip import AltCLIPSiglipModel

        whole = AltCLIPSiglipModel.from_pretrained(name_or_path)
    tower = AltCLIPTextModel(whole.config.text_config)
    tower.load_state_dict(whole.text_model.state_dict())
    log.info("student %s: continuing from the text tower of its %s", name_or_path, type(whole).__name__)
    return tower


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


def unk_rate(tokenizer, texts) -> float:
    """Share of the tokens of `texts` (special tokens left out) that are the tokenizer's `<unk>`.

    0.0 when there are no tokens or the tokenizer has no unknown token. Tokenises everything it is
    given, so pass a sample (a few thousand sentences tell the rate well) of a large corpus. A rate
    above a few percent (`UNK_RATE_WARNING`) means the student's vocabulary does not cover the
    language's script: the first thing to check when adding a language.
    """
    unk_id = getattr(tokenizer, "unk_token_id", None)
    texts = [text for text in texts if isinstance(text, str) and text]
    if unk_id is None or not texts:
        return 0.0
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in ids)
    return sum(row.count(unk_id) for row in ids) / total if total else 0.0
