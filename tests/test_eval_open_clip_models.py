"""How `load_eval_model` recognises an open_clip-format model, and its one-line refusal without the open_clip extra.

(With open_clip installed, `tests/interop/test_eval_open_clip.py` checks the embeddings against open_clip's own.)
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from altclip_train.evaluate.models import is_open_clip_model, load_eval_model, open_clip_model_name


def open_clip_dir(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 8}}), encoding="utf-8")
    # Our open_clip export also holds XLM-R's config.json (open_clip's HF text tower reads it): it must not win.
    (path / "config.json").write_text(json.dumps({"model_type": "xlm-roberta"}), encoding="utf-8")
    return path


def test_open_clip_dirs_and_names_are_recognised_before_config_json(tmp_path):
    directory = open_clip_dir(tmp_path / "oc")
    assert is_open_clip_model(directory) and is_open_clip_model(f"local-dir:{directory}")
    assert is_open_clip_model("hf-hub:org/name")
    assert not is_open_clip_model(tmp_path) and not is_open_clip_model("openai/clip-vit-base-patch32")
    assert open_clip_model_name(directory) == f"local-dir:{directory.resolve()}"
    assert open_clip_model_name("hf-hub:org/name") == "hf-hub:org/name"
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json in"):
        open_clip_model_name(f"local-dir:{tmp_path}")


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed here")
def test_without_open_clip_an_open_clip_model_is_refused_in_one_line(tmp_path):
    directory = open_clip_dir(tmp_path / "oc")
    with pytest.raises(ImportError) as error:
        load_eval_model(str(directory))
    message = str(error.value)
    assert "\n" not in message and "pip install 'altclip-train[open_clip]'" in message and str(directory) in message
