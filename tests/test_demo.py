"""The bundled demo runs end to end through the real CLI (quick mode: a few steps per phase)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from altclip_train.demo.run import LANGUAGES


@pytest.mark.slow
@pytest.mark.heavy
def test_demo_quick_runs_every_step_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "WANDB_MODE": "offline", "ALTCLIP_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "altclip_train", "demo", "--quick", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for path in ("step0-teacher/final/model.safetensors", "step1-distill/final/model.safetensors",
                 "step1-altclip/config.json", "step2-contrastive/final/model.safetensors",
                 "step3-eval/eval.md", "step3-eval/eval.png", "step3-eval/eval.json"):
        assert (out / path).is_file(), path
    results = json.loads((out / "step3-eval" / "eval.json").read_text())["results"]
    assert set(results) == {"teacher", "phase1", "phase2"}
    for model in results.values():
        assert set(model["zeroshot"]) >= set(LANGUAGES)
    assert "Zero-shot classification" in result.stdout and "run dir:" in result.stdout
    # Step 2 trained on cached image embeddings: the cache entry sits next to the shards.
    assert any((out / "shards" / "multilingual" / ".altclip_cache").rglob("embeddings.f16"))
