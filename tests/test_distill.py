"""Phase 1 end to end on tiny models: freezing, resume, export, validation metrics, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AltCLIPTextModel, AutoTokenizer

from altclip_train.checkpoint import complete_checkpoints
from altclip_train.cli import compose_config
from altclip_train.models.student import build_student
from altclip_train.tracking import read_metrics
from altclip_train.train import train
from conftest import distill_overrides


def run_distill(tiny_teacher, tiny_student, parallel_dir, run_dir, *extra):
    cfg = compose_config("distill", distill_overrides(tiny_teacher, tiny_student, parallel_dir, run_dir, *extra))
    return train(cfg)


def test_run_writes_config_metrics_checkpoints_and_loss_falls(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    final = run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "run", "trainer.max_steps=12")
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file()
    metrics = read_metrics(run)
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]
    val = [m for m in metrics if "val/mse/zh" in m]
    assert val[0]["step"] == 0 and val[-1]["val/mse/zh"] < val[0]["val/mse/zh"]
    assert {f"val/translation_acc/{lang}" for lang in ("en", "zh", "fr", "ja")} <= set(val[-1])
    assert [p.name for p in complete_checkpoints(run)] == ["step-00000006", "step-00000009", "step-00000012"]
    assert final == run / "final"


def test_export_loads_with_plain_transformers_and_matches_training_model(tiny_teacher, tiny_student,
                                                                        parallel_dir, tmp_path):
    final = run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "run")
    model = AltCLIPTextModel.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    texts = ["A cat sleeps on the sofa.", "一只猫在沙发上睡觉。", "Un chat dort sur le canapé."]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    # The checkpoint's weights are the training-time model's; compare against them directly.
    trained = load_file(tmp_path / "run" / "checkpoints" / "step-00000006" / "model.safetensors")
    reference = build_student(str(tiny_student), model.config.project_dim)
    reference.load_state_dict({k.removeprefix("model."): v for k, v in trained.items()})
    reference.eval()
    with torch.no_grad():
        assert torch.equal(model(**tokens).pooler_output, reference(**tokens).pooler_output)
    assert (final / "model.safetensors").is_file()


def test_frozen_parameters_stay_bit_identical_and_out_of_the_optimizer(tiny_teacher, tiny_student,
                                                                       parallel_dir, tmp_path):
    from altclip_train.tasks.distill import DistillTask
    from altclip_train.train import build_optimizer

    freeze = r"['roberta\.embeddings\..*','roberta\.encoder\.layers\.0\..*']"
    final = run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "run", f"model.freeze={freeze}")
    before = build_student(str(tiny_student), 64).state_dict()
    after = AltCLIPTextModel.from_pretrained(final).state_dict()
    frozen = [k for k in before if k.startswith(("roberta.embeddings.", "roberta.encoder.layers.0."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["roberta.encoder.layers.1.output.dense.weight"],
                           after["roberta.encoder.layers.1.output.dense.weight"])

    task = DistillTask(str(tiny_teacher), str(tiny_student), freeze=[r"roberta\.embeddings\..*"])
    optimizer_params = {id(p) for group in build_optimizer(task, compose_config("distill").optim).param_groups
                        for p in group["params"]}
    assert not any(id(p) in optimizer_params for p in task.model.roberta.embeddings.parameters())
    task.train()
    assert not task.model.roberta.embeddings.training and task.model.roberta.encoder.training


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    # A constant schedule, so the shorter first leg sees the same learning rates as the long run.
    common = ("optim.schedule=constant", "optim.warmup_steps=0")
    straight = run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "straight", "trainer.max_steps=8",
                           "trainer.save_every=4", "trainer.resume=null", *common)
    first = run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "split", "trainer.max_steps=4",
                        "trainer.save_every=4", "trainer.resume=null", *common)
    assert first.exists()
    resumed = run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "split", "trainer.max_steps=8",
                          "trainer.save_every=4", "trainer.resume=auto", *common)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_half_written_checkpoint_is_never_resumed(tmp_path):
    from altclip_train.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoints"
    (root / "step-00000004").mkdir(parents=True)
    (root / "step-00000004" / "trainer_state.json").write_text(json.dumps({"step": 4}))
    (root / ".staging-step-00000008").mkdir()
    (root / "step-00000012").mkdir()  # renamed without its state file: incomplete
    assert latest_checkpoint(tmp_path) == root / "step-00000004"


def test_live_teacher_gives_the_same_first_loss_as_the_cache(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    common = ("trainer.max_steps=1", "trainer.log_every=1", "trainer.eval_at_start=false", "trainer.save_every=0",
              "data.bucket_by_length=false")
    run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "cached", *common)
    run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "live", "model.teacher_cache=false", *common)
    cached = read_metrics(tmp_path / "cached")[0]["train/loss"]
    live = read_metrics(tmp_path / "live")[0]["train/loss"]
    assert live == pytest.approx(cached, rel=2e-3)


def test_altclip_m9_recipe_builds_the_real_architectures_on_meta(tmp_path):
    from transformers import AltCLIPTextConfig, CLIPTextConfig, XLMRobertaConfig, XLMRobertaModel

    cfg = compose_config("distill", ["experiment=altclip_m9_distill"])
    assert cfg.model.teacher == "openai/clip-vit-large-patch14"
    assert cfg.model.student == "FacebookAI/xlm-roberta-large"
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.eps) == (1024, 1e-4, 0.1, 1e-8)
    assert (cfg.optim.warmup_steps, cfg.optim.grad_clip, cfg.trainer.epochs) == (500, 1.0, 10)
    assert cfg.trainer.mixed_precision == "bf16"
    # The hub configs of the two checkpoints, written out (no download).
    xlmr = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                            intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1)
    teacher_text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, projection_dim=768)
    from altclip_train.models.student import student_config_from_xlmr

    with torch.device("meta"):
        encoder = XLMRobertaModel(xlmr)
        student = AltCLIPTextModel(student_config_from_xlmr(xlmr, teacher_text.hidden_size))
    assert sum(p.numel() for p in encoder.parameters()) == 559_890_432
    # AltCLIP drops XLM-R's pooler (1024x1024 + 1024): it pools <s> after pre_LN + transformation.
    pooler = encoder.pooler.dense.weight.numel() + encoder.pooler.dense.bias.numel()
    assert sum(p.numel() for p in student.roberta.parameters()) == 559_890_432 - pooler
    assert student.transformation.out_features == 768
    assert isinstance(student.config, AltCLIPTextConfig)


def test_tensorboard_logger_writes_event_files(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "run", "logger=tensorboard",
                "trainer.max_steps=2", "trainer.save_every=0")
    assert list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert read_metrics(tmp_path / "run")  # metrics.jsonl is written whatever the tracker


@pytest.mark.slow
def test_wandb_logger_runs_offline_and_keeps_no_secret(tiny_teacher, tiny_student, parallel_dir, tmp_path,
                                                       monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-that-must-not-leak-0123456789")
    run_distill(tiny_teacher, tiny_student, parallel_dir, tmp_path / "run", "logger=wandb",
                "trainer.max_steps=2", "trainer.save_every=0")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".json", ".jsonl", ".log", ".txt"}:
            assert "secret-key-that-must-not-leak" not in path.read_text(errors="ignore"), path


def test_automodel_loads_phase1_output_and_leaves_transformers_class_untouched(tiny_teacher, tiny_student, tmp_path):
    """AutoModel (trust_remote_code) registers the class it loads for auto-saving; that must be our
    re-export's subclass, or every later save of transformers' AltCLIPTextModel in the process breaks."""
    from transformers import AutoModel

    from altclip_train.export import add_auto_model_entry
    from altclip_train.models.teachers import load_teacher

    student = build_student(str(tiny_student), load_teacher(str(tiny_teacher)).text_dim)
    student.save_pretrained(tmp_path / "phase1")
    AutoTokenizer.from_pretrained(tiny_student).save_pretrained(tmp_path / "phase1")
    add_auto_model_entry(tmp_path / "phase1")
    loaded = AutoModel.from_pretrained(tmp_path / "phase1", trust_remote_code=True)
    assert isinstance(loaded, AltCLIPTextModel) and AltCLIPTextModel._auto_class is None
    tokens = AutoTokenizer.from_pretrained(tmp_path / "phase1")(["a cat"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**tokens).pooler_output, student.eval()(**tokens).pooler_output)
    build_student(str(tiny_student), load_teacher(str(tiny_teacher)).text_dim).save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").is_file()
