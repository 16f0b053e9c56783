"""Shared fixtures: tiny CLIP/XLM-R checkpoints saved to disk (loaded through the same
`from_pretrained` path a hub id takes), small parallel corpora, and a helper to run a phase; the interop
suite (tests/interop/) is collected only where open_clip and clip_benchmark import."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from altclip_train.models.tiny import SAMPLE_CAPTIONS, SAMPLE_SENTENCES, build_tiny_clip, build_tiny_xlmr  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# tests/interop/ is `make test-interop`'s suite, run in its own venv with open_clip and CLIP_benchmark; where
# either is missing (the project's .venv, CI) the folder is not collected at all. This lives here, not in a
# conftest of that folder: a second `conftest` module would shadow this one for `from conftest import ...`.
if any(importlib.util.find_spec(name) is None for name in ("open_clip", "clip_benchmark")):
    collect_ignore_glob = ["interop/*"]


@pytest.fixture(autouse=True)
def root_logging_restored():
    """A test that runs a command in-process configures root logging for it (`setup_logging`); the handler it
    adds must not outlive the test, or later tests' captured stderr gets its INFO lines."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@dataclass
class FakeAccelerator:
    """What data modules read from an Accelerator, for simulating ranks in one process."""

    process_index: int = 0
    num_processes: int = 1
    gradient_accumulation_steps: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_local_main_process(self) -> bool:
        return self.process_index == 0

    def wait_for_everyone(self) -> None:
        pass


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep embedding caches and tiny assets out of the user's home."""
    cache = tmp_path_factory.mktemp("altclip_cache")
    os.environ["ALTCLIP_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("teacher") / "clip", SAMPLE_SENTENCES)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    return build_tiny_xlmr(tmp_path_factory.mktemp("student") / "xlmr", SAMPLE_SENTENCES)


def write_parallel_tsv(path: Path, lang: str, repeat: int = 4) -> Path:
    """A TSV (columns en, <lang>) built from the aligned sample captions, with numbered variants."""
    rows = ["en\t" + lang]
    for copy in range(repeat):
        for en, other in zip(SAMPLE_CAPTIONS["en"], SAMPLE_CAPTIONS[lang]):
            rows.append(f"{en} {copy}\t{other} {copy}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def parallel_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parallel")
    for lang in ("zh", "fr", "ja"):
        write_parallel_tsv(root / f"{lang}.tsv", lang)
    return root


def distill_overrides(teacher: Path, student: Path, corpora_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    corpora = ",".join(f"{{lang: {lang}, path: '{corpora_dir / (lang + '.tsv')}'}}" for lang in ("zh", "fr", "ja"))
    return [
        f"model.teacher={teacher}", f"model.student={student}", f"data.corpora=[{corpora}]",
        f"run_dir={run_dir}", "debug=default", *extra,  # configs/phases/distill/debug/default.yaml
    ]
