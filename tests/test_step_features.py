"""Step-level options the real recipes use: `model.gradient_checkpointing` (same gradients, fewer saved
activations) and `trainer.compile` (torch.compile in place: the same losses as eager, and checkpoints and
export keep the eager parameter names)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from altclip_train.checkpoint import complete_checkpoints
from altclip_train.cli import compose_config
from altclip_train.models.tiny import SAMPLE_CAPTIONS
from altclip_train.tasks.contrastive import ContrastiveTask
from altclip_train.tasks.distill import DistillTask
from altclip_train.train import train
from conftest import distill_overrides
from launching import build_phase1_output, exported_outputs, train_losses, without_dropout


def student_batch(tokenizer_dir, rows: int = 4) -> dict:
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(tokenizer_dir)(
        list(SAMPLE_CAPTIONS["en"][:rows]) + list(SAMPLE_CAPTIONS["fr"][:rows]), padding=True, return_tensors="pt")
    return {"student_input_ids": tokens["input_ids"], "student_attention_mask": tokens["attention_mask"],
            "teacher_embeds": torch.randn(2 * rows, 64, generator=torch.Generator().manual_seed(0))}


def gradients_and_saved(task, batch) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of one training forward/backward (dropout on, seeded) and how many tensors autograd saved."""
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += 1
        return tensor

    task.train()
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = task(batch)["loss"]
    loss.backward()
    return {name: p.grad.clone() for name, p in task.named_parameters() if p.grad is not None}, saved


def test_gradient_checkpointing_gives_the_same_gradients_with_fewer_saved_tensors(tiny_teacher, tiny_student):
    results = {}
    for on in (False, True):
        torch.manual_seed(0)  # pre_LN / transformation start from the same random init
        task = DistillTask(str(tiny_teacher), str(tiny_student), gradient_checkpointing=on)
        results[on] = gradients_and_saved(task, student_batch(tiny_student))
    (plain, plain_saved), (checkpointed, checkpointed_saved) = results[False], results[True]
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    assert checkpointed_saved < plain_saved / 2  # the layers' activations are recomputed, not kept


def test_phase2_checkpoints_the_trained_text_tower_only(tiny_teacher, tiny_student, tmp_path):
    from altclip_train.models.assemble import assemble

    phase1 = build_phase1_output(tiny_teacher, tiny_student, tmp_path / "phase1")
    batch = student_batch(phase1)
    batch = {"input_ids": batch["student_input_ids"], "attention_mask": batch["student_attention_mask"],
             "image_embeds": torch.randn(8, 64, generator=torch.Generator().manual_seed(2))}
    results = {}
    for on in (False, True):
        task = ContrastiveTask(assemble(str(tiny_teacher), str(phase1)), str(phase1), str(tiny_teacher),
                               freeze=[r"vision_model\..*", r"visual_projection\..*"], gradient_checkpointing=on)
        results[on] = gradients_and_saved(task, batch), task
    (plain, plain_saved), _ = results[False]
    (checkpointed, checkpointed_saved), task = results[True]
    assert task.model.text_model.roberta.encoder.layers[0].gradient_checkpointing
    assert not task.model.vision_model.encoder.layers[0].gradient_checkpointing  # frozen: no graph to save
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    assert checkpointed_saved < plain_saved


@pytest.mark.slow
def test_compiled_run_matches_eager_and_saves_eager_names(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    # Dropout off: compiled code draws its random masks from another generator than eager code.
    student = without_dropout(tiny_student, tmp_path / "student")
    runs, graphs = {}, {}
    for compiled in (False, True):
        run_dir = tmp_path / ("compiled" if compiled else "eager")
        overrides = distill_overrides(tiny_teacher, student, parallel_dir, run_dir, "data.val_size=0",
                                      "trainer.max_steps=4", "trainer.log_every=1", "trainer.save_every=2",
                                      "data.pad_to_max_length=true",  # one shape: one compilation
                                      "trainer.eval_every=0", "trainer.eval_at_start=false",
                                      f"trainer.compile={str(compiled).lower()}")
        torch._dynamo.utils.counters.clear()
        train(compose_config("distill", overrides))
        graphs[compiled] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        runs[compiled] = run_dir
    assert graphs[False] == 0 and graphs[True] > 0
    eager, compiled = train_losses(runs[False]), train_losses(runs[True])
    assert sorted(eager) == sorted(compiled) == [1, 2, 3, 4]
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4), step

    for run_dir in runs.values():
        saved = [key for ckpt in complete_checkpoints(run_dir) for file in ckpt.glob("**/*.safetensors")
                 for key in load_file(file)]
        exported = list(load_file(run_dir / "final" / "model.safetensors"))
        assert saved and exported
        assert not [key for key in saved + exported if "_orig_mod" in key]
    eager_keys = set(load_file(runs[False] / "final" / "model.safetensors"))
    assert set(load_file(runs[True] / "final" / "model.safetensors")) == eager_keys
    torch.testing.assert_close(exported_outputs(runs[True] / "final"), exported_outputs(runs[False] / "final"),
                               rtol=1e-3, atol=1e-5)
