"""Every config in the tree composes, overrides behave as on a cluster, and the CLI's errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from altclip_train.cli import CONFIG_DIR, compose_config

PHASES = ("distill", "contrastive")


def experiments(phase: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "phases" / phase / "experiment").glob("*.yaml"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("phase,experiment", [(phase, name) for phase in PHASES for name in experiments(phase)])
def test_every_experiment_composes_and_resolves(phase, experiment):
    cfg = compose_config(phase, [f"experiment={experiment}"])
    # Resolve everything except the lazily built tiny assets.
    OmegaConf.resolve(OmegaConf.create(OmegaConf.to_yaml(cfg).replace("${tiny_asset:", "${oc.env:HOME,")))
    assert get_class(cfg.model._target_) and get_class(cfg.data._target_)


@pytest.mark.parametrize("group", ["optim", "trainer", "logger"])
def test_every_group_option_composes_with_both_phases(group):
    for phase in PHASES:
        for option in group_options(group):
            cfg = compose_config(phase, [f"{group}={option}"])
            assert cfg[group] is not None


def test_eval_config_composes():
    cfg = compose_config("eval", ["models.phase2=/tmp/x"])
    assert cfg.models.phase2 == "/tmp/x"


def test_experiment_names_are_per_phase():
    assert {"tiny", "altclip_m9_distill"} <= set(experiments("distill"))
    assert {"tiny", "altclip_m9_contrastive"} <= set(experiments("contrastive"))
    assert compose_config("distill", ["experiment=tiny"]).name == "distill-tiny"
    assert compose_config("contrastive", ["experiment=tiny"]).name == "contrastive-tiny"


def test_cluster_style_overrides_reach_the_config():
    cfg = compose_config("distill", ["experiment=altclip_m9_distill", "optim.lr=5e-5", "data.batch_size=2048",
                                     "trainer.max_steps=10", "+data.corpora=[{lang: zh, path: /data/zh.tsv}]"]
                         [:-1] + ["data.corpora=[{lang: zh, path: /data/zh.tsv}]"])
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.trainer.max_steps) == (5e-5, 2048, 10)
    assert cfg.data.corpora[0].path == "/data/zh.tsv"


def test_m9_contrastive_recipe():
    cfg = compose_config("contrastive", ["experiment=altclip_m9_contrastive"])
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.eps) == (1024, 2e-6, 0.05, 1e-8)
    assert (cfg.optim.warmup_steps, cfg.optim.grad_clip, cfg.trainer.epochs) == (2000, 5.0, 1)
    assert cfg.trainer.mixed_precision == "bf16"
    assert list(cfg.model.freeze) == [r"vision_model\..*", r"visual_projection\..*"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "altclip_train", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_help_lists_every_command():
    result = cli("--help")
    assert result.returncode == 0
    for command in ("distill", "contrastive", "eval", "export", "prepare-wds", "cache-images", "demo"):
        assert command in result.stdout


def test_unknown_key_and_wrong_type_give_hydras_short_error(tmp_path):
    result = cli("distill", "optim.learning_rate=1e-4", f"run_dir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Could not override 'optim.learning_rate'" in result.stderr
    result = cli("distill", "optim.lr=fast", f"run_dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("altclip-train: error: optim.lr: Value 'fast' of type 'str' could not be "
                                     "converted to Float")
    result = cli("distill", "experiment=nope", f"run_dir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr and "experiment" in result.stderr


def test_bad_input_inside_a_run_is_one_line(tiny_teacher, tiny_student, tmp_path):
    result = cli("distill", f"model.teacher={tiny_teacher}", f"model.student={tiny_student}",
                 f"data.corpora=[{{lang: zh, path: {tmp_path}/missing.tsv}}]", f"run_dir={tmp_path}/run",
                 "logger=jsonl")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"altclip-train: error: corpus file not found: {tmp_path}/missing.tsv"
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sweep_jobs_get_their_own_run_dirs(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    from conftest import distill_overrides

    overrides = distill_overrides(tiny_teacher, tiny_student, parallel_dir, tmp_path / "run", "trainer.max_steps=2",
                                  "trainer.save_every=0", "trainer.eval_at_start=false")
    result = cli("distill", "-m", *overrides, "optim.lr=1e-3,1e-4")
    assert result.returncode == 0, result.stderr[-2000:]
    for job, lr in ((0, 0.001), (1, 0.0001)):
        run = tmp_path / "run" / "sweep" / str(job)
        assert (run / "final" / "model.safetensors").is_file()
        assert OmegaConf.load(run / "config.yaml").optim.lr == lr
