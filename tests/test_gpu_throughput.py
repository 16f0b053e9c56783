"""bench/gpu_throughput.py times the shipped code: run on CPU with shrunken configs, every step must go
through the Task classes' own forward, `accelerator.backward`, and an optimizer from
`altclip_train.train.build_optimizer` (fused AdamW), over the data modules the configs instantiate."""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

import altclip_train.train as loop
from altclip_train.tasks.contrastive import ContrastiveTask
from altclip_train.tasks.distill import DistillTask

BENCH = Path(__file__).resolve().parents[1] / "bench"
MAIN_CASES = ("phase1/teacher-cache", "phase1/live-teacher", "phase2/image-cache", "phase2/live-tower")


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("gpu_throughput")
    finally:
        sys.path.remove(str(BENCH))


def spy(monkeypatch, owner, name: str, calls: Counter, key: str, record=None):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls[key] += 1
        result = original(*args, **kwargs)
        if record is not None:
            record(args, result)
        return result

    monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.slow
def test_script_times_the_shipped_task_optimizer_and_data(script, tmp_path, monkeypatch):
    calls, optimizers, batch_keys = Counter(), [], []
    spy(monkeypatch, DistillTask, "forward", calls, "distill_forward",
        record=lambda args, _: batch_keys.append(sorted(args[1])))
    spy(monkeypatch, ContrastiveTask, "forward", calls, "contrastive_forward",
        record=lambda args, _: batch_keys.append(sorted(args[1])))
    spy(monkeypatch, Accelerator, "backward", calls, "backward")
    spy(monkeypatch, loop, "build_optimizer", calls, "build_optimizer",
        record=lambda args, optimizer: optimizers.append(optimizer))
    spy(monkeypatch, loop, "training_step", calls, "training_step")

    out = tmp_path / "result.json"
    status = script.main(["--device", "cpu", "--size", "tiny", "--batch-size", "8", "--warmup", "1", "--steps", "2",
                          "--override", "data.num_workers=0", "--cases", ",".join(MAIN_CASES),
                          "--work-dir", str(tmp_path / "work"), "--json-out", str(out)])
    assert status == 0
    steps_per_case = 3
    assert calls["distill_forward"] == calls["contrastive_forward"] == 2 * steps_per_case
    assert calls["backward"] == calls["training_step"] == 4 * steps_per_case
    assert calls["build_optimizer"] == len(optimizers) == 4
    assert all(isinstance(o, torch.optim.AdamW) and o.defaults["fused"] for o in optimizers)
    # The batches came from the data modules in each case's mode: cached targets, live teacher tokens,
    # cached image embeddings, decoded pixels.
    kinds = {("teacher_embeds" in k, "teacher_input_ids" in k, "image_embeds" in k, "pixel_values" in k)
             for k in batch_keys}
    assert kinds == {(True, False, False, False), (False, True, False, False), (False, False, True, False),
                     (False, False, False, True)}

    payload = json.loads(out.read_text())
    cases = {row["case"]: row for row in payload["cases"]}
    assert set(cases) == set(MAIN_CASES)
    for row in cases.values():
        assert row["pairs_per_s"] > 0 and row["text_tokens_per_s"] > 0 and row["gflops_per_pair"] > 0
        assert math.isfinite(row["final_loss"]) and row["fused_adamw"] and 0 < row["pad_efficiency"] <= 1
    # Live frozen towers add their forward to the counted work.
    assert cases["phase1/live-teacher"]["gflops_per_pair"] > cases["phase1/teacher-cache"]["gflops_per_pair"]
    assert cases["phase2/live-tower"]["gflops_per_pair"] > cases["phase2/image-cache"]["gflops_per_pair"]
    assert "pairs_per_s_vs_live_tower" in cases["phase2/image-cache"]


def test_arguments_and_budget(script):
    args = script.parse_args(["--cases", "phase1/teacher-cache,phase1/teacher-cache+compile", "--budget-s", "5"])
    assert args.cases == ["phase1/teacher-cache", "phase1/teacher-cache+compile"] and args.budget_s == 5
    with pytest.raises(SystemExit):
        script.parse_args(["--cases", "phase3/none"])
    results = [{"case": "phase1/teacher-cache", "pairs_per_s": 100.0, "peak_memory_gib": 10.0},
               {"case": "phase1/teacher-cache+grad-ckpt", "pairs_per_s": 80.0, "peak_memory_gib": 4.0},
               {"case": "phase1/teacher-cache+compile", "skipped": "would pass --budget-s 5"}]
    assert script.add_ratios(results) == {"phase1/teacher-cache+grad-ckpt": pytest.approx(0.8)}
    assert results[1]["pairs_per_s_vs_base"] == pytest.approx(0.8)
    assert results[1]["peak_memory_vs_base"] == pytest.approx(0.4)
    assert "would pass" in script.table(results)
