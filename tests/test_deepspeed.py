"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (configs/accelerate/deepspeed_zero*.yaml), both
phases: runs complete, checkpoint ZeRO shards, resume from them, and export the full weights in the
same transformers format as a one-process run; phase 2's logit_scale (trained with shape [1], since
ZeRO cannot broadcast a 0-dim parameter) comes out a scalar again.

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
from launching import (
    accelerate_command,
    exported_outputs,
    final_weights,
    log_tail,
    phase_overrides,
    run,
    scaleout_inputs,
    train_losses,
)

pytest.importorskip("deepspeed")
pytestmark = [pytest.mark.deepspeed, pytest.mark.distributed, pytest.mark.slow]

STEPS = 8
COMMON = (f"trainer.max_steps={STEPS}", "trainer.save_every=4", "trainer.keep_last=null", "trainer.log_every=1",
          "trainer.eval_every=0", "trainer.eval_at_start=false")


@pytest.fixture(scope="module")
def inputs(tiny_teacher, tiny_student, parallel_dir, tmp_path_factory):
    return scaleout_inputs(tiny_teacher, tiny_student, parallel_dir, tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def one_process_runs(inputs, tmp_path_factory):
    """phase -> run dir of the same run on one plain process, made on first use."""
    made = {}

    def get(phase: str):
        if phase not in made:
            made[phase] = tmp_path_factory.mktemp(f"plain-{phase}") / "run"
            train(compose_config(phase, phase_overrides(phase, inputs, made[phase], *COMMON)))
        return made[phase]

    return get


# Resuming a ZeRO checkpoint does not depend on the phase; phase 2 under ZeRO-2 only runs and exports.
@pytest.mark.parametrize("phase, stage, resume", [("distill", 2, True), ("distill", 3, True),
                                                  ("contrastive", 2, False), ("contrastive", 3, True)])
def test_zero_run_completes_resumes_and_exports_full_weights(phase, stage, resume, inputs, one_process_runs,
                                                            tmp_path):
    run_dir = tmp_path / "run"
    command = accelerate_command(2, phase, phase_overrides(phase, inputs, run_dir, *COMMON),
                                 f"deepspeed_zero{stage}.yaml")
    run(command, tmp_path / "first.log")
    shards = run_dir / "checkpoints" / "step-00000004" / "pytorch_model"
    # DeepSpeed really ran (not a silent fallback to DDP): each rank saved its own optimizer shard.
    assert sorted(p.name for p in shards.glob("*optim_states.pt")) == [
        f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]
    first_losses, first_weights = train_losses(run_dir), final_weights(run_dir)

    if resume:  # take away the last checkpoint and the export, and launch the same command again
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

    # The export is whole (ZeRO-3 shards gathered), fp32, the same format as one process's, loads with
    # plain transformers (exported_outputs also checks logit_scale is a scalar) and computes what the
    # model one process trains on the same data computes.
    reference_dir = one_process_runs(phase)
    exported, reference = final_weights(run_dir), final_weights(reference_dir)
    assert exported.keys() == reference.keys()
    for name, value in reference.items():
        assert (exported[name].dtype, exported[name].shape) == (value.dtype, value.shape), name
    assert train_losses(run_dir)[STEPS] == pytest.approx(train_losses(reference_dir)[STEPS], rel=1e-4)
    if phase == "contrastive":  # the frozen image side leaves exactly as the teacher's
        from transformers import AltCLIPModel, CLIPModel

        teacher, model = CLIPModel.from_pretrained(inputs["teacher"]), AltCLIPModel.from_pretrained(run_dir / "final")
        for tower in ("vision_model", "visual_projection"):
            ours, theirs = getattr(model, tower).state_dict(), getattr(teacher, tower).state_dict()
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), tower
    torch.testing.assert_close(exported_outputs(run_dir / "final"), exported_outputs(reference_dir / "final"),
                               rtol=1e-3, atol=1e-3)
