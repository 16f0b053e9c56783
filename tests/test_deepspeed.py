"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (configs/accelerate/deepspeed_zero*.yaml): runs
complete, checkpoint ZeRO shards, resume from them, and export the full weights in the same
transformers format as a one-process run.

DeepSpeed JIT-builds a small CPU op the first time (about a minute); it is cached under
`.cache/torch_extensions` (see tests/launching.py). Skip locally with `-m "not deepspeed"`.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from altclip_train.cli import compose_config
from altclip_train.train import train
from conftest import distill_overrides
from launching import accelerate_command, final_weights, log_tail, run, text_embeddings, train_losses, without_dropout

pytest.importorskip("deepspeed")
pytestmark = [pytest.mark.deepspeed, pytest.mark.distributed, pytest.mark.slow]

STEPS = 8


def overrides(teacher, student, corpora, run_dir, *extra) -> list[str]:
    return distill_overrides(teacher, student, corpora, run_dir, f"trainer.max_steps={STEPS}", "trainer.save_every=4",
                             "trainer.keep_last=null", "trainer.log_every=1", "trainer.eval_every=4",
                             "trainer.eval_at_start=false", *extra)


@pytest.fixture(scope="module")
def student(tiny_student, tmp_path_factory):
    return without_dropout(tiny_student, tmp_path_factory.mktemp("nodrop") / "xlmr")


@pytest.fixture(scope="module")
def one_process_run(tiny_teacher, student, parallel_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    train(compose_config("distill", overrides(tiny_teacher, student, parallel_dir, run_dir)))
    return run_dir


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_run_completes_resumes_and_exports_full_weights(stage, tiny_teacher, student, parallel_dir,
                                                            one_process_run, tmp_path):
    run_dir = tmp_path / "run"
    command = accelerate_command(2, "distill", overrides(tiny_teacher, student, parallel_dir, run_dir),
                                 f"deepspeed_zero{stage}.yaml")
    run(command, tmp_path / "first.log")
    shards = run_dir / "checkpoints" / "step-00000004" / "pytorch_model"
    # DeepSpeed really ran (not a silent fallback to DDP): each rank saved its own optimizer shard.
    assert sorted(p.name for p in shards.glob("*optim_states.pt")) == [
        f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]
    first_losses, first_weights = train_losses(run_dir), final_weights(run_dir)

    # Resume: take away the last checkpoint and the export, and launch the same command again.
    shutil.rmtree(run_dir / "checkpoints" / f"step-{STEPS:08d}")
    shutil.rmtree(run_dir / "final")
    run(command, tmp_path / "resumed.log")
    assert re.search(r"resumed from \S+step-00000004 \(step 4", (tmp_path / "resumed.log").read_text()), \
        log_tail(tmp_path / "resumed.log")
    resumed_losses = train_losses(run_dir)
    for step in range(5, STEPS + 1):
        assert resumed_losses[step] == pytest.approx(first_losses[step], rel=1e-5), f"step {step}"
    resumed_weights = final_weights(run_dir)
    for name in first_weights:
        torch.testing.assert_close(resumed_weights[name], first_weights[name], rtol=1e-5, atol=1e-6, msg=name)

    # The export is whole (ZeRO-3 shards gathered), fp32, loads with plain transformers, and computes
    # what the model one process trains on the same data computes.
    reference = final_weights(one_process_run)
    assert resumed_weights.keys() == reference.keys()
    for name, value in reference.items():
        assert resumed_weights[name].dtype == torch.float32 and resumed_weights[name].shape == value.shape, name
    torch.testing.assert_close(text_embeddings(run_dir / "final"), text_embeddings(one_process_run / "final"),
                               rtol=1e-4, atol=1e-5)
    assert first_losses[STEPS] == pytest.approx(train_losses(one_process_run)[STEPS], rel=1e-4)
