"""The quick start shows learning: `distill experiment=tiny` lifts every language's val translation
accuracy well above chance, and `contrastive experiment=tiny` on its output lowers the loss.

A first-time user runs these two commands before anything else; flat curves there read as "broken".
Both run exactly as the README says (full settings, not `debug=default`), on the bundled assets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from launching import cli_command, log_tail, run, train_losses

M9 = ("en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it")
TINY_VAL_SIZE = 40  # configs/phases/distill/experiment/tiny.yaml: data.val_size


def val_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "val/translation_acc/zh" in row]


@pytest.mark.slow
@pytest.mark.heavy
def test_tiny_quick_start_shows_learning_in_both_phases(tmp_path):
    chance = 1 / TINY_VAL_SIZE
    phase1 = tmp_path / "distill"
    run(cli_command("distill", ["experiment=tiny", f"run_dir={phase1}"]), tmp_path / "distill.log", timeout=900)
    rows = val_rows(phase1)
    assert len(rows) >= 3, log_tail(tmp_path / "distill.log")
    first, last = rows[0], rows[-1]
    accuracy = {lang: last[f"val/translation_acc/{lang}"] for lang in M9}
    assert all(first[f"val/translation_acc/{lang}"] <= 2 * chance for lang in M9), first
    assert all(value >= 3 * chance for value in accuracy.values()), accuracy
    assert sum(accuracy.values()) / len(accuracy) >= 6 * chance, accuracy
    assert last["val/mse/zh"] < first["val/mse/zh"]

    phase2 = tmp_path / "contrastive"
    run(cli_command("contrastive", ["experiment=tiny", f"model.model.student={phase1 / 'final'}",
                                    f"run_dir={phase2}"]), tmp_path / "contrastive.log", timeout=900)
    losses = [loss for _, loss in sorted(train_losses(phase2).items())]
    assert len(losses) >= 4, log_tail(tmp_path / "contrastive.log")
    tail = sum(losses[-3:]) / 3
    assert tail < losses[0] - 0.1, losses
    assert tail < 0.7 * math.log(64), losses  # well below chance for a batch of 64 pairs
