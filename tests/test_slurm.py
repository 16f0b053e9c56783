"""SLURM through Hydra: each task's SLURM variables become a correct torch.distributed environment
(faked SLURM environments), the `hydra/launcher=slurm` config asks for one task per GPU on every
node, and `hydra/launcher=submitit_local` runs a tiny two-task job end to end through the same
scheduler-variable path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from altclip_train.distributed import (
    apply_scheduler_env,
    expand_hostlist,
    expand_tasks_per_node,
    job_port,
    scheduler_torch_env,
    slurm_torch_env,
)
from conftest import distill_overrides
from launching import cli_command, log_tail, run, train_losses


def slurm_task(procid: int, localid: int, nodeid: int, **extra: str) -> dict[str, str]:
    """What srun gives task `procid` of a 2-node x 4-task step."""
    env = {"SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(procid),
           "SLURM_LOCALID": str(localid), "SLURM_NODEID": str(nodeid), "SLURM_NTASKS": "8",
           "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
           "SLURM_STEP_NODELIST": "gpu-node[017-018]", "SLURM_JOB_NODELIST": "gpu-node[017-018]"}
    env.update(extra)
    return env


@pytest.mark.parametrize("hostlist, hosts", [
    ("node1", ["node1"]),
    ("gpu[01-03,7]", ["gpu01", "gpu02", "gpu03", "gpu7"]),
    ("a[1-2],b3", ["a1", "a2", "b3"]),
    ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
    ("node[098-101]", ["node098", "node099", "node100", "node101"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


def test_bad_hostlist_and_tasks_per_node_say_what_they_could_not_read():
    with pytest.raises(ValueError, match=r"gpu\[a-b\]"):
        expand_hostlist("gpu[a-b]")
    with pytest.raises(ValueError, match="4x2"):
        expand_tasks_per_node("4x2")


def test_tasks_per_node_lists():
    assert expand_tasks_per_node("8") == [8]
    assert expand_tasks_per_node("4(x2),2") == [4, 4, 2]


def test_every_task_of_a_multi_node_step_gets_its_rank_and_the_same_rendezvous():
    layouts = [slurm_torch_env(slurm_task(procid, procid % 4, procid // 4)) for procid in range(8)]
    assert [env["RANK"] for env in layouts] == [str(r) for r in range(8)]
    assert [env["LOCAL_RANK"] for env in layouts] == ["0", "1", "2", "3"] * 2
    assert [env["NODE_RANK"] for env in layouts] == ["0"] * 4 + ["1"] * 4
    assert {env["WORLD_SIZE"] for env in layouts} == {"8"}
    assert {env["LOCAL_WORLD_SIZE"] for env in layouts} == {"4"}
    assert {(env["MASTER_ADDR"], env["MASTER_PORT"]) for env in layouts} == {("gpu-node017", str(job_port("123456")))}
    assert 1024 < job_port("123456") < 32768


def test_uneven_nodes_get_their_own_local_world_size():
    env = slurm_torch_env(slurm_task(4, 0, 1, SLURM_STEP_NUM_TASKS="6", SLURM_STEP_TASKS_PER_NODE="4,2"))
    assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("6", "2")


def test_explicit_master_address_and_port_win():
    env = slurm_torch_env(slurm_task(3, 3, 0, MASTER_ADDR="10.0.0.5", MASTER_PORT="29511"))
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.5", "29511")


@pytest.mark.parametrize("environ, why", [
    ({**slurm_task(1, 1, 0), "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "8"},
     "a launcher (srun accelerate launch) set them"),
    ({k: v for k, v in slurm_task(0, 0, 0).items() if k != "SLURM_STEP_ID"},
     "a batch script or salloc shell, not an srun step"),
    (slurm_task(0, 0, 0, SLURM_STEP_NUM_TASKS="1", SLURM_NTASKS="1"), "a single task"),
    ({"HOME": "/root"}, "not under SLURM"),
])
def test_nothing_is_set_outside_a_multi_task_srun_step(environ, why):
    assert scheduler_torch_env(environ) == {}, why


def test_apply_fills_the_environment_in_place_only_once():
    environ = slurm_task(5, 1, 1)
    mapped = apply_scheduler_env(environ)
    assert environ["RANK"] == "5" and mapped["MASTER_ADDR"] == "gpu-node017"
    assert apply_scheduler_env(environ) == {}  # now it looks launcher-set: left alone


def test_submitit_local_tasks_are_mapped_too():
    env = scheduler_torch_env({"SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_NTASKS": "2",
                               "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"})
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("1", "2", "127.0.0.1")


def test_slurm_launcher_submits_one_task_per_gpu_on_every_node(tmp_path, monkeypatch):
    """The real hydra-submitit-launcher code path up to `sbatch`, with the sweep from the README."""
    submitit = pytest.importorskip("submitit")
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from altclip_train.cli import CONFIG_DIR, register_resolvers, search_path_overrides

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit refuses to build a script without srun
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="distill", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.nodes=4", "hydra.launcher.gpus_per_node=8",
            "hydra.launcher.partition=gpu", "experiment=altclip_m9_distill", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *search_path_overrides("distill")])
    submitted = {}

    class Submitted(Exception):
        pass

    def map_array(executor, function, *job_args):
        submitted["jobs"] = len(job_args[0])
        submitted["sbatch"] = executor._executor._make_submission_file_text("python -u -m submitit.core._submit",
                                                                            "uid")
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([["optim.lr=5e-5"], ["optim.lr=1e-4"]], initial_job_idx=0)
    sbatch = submitted["sbatch"]
    assert submitted["jobs"] == 2
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --signal=USR2@180", "#SBATCH --job-name=altclip_m9_distill"):
        assert line in sbatch, sbatch
    assert "srun" in sbatch
    assert f"{tmp_path / 'sweep'}/.submitit/" in sbatch  # submitit's files land in the sweep dir


@pytest.mark.slow
@pytest.mark.distributed
def test_submitit_local_launcher_runs_a_two_task_job_end_to_end(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10",
            *distill_overrides(tiny_teacher, tiny_student, parallel_dir, run_dir, "trainer.eval_at_start=false",
                               "trainer.eval_every=0")]
    log = tmp_path / "launch.log"
    run(cli_command("distill", args), log)
    job_dir = run_dir / "sweep" / "0"  # a -m job trains in its own sweep dir
    assert (job_dir / "final" / "model.safetensors").is_file(), log_tail(log)
    assert sorted(train_losses(job_dir)) == [2, 4, 6]
    task_logs = "\n".join(p.read_text() for p in (run_dir / "sweep" / ".submitit").rglob("*_log.*"))
    for rank in (0, 1):
        assert f"distributed env from the scheduler: rank {rank} of 2" in task_logs, task_logs[-3000:]


FAKE_SRUN = """#!/bin/sh
# srun on one node: drop srun's own options, run the task as node 0 (signals reach it directly).
while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
SLURM_NODEID=0 exec "$@"
"""
FAKE_SCONTROL = """#!/bin/sh
case "$1" in
    show) echo localhost ;;
    requeue) echo "requeue $2" >> "$SCONTROL_LOG" ;;
esac
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_sbatch_template_turns_the_time_limit_signal_into_a_checkpoint_and_a_requeue(tiny_teacher, tiny_student,
                                                                                    parallel_dir, tmp_path):
    """scripts/slurm/multinode.sbatch on one 'node' of 2 gloo processes, with srun and scontrol faked:
    USR1 to the batch script (what --signal=B:USR1@300 sends) reaches every worker through srun and
    torchrun, the run checkpoints at a step boundary and stops, and the script requeues the job."""
    import signal
    import socket
    import sys

    from altclip_train.checkpoint import complete_checkpoints
    from launching import REPO, run_env, start, wait_until

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake_bin / name).write_text(text)
        (fake_bin / name).chmod(0o755)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = run_env(PATH=f"{fake_bin}:{Path(sys.executable).parent}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
                  SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1", GPUS_PER_NODE="2", MASTER_PORT=str(port),
                  ACCELERATE_CONFIG="configs/accelerate/ddp.yaml", SCONTROL_LOG=str(tmp_path / "scontrol.log"))
    run_dir = tmp_path / "run"
    overrides = distill_overrides(tiny_teacher, tiny_student, parallel_dir, run_dir, "trainer.max_steps=1000",
                                  "trainer.save_every=0", "trainer.log_every=1", "trainer.eval_at_start=false",
                                  "trainer.eval_every=0", "trainer.signal_check_every=1")
    log = tmp_path / "job.log"
    job = start(["bash", str(REPO / "scripts" / "slurm" / "multinode.sbatch"), "distill", *overrides], log, env)
    wait_until(lambda: bool(train_losses(run_dir)), job, log, what="a first training step")
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=180) == 0, log_tail(log)
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n", log_tail(log)
    [checkpoint] = complete_checkpoints(run_dir)
    assert int(checkpoint.name.split("-")[1]) < 1000 and not (run_dir / "final").exists()
    assert log.read_text().count("saving at step") >= 1
