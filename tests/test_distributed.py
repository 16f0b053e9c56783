"""Two gloo processes under `accelerate launch` (configs/accelerate/ddp.yaml): every sample once per
epoch across ranks; a run killed with SIGKILL resumes from its last complete checkpoint and finishes;
and its loss curve and weights match one process with the same global batch."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch

from altclip_train.checkpoint import complete_checkpoints
from altclip_train.cli import compose_config
from altclip_train.train import train
from conftest import distill_overrides
from launching import (
    PYTHON,
    REPO,
    accelerate_command,
    final_weights,
    kill_tree,
    run,
    start,
    text_embeddings,
    train_losses,
    wait_until,
    without_dropout,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 24  # two epochs of 12 global batches: 96 pairs (32 per corpus, none held out), 8 per batch


def overrides(teacher, student, corpora, run_dir, *extra) -> list[str]:
    return distill_overrides(teacher, student, corpora, run_dir, "data.val_size=0", f"trainer.max_steps={STEPS}",
                             "trainer.save_every=4", "trainer.keep_last=null", "trainer.log_every=1",
                             "trainer.eval_at_start=false", "trainer.eval_every=0", "trainer.signal_check_every=1",
                             *extra)


@pytest.fixture(scope="module")
def student(tiny_student, tmp_path_factory):
    return without_dropout(tiny_student, tmp_path_factory.mktemp("nodrop") / "xlmr")


@pytest.fixture(scope="module")
def two_process_run(tiny_teacher, student, parallel_dir, tmp_path_factory):
    """A two-process run killed with SIGKILL after its first checkpoint, then launched again to the end."""
    root = tmp_path_factory.mktemp("ddp")
    run_dir = root / "run"
    command = accelerate_command(2, "distill", overrides(tiny_teacher, student, parallel_dir, run_dir), "ddp.yaml")
    killed = start(command, root / "killed.log")
    wait_until(lambda: bool(complete_checkpoints(run_dir)), killed, root / "killed.log", what="a first checkpoint")
    kill_tree(killed)  # the launcher and both workers at once, as when a node dies
    finished_before_kill = (run_dir / "final").exists()
    last_complete = complete_checkpoints(run_dir)[-1]
    run(command, root / "resumed.log")
    return {"run_dir": run_dir, "last_complete": last_complete, "finished_before_kill": finished_before_kill,
            "resumed_log": (root / "resumed.log").read_text()}


def test_every_pair_is_seen_once_per_epoch_across_ranks(tiny_teacher, student, parallel_dir, tmp_path):
    from shard_probe import collect

    args = overrides(tiny_teacher, student, parallel_dir, tmp_path / "unused")
    out = tmp_path / "probe"
    run([PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--main_process_port", "0", str(REPO / "tests" / "shard_probe.py"), str(out), "2", "distill", *args],
        tmp_path / "probe.log")
    ranks = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    single = collect("distill", args, epochs=2)  # the same plan seen by one process
    assert single["world_size"] == 1
    every_pair = {pair for batch in single["epochs"][0] for pair in batch}
    assert len(every_pair) == 96
    for epoch in range(2):
        rank0, rank1 = ranks[0]["epochs"][epoch], ranks[1]["epochs"][epoch]
        assert len(rank0) == len(rank1) == 12 and all(len(b) == 4 for b in rank0 + rank1)
        seen = Counter(pair for batch in rank0 + rank1 for pair in batch)
        assert set(seen) == every_pair and max(seen.values()) == 1, f"epoch {epoch}: missing or repeated pairs"
        # Global batch k of the two ranks, in rank order, is exactly global batch k of one process.
        assert [a + b for a, b in zip(rank0, rank1)] == single["epochs"][epoch]
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1], "epochs should be reshuffled"


def test_sigkilled_run_resumes_from_its_last_complete_checkpoint_and_finishes(two_process_run):
    assert not two_process_run["finished_before_kill"], "the run ended before it could be killed"
    last = two_process_run["last_complete"]
    assert int(last.name.split("-")[1]) < STEPS
    resumed_from = re.search(r"resumed from (\S+) \(step (\d+)", two_process_run["resumed_log"])
    assert resumed_from and resumed_from.group(1) == str(last), two_process_run["resumed_log"][-3000:]
    run_dir = two_process_run["run_dir"]
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert complete_checkpoints(run_dir)[-1].name == f"step-{STEPS:08d}"


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_teacher, student, parallel_dir,
                                                                    two_process_run, tmp_path):
    """The two-process curve spans the kill: steps after the checkpoint come from the resumed launch,
    so this also shows the resume continued at the same data position with the same state."""
    train(compose_config("distill", overrides(tiny_teacher, student, parallel_dir, tmp_path / "one")))
    one, two = train_losses(tmp_path / "one"), train_losses(two_process_run["run_dir"])
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-7), f"step {step}"
    assert one[STEPS] < 0.7 * one[1]
    assert final_weights(tmp_path / "one").keys() == final_weights(two_process_run["run_dir"]).keys()
    torch.testing.assert_close(text_embeddings(two_process_run["run_dir"] / "final"),
                               text_embeddings(tmp_path / "one" / "final"), rtol=1e-4, atol=1e-5)
