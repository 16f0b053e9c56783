"""Preemption on one process: SIGUSR1/SIGTERM mid-run -> checkpoint at the next step boundary and an
exit code for requeueing (128 + signal); the resumed run continues at the same data position and
ends with the same weights as an uninterrupted run; half-written checkpoint dirs are never resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from altclip_train.checkpoint import STATE_FILE, complete_checkpoints
from altclip_train.cli import compose_config
from altclip_train.data.parallel import ParallelTextData
from altclip_train.train import train
from conftest import distill_overrides
from launching import cli_command, final_weights, log_tail, start, train_losses, wait_until

STEPS = 12
SIGNAL_DURING_STEP = 6


def overrides(teacher, student, corpora, run_dir, *extra) -> list[str]:
    return distill_overrides(teacher, student, corpora, run_dir, f"trainer.max_steps={STEPS}", "trainer.save_every=4",
                             "trainer.keep_last=null", "trainer.log_every=1", "trainer.eval_every=0",
                             "trainer.eval_at_start=false", "trainer.signal_check_every=1", *extra)


@pytest.fixture(scope="module")
def uninterrupted(tiny_teacher, tiny_student, parallel_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(compose_config("distill", overrides(tiny_teacher, tiny_student, parallel_dir, run_dir)))
    return run_dir


def signal_during_step(monkeypatch, signum: int, step: int) -> None:
    """Deliver `signum` to this process while the batch of optimizer step `step` is being drawn."""
    original = ParallelTextData.train_batches

    def train_batches(self, epoch, start_batch=0):
        for index, batch in enumerate(original(self, epoch, start_batch), start=start_batch):
            if epoch == 0 and index == step - 1:
                os.kill(os.getpid(), signum)
            yield batch

    monkeypatch.setattr(ParallelTextData, "train_batches", train_batches)


def test_signal_saves_at_the_next_step_boundary_and_resume_matches_an_uninterrupted_run(
        tiny_teacher, tiny_student, parallel_dir, uninterrupted, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = compose_config("distill", overrides(tiny_teacher, tiny_student, parallel_dir, run_dir))
    signal_during_step(monkeypatch, signal.SIGUSR1, SIGNAL_DURING_STEP)
    with pytest.raises(SystemExit) as stopped:
        train(cfg)
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL, "the run must give the signal handlers back"
    checkpoints = complete_checkpoints(run_dir)
    assert [p.name for p in checkpoints] == ["step-00000004", f"step-{SIGNAL_DURING_STEP:08d}"]
    state = json.loads((checkpoints[-1] / STATE_FILE).read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (SIGNAL_DURING_STEP, 0, SIGNAL_DURING_STEP)
    assert not (run_dir / "final").exists()

    # What a kill during a later save leaves behind: a staging dir, and a dir renamed without its
    # state file. Resume must skip both and take the signal's checkpoint.
    shutil.copytree(checkpoints[-1], run_dir / "checkpoints" / ".staging-step-00000010")
    shutil.copytree(checkpoints[-1], run_dir / "checkpoints" / "step-00000011")
    (run_dir / "checkpoints" / "step-00000011" / STATE_FILE).unlink()

    monkeypatch.undo()
    train(cfg)
    reference, resumed = train_losses(uninterrupted), train_losses(run_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(SIGNAL_DURING_STEP + 1, STEPS + 1):
        assert resumed[step] == reference[step], f"step {step}: resumed at a different data position or state"
    a, b = final_weights(uninterrupted), final_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_the_cli_process_exits_with_the_requeue_code(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "run.log"
    proc = start(cli_command("distill", overrides(tiny_teacher, tiny_student, parallel_dir, run_dir,
                                                  "trainer.max_steps=1000", "trainer.save_every=0")), log)
    wait_until(lambda: bool(train_losses(run_dir)), proc, log, what="a first training step")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log_tail(log)
    [checkpoint] = complete_checkpoints(run_dir)
    step = json.loads((checkpoint / STATE_FILE).read_text())["step"]
    assert 1 <= step < 1000 and max(train_losses(run_dir)) == step
    assert "signal 15 received: saving at step" in log.read_text()
