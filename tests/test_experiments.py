"""Every experiment runs end to end on its debug settings (`debug=default`), as a user would chain
them (lightning-hydra-template's sweep test): the demo's three steps, phase 1 -> phase 2 of `tiny`
and of the m9 recipe (on the tiny models, since hubs are out of reach). Each run lands in Hydra's
output dir, with Hydra's own files beside the run's, and phase 2 finds phase 1's model wherever
that landed."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from altclip_train.cli import CONFIG_DIR
from launching import cli_command, run, run_env

# (phase, experiment) in the order the tests below run them; a new experiment must join a chain.
RUNS = [("contrastive", "demo_teacher"), ("distill", "demo_distill"), ("contrastive", "demo_contrastive"),
        ("distill", "tiny"), ("contrastive", "tiny"),
        ("distill", "altclip_m9_distill"), ("contrastive", "altclip_m9_contrastive"), ("distill", "add_languages"),
        ("distill", "siglip_so400m_distill"), ("contrastive", "siglip_so400m_contrastive"),
        # run by tests/interop/test_open_clip_family.py (needs the open_clip extra: make test-interop)
        ("distill", "laion_xlmr_vit_h14_distill"), ("contrastive", "laion_xlmr_vit_h14_contrastive")]


def test_every_experiment_is_run_end_to_end_below():
    found = {(p.parent.parent.name, p.stem) for p in (CONFIG_DIR / "phases").glob("*/experiment/*.yaml")}
    assert found == set(RUNS)


def run_experiment(phase: str, experiment: str, log: Path, *overrides: str, cwd: Path | None = None) -> None:
    cmd = cli_command(phase, [f"experiment={experiment}", "debug=default", *overrides])
    if cwd is None:
        run(cmd, log)
        return
    import subprocess

    with log.open("w") as out:
        result = subprocess.run(cmd, cwd=cwd, env=run_env(), stdout=out, stderr=subprocess.STDOUT, timeout=600)
    assert result.returncode == 0, log.read_text()[-3000:]


def assert_landed(run_dir: Path) -> None:
    """Everything of one run in one dir: the model, metrics, resolved config and Hydra's files."""
    for name in ("final/config.json", "final/model.safetensors", "metrics.jsonl", "config.yaml",
                 ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (run_dir / name).is_file(), f"{run_dir}: no {name}"


@pytest.mark.slow
@pytest.mark.heavy
def test_demo_experiments(tmp_path):
    from altclip_train.demo.run import prepare

    demo = tmp_path / "demo"
    prepare(demo, 0, run_env())
    for (phase, experiment), step in zip(RUNS[:3], ("step0-teacher", "step1-distill", "step2-contrastive")):
        run_experiment(phase, experiment, tmp_path / f"{experiment}.log", f"demo_dir={demo}")
        assert_landed(demo / step)


@pytest.mark.slow
def test_tiny_phase2_finds_phase1_wherever_it_landed(tmp_path):
    landed = tmp_path / "somewhere" / "phase1"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_experiment("distill", "tiny", tmp_path / "distill.log", f"hydra.run.dir={landed}", cwd=tmp_path / "a")
    assert_landed(landed)
    assert not (tmp_path / "a" / "outputs").exists()  # nothing split off into the working directory
    run_experiment("contrastive", "tiny", tmp_path / "contrastive.log", cwd=tmp_path / "b")
    phase2 = tmp_path / "b" / "outputs" / "debug" / "contrastive-tiny"  # debug runs stay apart from real ones
    assert_landed(phase2)
    assert OmegaConf.load(phase2 / "config.yaml").model.model.student == str(landed / "final")


@pytest.mark.slow
def test_m9_recipes_on_the_tiny_models(tmp_path):
    from altclip_train.assets import tiny_asset

    corpora = ",".join(f"{{lang: {lang}, path: '{tiny_asset('data')}/parallel/{lang}.tsv'}}"
                       for lang in ("zh", "es", "fr", "ru", "ja", "ko", "ar", "it"))
    run_experiment("distill", "altclip_m9_distill", tmp_path / "m9_distill.log", f"run_dir={tmp_path / 'p1'}",
                   f"model.teacher={tiny_asset('teacher')}", f"model.student={tiny_asset('student')}",
                   f"data.corpora=[{corpora}]")
    assert_landed(tmp_path / "p1")
    run_experiment("contrastive", "altclip_m9_contrastive", tmp_path / "m9_contrastive.log",
                   f"run_dir={tmp_path / 'p2'}", f"model.model.teacher={tiny_asset('teacher')}",
                   f"data.shards={tiny_asset('shards')}")
    assert_landed(tmp_path / "p2")
    assert OmegaConf.load(tmp_path / "p2" / "config.yaml").model.model.student == str(tmp_path / "p1" / "final")
    # Growing it: the m9 phase-1 model continues on one language with another replayed.
    replay = f"[{{lang: zh, path: '{tiny_asset('data')}/parallel/zh.tsv'}}]"
    run_experiment("distill", "add_languages", tmp_path / "add.log", f"run_dir={tmp_path / 'p3'}",
                   f"model.teacher={tiny_asset('teacher')}", f"data.corpora=[{{lang: ko, path: "
                   f"'{tiny_asset('data')}/parallel/ko.tsv'}}]", f"data.replay.corpora={replay}")
    assert_landed(tmp_path / "p3")
    assert OmegaConf.load(tmp_path / "p3" / "config.yaml").model.student == str(tmp_path / "p1" / "final")


@pytest.mark.slow
@pytest.mark.heavy  # CI's guard for the same path: test_teacher_families.py's SigLIP phase-2 end-to-end test
def test_siglip_recipes_on_a_tiny_siglip(tmp_path):
    from altclip_train.assets import tiny_asset
    from altclip_train.models.tiny import SAMPLE_SENTENCES, build_tiny_siglip

    teacher = build_tiny_siglip(tmp_path / "siglip", SAMPLE_SENTENCES)
    corpora = ",".join(f"{{lang: {lang}, path: '{tiny_asset('data')}/parallel/{lang}.tsv'}}" for lang in ("zh", "ja"))
    run_experiment("distill", "siglip_so400m_distill", tmp_path / "distill.log", f"run_dir={tmp_path / 'p1'}",
                   f"model.teacher={teacher}", f"model.student={tiny_asset('student')}", f"data.corpora=[{corpora}]")
    assert_landed(tmp_path / "p1")
    run_experiment("contrastive", "siglip_so400m_contrastive", tmp_path / "contrastive.log",
                   f"run_dir={tmp_path / 'p2'}", f"model.model.teacher={teacher}", f"data.shards={tiny_asset('shards')}")
    assert_landed(tmp_path / "p2")
    card = (tmp_path / "p2" / "final" / "README.md").read_text(encoding="utf-8")
    assert "`siglip`" in card and "`embedding`" in card and "SiglipImageProcessor" in card
