"""`load_eval_model` on open_clip-format models against open_clip itself (`make test-interop`).

Texts embedded through the evaluator (per-batch padding, sorted by length) equal `encode_text` of open_clip's own
tokenizer rows, images equal `encode_image` of open_clip's own `preprocess`, and the transform read from the config
alone (`eval_transform`, before any weights load) is the one the loaded model brings.
"""

from __future__ import annotations

import open_clip
import pytest
import torch

from altclip_train.evaluate.models import embed_pixels, embed_texts, eval_transform, load_eval_model
from altclip_train.models.tiny import SAMPLE_CAPTIONS, build_tiny_open_clip
from clip_benchmark_data import random_images

TEXTS = ["a dog", ("two cats on a red sofa in the evening light " * 4).strip(), "x", *SAMPLE_CAPTIONS["en"][:3]]


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return build_tiny_open_clip(tmp_path_factory.mktemp("oc") / "model")  # open_clip's own BPE text tower


@pytest.mark.parametrize("spelling", ["dir", "local-dir"])
def test_open_clip_models_embed_as_open_clip_does(native, spelling):
    path = str(native) if spelling == "dir" else f"local-dir:{native}"
    loaded = load_eval_model(path)
    assert loaded.model_type == "open_clip" and loaded.max_length == 16
    reference, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{native}")
    reference.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{native}")
    cpu = torch.device("cpu")
    ours = embed_texts(loaded.model, loaded.tokenizer, TEXTS, cpu, batch_size=2)
    images = random_images(5)
    pixels = torch.stack([loaded.transform(image) for image in images])
    assert torch.equal(pixels, torch.stack([preprocess(image) for image in images]))
    with torch.no_grad():
        theirs = reference.encode_text(tokenizer(TEXTS), normalize=True)
        their_images = reference.encode_image(pixels, normalize=True)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(embed_pixels(loaded.model, [pixels[:2], pixels[2:]], cpu), their_images,
                               atol=1e-6, rtol=0)
    assert eval_transform(path) == loaded.transform


def test_bad_open_clip_dirs_are_refused_in_one_line(native, tmp_path):
    (tmp_path / "open_clip_config.json").write_text((native / "open_clip_config.json").read_text())
    # No weights beside the config: open_clip itself only warns and evaluates random weights.
    with pytest.raises(FileNotFoundError, match="no weights beside open_clip_config.json") as error:
        load_eval_model(f"local-dir:{tmp_path}")
    assert "\n" not in str(error.value)
    (tmp_path / "open_clip_model.safetensors").write_bytes((native / "open_clip_model.safetensors").read_bytes())
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 8, "vision_cfg": {}}}')
    with pytest.raises(ValueError, match="open_clip cannot load it") as error:
        load_eval_model(str(tmp_path))
    assert "\n" not in str(error.value)
