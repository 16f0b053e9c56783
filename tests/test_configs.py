"""Every config in the tree composes and passes its schema, each value has one home (schemas hold
types, YAML holds values, experiments hold only what differs), runs land in Hydra's output dir, and
every config error is one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_class
from omegaconf import OmegaConf

from altclip_train import cli as cli_module
from altclip_train.cli import CONFIG_DIR, compose_config, latest_output, output_aliases, record_output
from altclip_train.config_schema import GROUP_SCHEMAS, ConfigError, dataclass_params, validate

PHASES = ("distill", "contrastive")


def experiments(phase: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "phases" / phase / "experiment").glob("*.yaml"))


def group_options(group: str, phase: str | None = None) -> list[str]:
    dirs = [CONFIG_DIR / group] + ([CONFIG_DIR / "phases" / phase / group] if phase else [])
    return sorted({p.stem for d in dirs for p in d.glob("*.yaml")})


@pytest.fixture(scope="module")
def earlier_phase1_outputs(tmp_path_factory):
    """What a finished phase 1 leaves for phase 2's `${latest_output:...}`: a model dir and its record."""
    names = {OmegaConf.load(path).get("name") for path in (CONFIG_DIR / "phases" / "distill" / "experiment").glob("*.yaml")}
    for name in sorted(name for name in names if name):
        final = tmp_path_factory.mktemp(name) / "final"
        final.mkdir()
        (final / "config.json").write_text("{}")
        record_output(name, final)


def offline(cfg):
    """The config with the lazily built tiny assets replaced by a path, so it resolves without them,
    and values a user must give (data.shards of a real run) given."""
    text = OmegaConf.to_yaml(cfg).replace("${tiny_asset:", "${oc.env:HOME,")
    return OmegaConf.create(re.sub(r": '?\?\?\?'?$", ": /given/on/the/command/line", text, flags=re.M))


@pytest.mark.parametrize("debug", [None, "default"])
@pytest.mark.parametrize("phase,experiment", [(phase, name) for phase in PHASES for name in experiments(phase)])
def test_every_experiment_composes_resolves_and_passes_the_schema(phase, experiment, debug, earlier_phase1_outputs):
    cfg = compose_config(phase, [f"experiment={experiment}", *([f"debug={debug}"] if debug else [])])
    cfg = offline(cfg)
    OmegaConf.resolve(cfg)
    validate(cfg)
    assert get_class(cfg.model._target_) and get_class(cfg.data._target_)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("group", ["optim", "trainer", "logger", "debug"])
def test_every_group_option_composes_and_passes_the_schema(group, phase):
    base = ["model.model.student=/s", "data.shards=/x"] if phase == "contrastive" else []
    for option in group_options(group, phase):
        cfg = compose_config(phase, [f"{group}={option}", *base])
        validate(cfg)


@pytest.mark.parametrize("group", sorted(GROUP_SCHEMAS))
def test_schemas_hold_types_and_yaml_holds_values(group):
    """One home per value: a schema field without a default is set in every YAML option of its group,
    and the schema gives no default that a YAML file also sets."""
    params = dataclass_params(GROUP_SCHEMAS[group])
    for option in group_options(group):
        values = yaml.safe_load((CONFIG_DIR / group / f"{option}.yaml").read_text())
        assert {p.name for p in params if p.required} <= set(values), option
        assert set(values) <= {p.name for p in params}, option


def flat_keys(node, prefix=""):
    """Leaf keys of a YAML mapping (lists and `_target_` nodes count as one value)."""
    for name, value in node.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and value and "_target_" not in value:
            yield from flat_keys(value, path + ".")
        else:
            yield path


def keys_set_to_default(phase: str, experiment: dict) -> list[str]:
    """Keys an experiment file sets to the value the config it starts from already has."""
    experiment = dict(experiment)
    # The experiment's own group choices (`override /model: clip`) pick the config it starts from.
    choices = [f"{k.split()[-1].lstrip('/')}={v}" for entry in experiment.pop("defaults", []) for k, v in entry.items()]
    base = OmegaConf.to_container(compose_config(phase, choices), resolve=False)
    copied = []
    for path in flat_keys(experiment):
        value, default = lookup(experiment, path), lookup(base, path)
        if value == default:
            copied.append(f"{path}={value!r}")
    return copied


def lookup(node, path: str):
    for name in path.split("."):
        if not isinstance(node, dict) or name not in node:
            return "<absent>"
        node = node[name]
    return node


@pytest.mark.parametrize("phase,experiment", [(phase, name) for phase in PHASES for name in experiments(phase)])
def test_no_experiment_sets_a_key_to_its_default(phase, experiment):
    raw = yaml.safe_load((CONFIG_DIR / "phases" / phase / "experiment" / f"{experiment}.yaml").read_text())
    assert keys_set_to_default(phase, raw) == [], f"{experiment} repeats defaults; leave them out"


def test_the_default_value_check_can_fail():
    copied = {"defaults": [{"override /logger": "jsonl"}], "name": "copied", "trainer": {"mixed_precision": "bf16"},
              "logger": {"trackers": []}, "data": {"languages": ["en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it"],
                                                   "batch_size": 64}}
    assert keys_set_to_default("distill", copied) == ["trainer.mixed_precision='bf16'", "logger.trackers=[]",
                                                      "data.languages=['en', 'zh', 'es', 'fr', 'ru', 'ja', 'ko', "
                                                      "'ar', 'it']"]


def test_phase_defaults_are_the_paper_recipes():
    distill, contrastive = compose_config("distill"), compose_config("contrastive")
    assert (distill.optim.lr, distill.optim.weight_decay, distill.optim.eps, distill.optim.warmup_steps,
            distill.optim.grad_clip, distill.trainer.epochs, distill.data.batch_size) == (1e-4, 0.1, 1e-8, 500, 1.0,
                                                                                        10, 1024)
    assert (contrastive.optim.lr, contrastive.optim.weight_decay, contrastive.optim.warmup_steps,
            contrastive.optim.grad_clip, contrastive.trainer.epochs, contrastive.data.batch_size) == (2e-6, 0.05, 2000,
                                                                                                   5.0, 1, 1024)
    # The shared base: both phases take the same loop groups and the same output rule.
    for key in ("seed", "cache_dir", "output_root"):
        assert distill[key] == contrastive[key]
    assert list(contrastive.model.freeze) == [r"(vision_model|visual_projection)\..*"]


def test_eval_config_composes():
    cfg = compose_config("eval", ["models.phase2=/tmp/x", "output_dir=/tmp/eval-out"])
    assert (cfg.models.phase2, cfg.output_dir) == ("/tmp/x", "/tmp/eval-out")


def test_experiment_names_are_per_phase():
    assert {"tiny", "altclip_m9_distill"} <= set(experiments("distill"))
    assert {"tiny", "altclip_m9_contrastive"} <= set(experiments("contrastive"))
    assert compose_config("distill", ["experiment=tiny"]).name == "distill-tiny"
    assert compose_config("contrastive", ["experiment=tiny"]).name == "contrastive-tiny"


def test_cluster_style_overrides_reach_the_config():
    cfg = compose_config("distill", ["experiment=altclip_m9_distill", "optim.lr=5e-5", "data.batch_size=2048",
                                     "trainer.max_steps=10", "data.corpora=[{lang: zh, path: /data/zh.tsv}]"])
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.trainer.max_steps) == (5e-5, 2048, 10)
    assert cfg.data.corpora[0].path == "/data/zh.tsv"


# --------------------------------------------------------------------------- where runs land
def test_run_dir_is_hydras_output_dir(tmp_path):
    assert compose_config("distill", ["experiment=tiny"]).run_dir == os.path.abspath("outputs/distill-tiny")
    assert compose_config("distill", ["experiment=tiny", "debug=default"]).run_dir == \
        os.path.abspath("outputs/debug/distill-tiny")
    assert compose_config("distill", [f"hydra.run.dir={tmp_path}/a"]).run_dir == f"{tmp_path}/a"
    assert compose_config("distill", [f"run_dir={tmp_path}/b"]).run_dir == f"{tmp_path}/b"  # the alias
    assert compose_config("contrastive", ["experiment=demo_teacher", "demo_dir=/d"]).run_dir == "/d/step0-teacher"
    assert output_aliases("distill", ["run_dir=/r", "optim.lr=1"]) == ["hydra.run.dir=/r", "hydra.sweep.dir=/r/sweep",
                                                                      "optim.lr=1"]
    assert output_aliases("distill", ["run_dir='/a b'"]) == ["hydra.run.dir='/a b'", "hydra.sweep.dir='/a b/sweep'"]
    assert output_aliases("eval", ["output_dir=/e"]) == ["hydra.run.dir=/e", "hydra.sweep.dir=/e/sweep"]


def test_a_later_phase_finds_the_latest_output_or_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli_module.UserError) as error:
        latest_output("never-ran")
    message = str(error.value)
    assert "\n" not in message and "never-ran.json (no record)" in message
    assert str(tmp_path / "outputs" / "never-ran" / "final") in message
    default = tmp_path / "outputs" / "never-ran" / "final"
    default.mkdir(parents=True)
    (default / "config.json").write_text("{}")
    assert latest_output("never-ran") == str(default)  # the default place, with no record
    elsewhere = tmp_path / "elsewhere" / "final"
    elsewhere.mkdir(parents=True)
    (elsewhere / "config.json").write_text("{}")
    record_output("never-ran", elsewhere)
    assert latest_output("never-ran") == str(elsewhere)  # the newest run wins, wherever it landed
    (elsewhere / "config.json").unlink()
    assert latest_output("never-ran") == str(default)  # a record of a deleted model falls back


# --------------------------------------------------------------------------- one-line errors
def run_cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(list(args))
    return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("override, line", [
    ("trainer.foo=1", "trainer.foo: unknown key (trainer has epochs, max_steps, grad_accum_steps, mixed_precision, "
                      "cpu, log_every, eval_every, eval_at_start, save_every, keep_last, resume, signal_check_every, "
                      "cpu_threads, compile)"),
    ("trainer.epoch=3", "trainer.epoch: unknown key (did you mean trainer.epochs?)"),
    ("+trainer.epoch=3", "trainer.epoch: unknown key (did you mean epochs?)"),
    ("data.batch_size=abc", "data.batch_size='abc': expected an integer"),
    ("optim.lr=fast", "optim.lr='fast': expected a number"),
    ("optim.schedule=exp", "optim.schedule='exp': expected one of cosine, linear, constant"),
    ("model.teacher_cache=maybe", "model.teacher_cache='maybe': expected true or false"),
    ("data.corpora=[{lang: zh, path: x.tsv, language_colum: l}]",
     "data.corpora[0].language_colum: unknown key (did you mean language_column?)"),
    ("data.corpora=[{lang: zh, path: x.tsv, weight: heavy}]", "data.corpora[0].weight='heavy': expected a number"),
    ("data.corpora=[zh.tsv]", "data.corpora=['zh.tsv']: expected a list of mappings"),
    ("experiment=nope", f"experiment=nope: no such experiment; choose one of {', '.join(experiments('distill'))}"),
    ("optim.lr=[1", "cannot read override 'optim.lr=[1': no viable alternative at input '[1'"),
    ("run_dir=a,b", "run_dir=a,b: run_dir takes one directory; to sweep, set hydra.sweep.dir and sweep other keys"),
])
def test_config_errors_are_one_line(override, line, capsys, tmp_path):
    code, err = run_cli(capsys, "distill", override, f"hydra.run.dir={tmp_path}")
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"altclip-train: error: {line}"), err


def test_a_required_value_left_unset_is_one_line(capsys, tmp_path):
    code, err = run_cli(capsys, "contrastive", f"hydra.run.dir={tmp_path}")
    assert (code, err) == (2, "altclip-train: error: model.model.student: not set; give it on the command line "
                              "(model.model.student=...)")


def test_phase2_tiny_says_in_one_line_where_it_looked(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALTCLIP_CACHE_DIR", str(tmp_path / "empty-cache"))
    code, err = run_cli(capsys, "contrastive", "experiment=tiny", "model.model.teacher=/t", f"run_dir={tmp_path}/r")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("altclip-train: error: model.model.student: no model from a run named 'distill-tiny': "
                          f"looked in {tmp_path}/empty-cache/runs/distill-tiny.json (no record) and "
                          f"{tmp_path}/outputs/distill-tiny/final"), err


def test_schema_errors_name_nested_targets():
    cfg = compose_config("contrastive", ["model.model.student=/s", "data.shards=/x", "+model.model.dropout=0.1"])
    with pytest.raises(ConfigError, match=r"^model.model.dropout: unknown key \(assemble takes teacher, "
                                          r"student, distill_target, trust_remote_code\)$"):
        validate(cfg)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "altclip_train", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_help_lists_every_command():
    result = cli("--help")
    assert result.returncode == 0
    for command in ("distill", "contrastive", "eval", "export", "prepare-wds", "cache-images", "demo"):
        assert command in result.stdout


def test_the_real_command_line_prints_one_line(tmp_path):
    for override, line in (("trainer.foo=1", "altclip-train: error: trainer.foo: unknown key ("),
                           ("data.batch_size=abc", "altclip-train: error: data.batch_size='abc': expected an integer")):
        result = cli("distill", override, f"run_dir={tmp_path}")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(line), result.stderr


def test_bad_input_inside_a_run_is_one_line(tiny_teacher, tiny_student, tmp_path):
    result = cli("distill", f"model.teacher={tiny_teacher}", f"model.student={tiny_student}",
                 f"data.corpora=[{{lang: zh, path: {tmp_path}/missing.tsv}}]", f"run_dir={tmp_path}/run",
                 "logger=jsonl")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("altclip-train: error: ") and f"{tmp_path}/missing.tsv" in last, result.stderr
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
        assert (run / ".hydra" / "config.yaml").is_file()  # Hydra's files land with the run, not beside it
        assert OmegaConf.load(run / "config.yaml").optim.lr == lr
