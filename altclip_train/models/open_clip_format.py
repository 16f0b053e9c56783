"""open_clip's model format for our two-tower models: `open_clip_config.json` + `open_clip_model.safetensors`,
XLM-R as an HF text tower, loadable with `open_clip.create_model_and_transforms("local-dir:DIR")` (or
`hf-hub:ORG/NAME` once pushed).

| file                          | what                                                                     |
|-------------------------------|--------------------------------------------------------------------------|
| `open_clip_config.json`       | `model_cfg` (the teacher's `vision_cfg`, an HF `text_cfg`) and `preprocess_cfg` |
| `open_clip_model.safetensors` | `visual.*`, `text.transformer.*` (XLMRobertaModel), `text.proj.weight`, `logit_scale` (+ `logit_bias`) |
| `config.json`, tokenizer files | the XLM-R config and tokenizer open_clip's `HFTextEncoder` / `HFTokenizer` read |

open_clip's HF text tower is `proj(pool(XLMRobertaModel(ids)))`; AltCLIP's text tower adds a LayerNorm and a
biased linear map after XLM-R (`pre_LN`, `transformation`, CLS) and then `text_projection`. The export writes
the same function in open_clip's terms: one extra XLM-R layer whose attention and MLP outputs are zero, so its
two LayerNorms give `LN(h)` (the first normalises, the second carries `pre_LN`'s scale), CLS pooling of the last
hidden state, and one `linear` projection `text_projection @ transformation`, the biases folded into the last
LayerNorm's shift. The result equals AltCLIP's embedding up to LayerNorm's epsilon (about 1e-6 relative); the
bias fold is exact when the embedding width is at most XLM-R's hidden size, and refused in one line otherwise.

Vision towers: an open_clip teacher's `visual` as it is; a transformers CLIP tower mapped onto open_clip's
`VisionTransformer` (OpenAI layout); a SigLIP tower onto the timm SigLIP model open_clip builds by name, chosen by
exact shapes, activation and LayerNorm eps.

`hf_model_name` / `hf_tokenizer_name` name where the XLM-R config and tokenizer live: the export dir's absolute
path locally, the repo id in a copy made for `--push-to-hub` (`point_text_tower_at`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


class OpenClipExportError(ValueError):
    """A model that open_clip's format cannot express exactly; the message is one line."""


def xlmr_config_for(text_config, extra_layers: int = 1):
    """The XLMRobertaConfig of an AltCLIPTextModel's encoder, with room for the head layer."""
    from transformers import XLMRobertaConfig

    keys = ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
            "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")
    settings = {key: getattr(text_config, key) for key in keys if getattr(text_config, key, None) is not None}
    return XLMRobertaConfig(num_hidden_layers=text_config.num_hidden_layers + extra_layers, **settings)


def open_clip_text_state(text_model, projection_weight: torch.Tensor, projection_bias: torch.Tensor | None
                         ) -> dict[str, torch.Tensor]:
    """`text.*` weights of open_clip's HF text tower computing `text_projection(text_model(ids).pooler_output)`."""
    # AltCLIP's copy of XLM-R names its layer list `layers`, XLMRobertaModel `layer`.
    roberta = {key.removeprefix("roberta.").replace("encoder.layers.", "encoder.layer.", 1): value.detach().float()
               for key, value in text_model.state_dict().items() if key.startswith("roberta.")}
    state = {f"text.transformer.{key}": value for key, value in roberta.items()}
    hidden = text_model.config.hidden_size
    layer = f"text.transformer.encoder.layer.{text_model.config.num_hidden_layers}."
    zeros = {"attention.self.query": hidden, "attention.self.key": hidden, "attention.self.value": hidden,
             "attention.output.dense": hidden, "intermediate.dense": text_model.config.intermediate_size}
    for name, rows in zeros.items():
        columns = hidden
        state[f"{layer}{name}.weight"] = torch.zeros(rows, columns)
        state[f"{layer}{name}.bias"] = torch.zeros(rows)
    state[f"{layer}output.dense.weight"] = torch.zeros(hidden, text_model.config.intermediate_size)
    state[f"{layer}output.dense.bias"] = torch.zeros(hidden)
    state[f"{layer}attention.output.LayerNorm.weight"] = torch.ones(hidden)
    state[f"{layer}attention.output.LayerNorm.bias"] = torch.zeros(hidden)

    transformation = text_model.transformation
    weight = projection_weight.double() @ transformation.weight.detach().double()  # [embed, hidden]
    offset = projection_weight.double() @ transformation.bias.detach().double()
    if projection_bias is not None:
        offset = offset + projection_bias.detach().double()
    shift = torch.linalg.lstsq(weight, offset.unsqueeze(1)).solution.squeeze(1)
    residual = (weight @ shift - offset).abs().max().item()
    if residual > 1e-6 * (1.0 + offset.abs().max().item()):
        raise OpenClipExportError(
            f"open_clip format: the text head's bias cannot be folded into XLM-R's last LayerNorm (embedding width "
            f"{weight.shape[0]} > hidden size {weight.shape[1]}, residual {residual:.2g}); export in the "
            f"transformers format instead")
    pre_ln = text_model.pre_LN
    state[f"{layer}output.LayerNorm.weight"] = pre_ln.weight.detach().float().clone()
    state[f"{layer}output.LayerNorm.bias"] = (pre_ln.bias.detach().double() + shift).float()
    state["text.proj.weight"] = weight.float()
    check_fits_xlmr(state, text_model.config)
    return state


def check_fits_xlmr(state: dict[str, torch.Tensor], text_config) -> None:
    """Every weight of open_clip's XLMRobertaModel is written, with its shape, and nothing else (a bug otherwise)."""
    from transformers import XLMRobertaModel

    with torch.device("meta"):
        expected = XLMRobertaModel(xlmr_config_for(text_config), add_pooling_layer=False).state_dict()
    written = {key.removeprefix("text.transformer."): value for key, value in state.items()
               if key.startswith("text.transformer.")}
    wrong = sorted(set(expected) ^ set(written)) + sorted(
        key for key in set(expected) & set(written) if tuple(expected[key].shape) != tuple(written[key].shape))
    if wrong:
        raise RuntimeError(f"open_clip text tower weights do not fit XLMRobertaModel: {wrong[:3]}")


def write_open_clip_dir(output_dir: str | Path, *, embed_dim: int, vision_cfg: dict, visual_state: dict,
                        text_model, projection_weight: torch.Tensor, projection_bias: torch.Tensor | None,
                        logit_scale: torch.Tensor, logit_bias: torch.Tensor | None, preprocess_cfg: dict,
                        tokenizer, context_length: int, extra_model_cfg: dict | None = None,
                        provenance: dict | None = None) -> Path:
    """Write the model in open_clip's format; `visual_state` holds open_clip `visual` weights (no prefix)."""
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    xlmr_config_for(text_model.config).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    here = str(output_dir.resolve())
    text_cfg = {"hf_model_name": here, "hf_tokenizer_name": here, "hf_pooler_type": "cls_last_hidden_state_pooler",
                "hf_proj_type": "linear", "context_length": int(context_length)}
    model_cfg = {**(extra_model_cfg or {}), "embed_dim": int(embed_dim), "vision_cfg": vision_cfg,
                 "text_cfg": text_cfg}
    if logit_bias is not None:
        model_cfg["init_logit_bias"] = float(logit_bias.detach().reshape(()))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    if provenance:
        config["altclip_train"] = provenance
    (output_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    state = {f"visual.{key}": value.detach().float() for key, value in visual_state.items()}
    state.update(open_clip_text_state(text_model, projection_weight, projection_bias))
    state["logit_scale"] = logit_scale.detach().float().reshape(())
    if logit_bias is not None:
        state["logit_bias"] = logit_bias.detach().float().reshape(())
    save_file({key: value.contiguous() for key, value in state.items()}, str(output_dir / WEIGHTS_FILE))
    return output_dir


def point_text_tower_at(model_dir: str | Path, name: str) -> None:
    """Make `hf_model_name`/`hf_tokenizer_name` name `name` (a Hub repo id, or another dir the files are in)."""
    path = Path(model_dir) / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    config["model_cfg"]["text_cfg"].update(hf_model_name=name, hf_tokenizer_name=name)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_open_clip_dir(source: str | Path, output_dir: str | Path) -> Path:
    """A copy of an open_clip-format dir whose text tower points at the copy."""
    source, output_dir = Path(source), Path(output_dir)
    if source.resolve() != output_dir.resolve():
        shutil.copytree(source, output_dir, dirs_exist_ok=True)
    point_text_tower_at(output_dir, str(output_dir.resolve()))
    return output_dir


# ------------------------------------------------------------------------ transformers CLIP vision -> open_clip
def clip_vision_to_open_clip(vision_model, visual_projection, image_processor) -> tuple[dict, dict, dict, dict]:
    """(vision_cfg, visual state, preprocess_cfg, extra model_cfg) of open_clip's VisionTransformer equal to a
    transformers `CLIPVisionModel` + `visual_projection`, preprocessing included, or a one-line refusal."""
    config = vision_model.config
    if config.hidden_act not in ("gelu", "quick_gelu"):
        raise OpenClipExportError(f"open_clip format: vision activation {config.hidden_act!r} has no open_clip "
                                  f"equivalent (gelu, quick_gelu)")
    if abs(config.layer_norm_eps - 1e-5) > 1e-12:
        raise OpenClipExportError(f"open_clip format: vision layer_norm_eps {config.layer_norm_eps} (open_clip's "
                                  f"VisionTransformer uses 1e-5)")
    heads, width = config.num_attention_heads, config.hidden_size
    vision_cfg = {"image_size": config.image_size, "patch_size": config.patch_size, "width": width,
                  "layers": config.num_hidden_layers, "head_width": width // heads,
                  "mlp_ratio": config.intermediate_size / width}
    source = {key: value.detach().float() for key, value in vision_model.state_dict().items()}
    prefix = "vision_model." if any(key.startswith("vision_model.") for key in source) else ""
    get = lambda key: source[prefix + key]  # noqa: E731
    state = {"class_embedding": get("embeddings.class_embedding"),
             "conv1.weight": get("embeddings.patch_embedding.weight"),
             "positional_embedding": get("embeddings.position_embedding.weight"),
             "ln_pre.weight": get("pre_layrnorm.weight"), "ln_pre.bias": get("pre_layrnorm.bias"),
             "ln_post.weight": get("post_layernorm.weight"), "ln_post.bias": get("post_layernorm.bias"),
             "proj": visual_projection.weight.detach().float().t().contiguous()}
    for i in range(config.num_hidden_layers):
        ours, theirs = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        attention = theirs + "self_attn."
        state[ours + "attn.in_proj_weight"] = torch.cat([get(f"{attention}{p}_proj.weight") for p in "qkv"])
        state[ours + "attn.in_proj_bias"] = torch.cat([get(f"{attention}{p}_proj.bias") for p in "qkv"])
        for theirs_name, ours_name in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                       ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for kind in ("weight", "bias"):
                state[f"{ours}{ours_name}.{kind}"] = get(f"{theirs}{theirs_name}.{kind}")
    return vision_cfg, state, clip_preprocess_cfg(image_processor), {"quick_gelu": config.hidden_act == "quick_gelu"}


def clip_preprocess_cfg(processor) -> dict:
    """open_clip's `preprocess_cfg` for a transformers CLIPImageProcessor (shortest-edge resize + square crop)."""
    size = size_field(processor.size, "shortest_edge")
    crop_height, crop_width = size_field(processor.crop_size, "height"), size_field(processor.crop_size, "width")
    if size is None or crop_height != size or crop_width != size or not processor.do_center_crop:
        raise OpenClipExportError(f"open_clip format: the image processor resizes to {processor.size} and crops "
                                  f"{processor.crop_size}; open_clip's preprocess resizes and crops to one size")
    return preprocess_cfg_of(processor, size, "shortest")


def size_field(sizes, key: str):
    """A field of an image processor's size: a dict in older transformers, a SizeDict in newer."""
    return sizes.get(key) if isinstance(sizes, dict) else getattr(sizes, key, None)


def preprocess_cfg_of(processor, size: int, resize_mode: str) -> dict:
    """open_clip's `preprocess_cfg`: `size`, `resize_mode` and the processor's resample, mean and std."""
    from PIL import Image

    resample = {Image.Resampling.BICUBIC: "bicubic", Image.Resampling.BILINEAR: "bilinear"}.get(
        Image.Resampling(int(processor.resample)))
    if resample is None:
        raise OpenClipExportError(f"open_clip format: resample {processor.resample} has no open_clip equivalent")
    return {"size": int(size), "mode": "RGB", "mean": [float(x) for x in processor.image_mean],
            "std": [float(x) for x in processor.image_std], "interpolation": resample, "resize_mode": resize_mode,
            "fill_color": 0}


# ------------------------------------------------------------------------ transformers SigLIP vision -> open_clip
def siglip_vision_to_timm(vision_model) -> dict[str, torch.Tensor]:
    """timm `VisionTransformer` (attention-pool `map` head) weights equal to a transformers SiglipVisionModel."""
    config = vision_model.config
    source = {key.removeprefix("vision_model."): value.detach().float()
              for key, value in vision_model.state_dict().items()}
    width = config.hidden_size
    state = {"patch_embed.proj.weight": source["embeddings.patch_embedding.weight"],
             "patch_embed.proj.bias": source["embeddings.patch_embedding.bias"],
             "pos_embed": source["embeddings.position_embedding.weight"].unsqueeze(0),
             "norm.weight": source["post_layernorm.weight"], "norm.bias": source["post_layernorm.bias"]}
    for i in range(config.num_hidden_layers):
        ours, theirs = f"blocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            state[f"{ours}attn.qkv.{kind}"] = torch.cat([source[f"{theirs}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for theirs_name, ours_name in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"),
                                           ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                state[f"{ours}{ours_name}.{kind}"] = source[f"{theirs}{theirs_name}.{kind}"]
    state["attn_pool.latent"] = source["head.probe"]
    for kind in ("weight", "bias"):
        packed = source[f"head.attention.in_proj_{kind}"]
        state[f"attn_pool.q.{kind}"], state[f"attn_pool.kv.{kind}"] = packed[:width], packed[width:]
        for theirs_name, ours_name in (("attention.out_proj", "proj"), ("layernorm", "norm"), ("mlp.fc1", "mlp.fc1"),
                                       ("mlp.fc2", "mlp.fc2")):
            state[f"attn_pool.{ours_name}.{kind}"] = source[f"head.{theirs_name}.{kind}"]
    return state


def timm_siglip_name(state: dict[str, torch.Tensor], image_size: int, candidates: list[str] | None = None) -> str:
    """The timm SigLIP model (attention-pool head) whose weights have exactly these names and shapes."""
    import timm

    wanted = {key: tuple(value.shape) for key, value in state.items()}
    shaped_alike = []
    for name in candidates or timm.list_models("*siglip*"):
        if "gap" in name:
            continue
        with torch.device("meta"):
            try:
                model = timm.create_model(name, num_classes=0, global_pool="map")
            except Exception:  # noqa: BLE001 - a candidate that does not build with these options is no match
                continue
        shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        if shapes != wanted or tuple(model.patch_embed.img_size) != (image_size, image_size):
            continue
        # Same shapes are not the same function: SigLIP's MLPs use tanh-GELU, and some timm SigLIP definitions
        # (vit_base_patch16_siglip_224) build exact GELU; those would give other embeddings.
        acts = [model.blocks[0].mlp.act, model.attn_pool.mlp.act]
        if all(is_tanh_gelu(act) for act in acts) and abs(model.norm.eps - 1e-6) < 1e-12:
            return name
        shaped_alike.append(name)
    more = f"; {', '.join(shaped_alike)} match the shapes but not tanh-GELU / eps 1e-6" if shaped_alike else ""
    raise OpenClipExportError(f"open_clip format: no timm SigLIP model computes this vision tower ({len(state)} "
                              f"tensors, {image_size} px){more}; open_clip holds SigLIP towers as timm models")


def is_tanh_gelu(act) -> bool:
    return "tanh" in type(act).__name__.lower() or getattr(act, "approximate", None) == "tanh"


def siglip_preprocess_cfg(processor) -> dict:
    """open_clip's `preprocess_cfg` for a SiglipImageProcessor (resize to a square, no crop)."""
    height, width = size_field(processor.size, "height"), size_field(processor.size, "width")
    if height is None or height != width or getattr(processor, "do_center_crop", False):
        raise OpenClipExportError(f"open_clip format: the image processor resizes to {processor.size}; open_clip "
                                  f"squashes to one square size")
    return preprocess_cfg_of(processor, height, "squash")


def export_altclip_siglip_model(model_dir: str | Path, output_dir: str | Path,
                                timm_candidates: list[str] | None = None) -> Path:
    """An `AltCLIPSiglipModel` dir (SigLIP teacher) -> open_clip format, its vision tower as open_clip's timm one."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from altclip_train.models.altclip_siglip import AltCLIPSiglipModel

    model = AltCLIPSiglipModel.from_pretrained(str(model_dir)).eval()
    vision = model.vision_model.config
    if vision.hidden_act != "gelu_pytorch_tanh" or abs(vision.layer_norm_eps - 1e-6) > 1e-12:
        raise OpenClipExportError(f"open_clip format: SigLIP vision with {vision.hidden_act} / eps "
                                  f"{vision.layer_norm_eps} (timm's SigLIP towers use gelu_tanh, eps 1e-6)")
    state = siglip_vision_to_timm(model.vision_model)
    name = timm_siglip_name(state, vision.image_size, timm_candidates)
    vision_cfg = {"image_size": vision.image_size, "timm_model_name": name, "timm_model_pretrained": False,
                  "timm_pool": "map", "timm_proj": "none"}
    processor = AutoImageProcessor.from_pretrained(str(model_dir), backend="pil")
    return write_open_clip_dir(
        output_dir, embed_dim=model.config.projection_dim, vision_cfg=vision_cfg,
        visual_state={f"trunk.{key}": value for key, value in state.items()}, text_model=model.text_model,
        projection_weight=model.text_projection.weight, projection_bias=model.text_projection.bias,
        logit_scale=model.logit_scale, logit_bias=model.logit_bias, preprocess_cfg=siglip_preprocess_cfg(processor),
        tokenizer=AutoTokenizer.from_pretrained(str(model_dir)),
        context_length=text_context_length(model.config.text_config),
        provenance={"converted_from": "AltCLIPSiglipModel"})


def export_altclip_model(model_dir: str | Path, output_dir: str | Path) -> Path:
    """A transformers `AltCLIPModel` dir (CLIP-vision teacher) -> open_clip format."""
    from transformers import AltCLIPModel, AutoImageProcessor, AutoTokenizer

    model = AltCLIPModel.from_pretrained(str(model_dir)).eval()
    processor = AutoImageProcessor.from_pretrained(str(model_dir), backend="pil")
    vision_cfg, visual_state, preprocess_cfg, extra = clip_vision_to_open_clip(
        model.vision_model, model.visual_projection, processor)
    bias = getattr(model.config, "logit_bias", None)
    return write_open_clip_dir(
        output_dir, embed_dim=model.config.projection_dim, vision_cfg=vision_cfg, visual_state=visual_state,
        text_model=model.text_model, projection_weight=model.text_projection.weight, projection_bias=None,
        logit_scale=model.logit_scale, logit_bias=None if bias is None else torch.tensor(float(bias)),
        preprocess_cfg=preprocess_cfg, tokenizer=AutoTokenizer.from_pretrained(str(model_dir)),
        context_length=text_context_length(model.config.text_config), extra_model_cfg=extra,
        provenance={"converted_from": "AltCLIPModel"})


CONTEXT_LENGTH = 77


def text_context_length(text_config) -> int:
    """The width open_clip pads captions to: 77, phase 2's caption length (`data.max_length`) and open_clip's
    convention for XLM-R towers, within what XLM-R's positions allow. Longer captions are cut there."""
    return int(min(CONTEXT_LENGTH, getattr(text_config, "max_position_embeddings", 514) - 2))


def export_open_clip(model_dir: str | Path, output_dir: str | Path, timm_candidates: list[str] | None = None) -> Path:
    """Any of our phase-2 model dirs -> open_clip format in `output_dir`, or a one-line refusal."""
    model_dir = Path(model_dir)
    if (model_dir / CONFIG_FILE).is_file():
        return copy_open_clip_dir(model_dir, output_dir)
    config_file = model_dir / "config.json"
    model_type = json.loads(config_file.read_text("utf-8")).get("model_type") if config_file.is_file() else None
    if model_type == "altclip":
        return export_altclip_model(model_dir, output_dir)
    if model_type == "altclip_siglip":
        return export_altclip_siglip_model(model_dir, output_dir, timm_candidates)
    raise OpenClipExportError(f"{model_dir}: model_type {model_type!r} is not a phase-2 model (expected altclip, "
                              f"altclip_siglip, or an open_clip-format dir)")
