"""Tests for the model card (altclip_train/model_card.py) and `altclip-train export --push-to-hub`, offline: the
card's front matter parses with huggingface_hub's ModelCard, the folder a push uploads is complete (the upload
call is mocked), and offline or unauthorised pushes end with one line that never shows the token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from omegaconf import OmegaConf

from altclip_train.cli import compose_config, main as cli_main
from altclip_train.data.images import clip_preprocessor
from altclip_train.export import upload_files
from altclip_train.model_card import build_model_card, per_language, write_model_card
from altclip_train.models.tiny import build_tiny_clip, train_xlmr_tokenizer

TEACHER = "openai/clip-vit-large-patch14"
STUDENT = "FacebookAI/xlm-roberta-large"
SECRET = "hf_notARealTokenButSecret123"
IMAGE_SIZE = 32


def save_run(run_dir: Path, command: str, overrides: list[str], metrics: list[dict]) -> Path:
    """A run dir as the loop leaves it: resolved config.yaml, Hydra's overrides.yaml, metrics.jsonl."""
    cfg = compose_config(command, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides), encoding="utf-8")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
    return run_dir


@pytest.fixture()
def runs(tmp_path) -> tuple[Path, Path]:
    """A phase-1 run (real recipe config, hub corpora) and the phase-2 run that started from its final/."""
    phase1 = save_run(tmp_path / "altclip_m9_distill", "distill", [
        "experiment=altclip_m9_distill",
        "data.corpora=[{lang: zh, hub: Helsinki-NLP/opus-100, subset: en-zh, source_column: translation.en, "
        "target_column: translation.zh}, {lang: ja, path: /data/en-ja.tsv}]",
    ], [{"step": 100, "val/mse/zh": 0.5, "val/translation_acc/zh": 0.4},
        {"step": 200, "val/mse/zh": 0.25, "val/translation_acc/zh": 0.8, "val/mse": 0.3}])
    phase2 = save_run(tmp_path / "altclip_m9_contrastive", "contrastive", [
        "experiment=altclip_m9_contrastive", f"model.model.student={phase1 / 'final'}",
        "data.shards=/data/laion-m9",
    ], [{"step": 500, "eval/zeroshot_top1/en": 50.0, "eval/zeroshot_top1/ja": 20.0},
        {"step": 1000, "train/loss": 1.5, "eval/zeroshot_top1/en": 71.25, "eval/zeroshot_top5/en": 90.5,
         "eval/zeroshot_top1/ja": 60.0, "eval/zeroshot_top5/ja": 85.0, "eval/retrieval/t2i_r@1/ja": 33.3,
         "eval/retrieval/mean_recall/ja": 55.5}])
    return phase1, phase2


def test_per_language_keeps_only_per_language_evaluation():
    flat = {"eval/zeroshot_top1/ja": 1.0, "eval/retrieval/t2i_r@1/fr": 2.0, "eval/xtd10/i2t_r@5/de": 3.0,
            "val/mse/zh": 4.0, "val/mse": 5.0, "val/loss": 6.0, "train/loss": 7.0}
    assert per_language(flat) == {"zeroshot": {"ja": {"top1": 1.0}}, "retrieval": {"fr": {"t2i_r@1": 2.0}},
                                  "xtd10": {"de": {"i2t_r@5": 3.0}}, "val": {"zh": {"mse": 4.0}}}


def test_phase2_card_front_matter_parses_and_the_body_has_both_recipes(runs):
    phase1, phase2 = runs
    (phase2 / "final").mkdir()
    card = ModelCard.load(write_model_card(phase2 / "final", phase2, repo_id="me/altclip-m9"))
    data = card.data
    assert data.library_name == "transformers" and data.license == "mit"
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert data.base_model == [TEACHER, STUDENT]  # the image side's teacher and phase 1's XLM-R
    assert data.datasets == ["Helsinki-NLP/opus-100"]  # hub corpora only; local files are named in the body
    assert data.language == ["en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it"]
    assert {"altclip", "multilingual", "contrastive-learning"} <= set(data.tags)
    # model-index: the last logged value of every per-language metric.
    found = {(r.dataset_config, r.metric_name): r.metric_value for r in data.eval_results}
    assert found[("en", "top1 (en)")] == 71.25 and found[("ja", "top1 (ja)")] == 60.0
    assert found[("ja", "mean_recall (ja)")] == 55.5 and len(found) == 6
    assert {r.task_type for r in data.eval_results} == {"zero-shot-image-classification", "zero-shot-image-retrieval"}
    assert data.model_name == "altclip-m9"

    body = card.text
    assert "### Phase 1: distillation" in body and "### Phase 2: contrastive tuning" in body
    assert "| global batch (pairs) | 1024 |" in body  # both phases' paper recipe, from the resolved configs
    assert "AdamW lr 2e-06, weight decay 0.05" in body and "AdamW lr 0.0001, weight decay 0.1" in body
    assert "zh: `Helsinki-NLP/opus-100` (en-zh)" in body and "ja: `/data/en-ja.tsv`" in body
    assert "| ja | 60.00 | 85.00 |" in body
    assert "![per-language results](eval_results.png)" in body and (phase2 / "final" / "eval_results.png").is_file()
    assert ("altclip-train contrastive experiment=altclip_m9_contrastive "
            f"model.model.student={phase1 / 'final'} data.shards=/data/laion-m9") in body
    assert "altclip-train distill experiment=altclip_m9_distill 'data.corpora=[{lang: zh" in body
    assert 'pipeline("zero-shot-image-classification", model="me/altclip-m9")' in body


def test_phase1_card_and_a_run_without_evaluation(runs, tmp_path):
    phase1, _ = runs
    text = build_model_card(phase1 / "final", phase1)
    card = ModelCard(text)
    assert card.data.pipeline_tag == "feature-extraction" and card.data.base_model == [TEACHER, STUDENT]
    assert card.data.language[:3] == ["en", "zh", "es"]
    assert {(r.dataset_config, r.metric_name): r.metric_value for r in card.data.eval_results} == {
        ("zh", "mse (zh)"): 0.25, ("zh", "translation_acc (zh)"): 0.8}
    assert "### Phase 2" not in card.text and "AutoModel.from_pretrained" in card.text

    bare = save_run(tmp_path / "bare", "distill", ["experiment=altclip_m9_distill"], [])
    (bare / ".hydra" / "overrides.yaml").unlink()
    card = ModelCard(build_model_card(bare / "final", bare))
    assert card.data.eval_results is None and "No evaluation ran during training" in card.text
    assert "Not recorded" in card.text
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        build_model_card(tmp_path, tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- export and push


@pytest.fixture()
def trained_run(runs, tmp_path) -> Path:
    """The phase-2 run with a (tiny) AltCLIPModel in final/, as the loop exports it."""
    from transformers import AltCLIPConfig, AltCLIPModel, AltCLIPProcessor, CLIPConfig

    _, phase2 = runs
    final = phase2 / "final"
    clip = build_tiny_clip(tmp_path / "clip", image_size=IMAGE_SIZE, patch=16, hidden=32, layers=1)
    tokenizer = train_xlmr_tokenizer(["a photo of a cat", "une photo de chat", "猫の写真"] * 4, final, vocab_size=300)
    vision = CLIPConfig.from_pretrained(clip).vision_config.to_dict()
    config = AltCLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=66, project_dim=32, pad_token_id=1),
        vision_config=vision, projection_dim=vision["projection_dim"])
    torch.manual_seed(0)
    AltCLIPModel(config).save_pretrained(final)
    image_processor = clip_preprocessor(IMAGE_SIZE).processor
    AltCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(final)  # as the export
    return phase2


class FakeHub:
    """Stands in for HfApi's network calls and records what a push would send."""

    def __init__(self, monkeypatch, fail_with: Exception | None = None):
        from huggingface_hub import HfApi

        self.calls: list[tuple[str, dict]] = []
        self.uploaded: list[str] = []
        self.tokens: list = []
        hub = self

        def create_repo(api, repo_id, **options):
            hub.tokens.append(api.token)
            hub.calls.append(("create_repo", {"repo_id": repo_id, **options}))
            if fail_with is not None:
                raise fail_with

        def upload_folder(api, **options):
            hub.calls.append(("upload_folder", options))
            hub.uploaded = upload_files(options["folder_path"])
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{options['repo_id']}/commit/abc"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        cli_main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_push_uploads_a_complete_model_folder(trained_run, monkeypatch, capsys, caplog, tmp_path):
    from transformers import AltCLIPModel, AltCLIPProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    hub = FakeHub(monkeypatch)
    code, out, err = run_cli(capsys, "export", str(trained_run), "--push-to-hub", "me/altclip-m9", "--private")
    assert code == 0, err
    assert [name for name, _ in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1] == {"repo_id": "me/altclip-m9", "repo_type": "model", "private": True, "exist_ok": True}
    assert hub.calls[1][1]["folder_path"] == str(trained_run / "final") and hub.tokens == [SECRET]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "eval_results.png"} <= set(hub.uploaded)
    assert "pushed" in out and "https://huggingface.co/me/altclip-m9" in out
    assert SECRET not in out + err + caplog.text

    # Complete means: only the uploaded files, copied elsewhere, are a working model with its card.
    copy = tmp_path / "downloaded"
    for name in hub.uploaded:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(trained_run / "final" / name, copy / name)
    model, processor = AltCLIPModel.from_pretrained(copy), AltCLIPProcessor.from_pretrained(copy)
    inputs = processor(text=["une photo de chat"], return_tensors="pt")
    assert model.get_text_features(**inputs).pooler_output.shape[-1] == model.config.projection_dim
    card = ModelCard.load(copy / "README.md")
    assert card.data.model_name == "altclip-m9" and card.data.base_model == [TEACHER, STUDENT]


def test_push_offline_or_unauthorised_is_one_line_without_the_token(trained_run, monkeypatch, capsys, caplog):
    import httpx
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "export", str(trained_run), "--push-to-hub", "me/altclip-m9")
    assert code == 2 and err == "altclip-train: error: cannot push to me/altclip-m9: offline (HF_HUB_OFFLINE is set)\n"

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    request = httpx.Request("POST", "https://huggingface.co/api/repos/create", headers={"authorization": SECRET})
    unauthorised = HfHubHTTPError(f"401 Client Error: Unauthorized (token {SECRET})",
                                  response=httpx.Response(401, request=request))
    for failure, expected in ((unauthorised, "not authorised (HTTP 401); set HF_TOKEN"),
                              (httpx2.ConnectError(f"connection refused, headers {SECRET}"),
                               "the Hub cannot be reached (ConnectError)"),
                              (ConnectionRefusedError(111, "refused"), "the Hub cannot be reached")):
        FakeHub(monkeypatch, fail_with=failure)
        code, out, err = run_cli(capsys, "export", str(trained_run), "--push-to-hub", "me/altclip-m9")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"altclip-train: error: cannot push to me/altclip-m9: {expected}"), err
        assert SECRET not in out + err + caplog.text


def test_export_adds_benchmark_results_from_an_eval_json(trained_run, capsys):
    results = {"phase2": {"xtd10": {"de": {"i2t_r@1": 40.0, "mean_recall": 61.5}}},
               "teacher": {"xtd10": {"de": {"i2t_r@1": 5.0, "mean_recall": 9.0}}}}
    models = {"phase2": {"path": str(trained_run / "final")}, "teacher": {"path": TEACHER}}
    eval_json = trained_run / "eval.json"
    eval_json.write_text(json.dumps({"results": results, "models": models}), encoding="utf-8")
    code, _, err = run_cli(capsys, "export", str(trained_run / "final"), "--eval", str(eval_json))
    assert code == 0, err
    card = ModelCard.load(trained_run / "final" / "README.md")
    xtd10 = [r for r in card.data.eval_results if r.dataset_name == "xtd10"]
    assert {r.metric_name: r.metric_value for r in xtd10} == {"i2t_r@1 (de)": 40.0, "mean_recall (de)": 61.5}
    assert all(r.task_type == "zero-shot-image-retrieval" for r in xtd10)
    assert "**XTD10**" in card.text
