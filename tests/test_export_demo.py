"""The demo's trained models as published models (slow: trains the demo's three steps once, shortened).

Phase 2's `final/` must work in transformers' own zero-shot pipeline and give held-out digits their right labels
in several languages and scripts, also from a copy holding only the files a Hub push uploads; phase 1's `final/`
must load with AutoModel/AutoTokenizer. Both carry a model card the Hub parses, written by the loop itself.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from altclip_train.demo.run import LANGUAGES, prepare, run_command
from altclip_train.export import upload_files

# Shorter than `make demo` (880 / 720 / 110 steps) yet long enough for the digits to be read in every language.
STEPS = {"teacher": 300, "distill": 250, "contrastive": 10}
PIPELINE_LANGUAGES = ("en", "zh", "ar", "ja")  # four scripts
PER_CLASS = 3


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The demo's steps 0-2 through the real CLI, once per test session."""
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = [f"demo_dir={out}", "seed=0", "trainer.resume=null"]
    prepare(out, 0, env)
    run_command(["contrastive", "experiment=demo_teacher", *common, f"trainer.max_steps={STEPS['teacher']}"], env)
    run_command(["distill", "experiment=demo_distill", *common, f"trainer.max_steps={STEPS['distill']}",
                 "trainer.eval_every=0"], env)
    run_command(["contrastive", "experiment=demo_contrastive", *common, f"trainer.max_steps={STEPS['contrastive']}",
                 "trainer.eval_every=0", "trainer.eval_at_start=false"], env)
    return out


def digit_accuracy(model_dir: Path, data: Path, lang: str) -> float:
    from transformers import pipeline

    classifier = pipeline("zero-shot-image-classification", model=str(model_dir))
    names = (data / "eval" / "classnames" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
    template = (data / "eval" / "templates" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[0]
    digits = [(digit, path) for digit in range(10)
              for path in sorted((data / "images" / "test" / str(digit)).glob("*.png"))[:PER_CLASS]]
    images = [Image.open(path) for _, path in digits]
    ranked = classifier(images, candidate_labels=names, hypothesis_template=template)
    return sum(labels[0]["label"] == names[digit] for labels, (digit, _) in zip(ranked, digits)) / len(digits)


@pytest.mark.slow
@pytest.mark.heavy
def test_phase2_works_in_the_zero_shot_pipeline_from_what_a_push_uploads(demo_run, tmp_path):
    final = demo_run / "step2-contrastive" / "final"
    uploaded = upload_files(final)
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
            "eval_results.png"} <= set(uploaded)
    copy = tmp_path / "from-the-hub"
    for name in uploaded:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(final / name, copy / name)
    for lang in PIPELINE_LANGUAGES:
        # 30 held-out digits, labels and prompt in that language (held-out templates); chance is 10%.
        assert digit_accuracy(copy, demo_run / "data", lang) >= 0.7, lang

    card = ModelCard.load(final / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification" and card.data.library_name == "transformers"
    assert set(LANGUAGES) <= set(card.data.language)
    top1 = {r.dataset_config: r.metric_value for r in card.data.eval_results if r.metric_name.startswith("top1")}
    assert set(top1) == set(LANGUAGES) and min(top1.values()) > 50
    assert "### Phase 1: distillation" in card.text and "### Phase 2: contrastive tuning" in card.text
    assert f"altclip-train contrastive experiment=demo_contrastive demo_dir={demo_run}" in card.text
    assert f"altclip-train distill experiment=demo_distill demo_dir={demo_run}" in card.text


@pytest.mark.slow
@pytest.mark.heavy
def test_phase1_output_loads_with_automodel_and_autotokenizer(demo_run):
    from transformers import AltCLIPTextModel, AutoModel, AutoTokenizer

    final = demo_run / "step1-distill" / "final"
    model = AutoModel.from_pretrained(final, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    # transformers' own class, re-exported under a subclass so AutoModel's registration stays off it
    assert isinstance(model, AltCLIPTextModel) and AltCLIPTextModel._auto_class is None
    plain = AltCLIPTextModel.from_pretrained(final).eval()
    inputs = tokenizer(["a photo of the number seven", "数字七的照片"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).pooler_output, plain(**inputs).pooler_output, rtol=0, atol=0)

    card = ModelCard.load(final / "README.md")
    assert card.data.pipeline_tag == "feature-extraction"
    accuracy = {r.dataset_config for r in card.data.eval_results if r.metric_name.startswith("translation_acc")}
    assert set(LANGUAGES) <= accuracy
    assert "trust_remote_code=True" in card.text
