"""FSDP2 (`torch.distributed.fsdp.fully_shard`) on two gloo CPU processes, phase 1 (tests/fsdp_probe.py):
the sharded run's losses equal DDP's step for step, a run resumed from its sharded checkpoint continues
with the same losses, and the gathered export equals the non-sharded (DDP) model's.

Accelerate itself cannot run FSDP on CPU (see README, Scaling out), so the probe applies `fully_shard` the
way Accelerate's FSDP2 plugin does and runs the shipped loop pieces around it.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from launching import PYTHON, REPO, exported_outputs, phase_overrides, run, scaleout_inputs

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.heavy]

STEPS, SAVE_AT = 8, 4


@pytest.fixture(scope="module")
def runs(tiny_teacher, tiny_student, parallel_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    inputs = scaleout_inputs(tiny_teacher, tiny_student, parallel_dir, root / "inputs")
    overrides = phase_overrides("distill", inputs, root / "unused")

    def launch(name: str, mode: str, *options: str) -> dict:
        out = root / name
        out.mkdir()
        run([PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--main_process_port", "0", str(REPO / "tests" / "fsdp_probe.py"), str(out), mode, str(STEPS), *options,
             "--", *overrides], root / f"{name}.log")
        ranks = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
        return {"dir": out, "ranks": ranks, "losses": {int(k): v for k, v in ranks[0]["losses"].items()}}

    return {"ddp": launch("ddp", "ddp"), "fsdp": launch("fsdp", "fsdp", "--save-at", str(SAVE_AT)),
            "resumed": launch("resumed", "fsdp", "--resume", str(root / "fsdp" / f"step-{SAVE_AT}"),
                              "--start", str(SAVE_AT))}


def test_parameters_are_sharded_across_the_two_ranks(runs):
    fsdp, ddp = runs["fsdp"]["ranks"], runs["ddp"]["ranks"]
    assert [r["world_size"] for r in fsdp] == [2, 2]
    assert sum(r["local_params"] for r in fsdp) == fsdp[0]["full_params"]  # each rank holds half
    assert all(r["local_params"] == r["full_params"] for r in ddp)


def test_sharded_losses_equal_ddp(runs):
    ddp, fsdp = runs["ddp"]["losses"], runs["fsdp"]["losses"]
    assert sorted(ddp) == sorted(fsdp) == list(range(1, STEPS + 1))
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=1e-5, abs=1e-7), step
    assert ddp[STEPS] < ddp[1]


def test_resume_from_the_sharded_checkpoint_continues_the_same_curve(runs):
    resumed, fsdp = runs["resumed"]["losses"], runs["fsdp"]["losses"]
    assert sorted(resumed) == list(range(SAVE_AT + 1, STEPS + 1))
    for step in resumed:
        assert resumed[step] == pytest.approx(fsdp[step], rel=1e-5, abs=1e-7), step


def test_gathered_export_equals_the_non_sharded_model(runs):
    weights = {name: load_file(runs[name]["dir"] / "final" / "model.safetensors") for name in ("ddp", "fsdp", "resumed")}
    assert {k: v.shape for k, v in weights["fsdp"].items()} == {k: v.shape for k, v in weights["ddp"].items()}
    for name in ("fsdp", "resumed"):
        for key, value in weights["ddp"].items():
            torch.testing.assert_close(weights[name][key], value, rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
        torch.testing.assert_close(exported_outputs(runs[name]["dir"] / "final"),
                                   exported_outputs(runs["ddp"]["dir"] / "final"), rtol=1e-4, atol=1e-5)
