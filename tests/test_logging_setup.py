"""Tests for the process-wide logging setup: the noise that hid real warnings is gone, real warnings
still show, log lines never share a line with a progress bar, and `datasets` caches under the
project's cache dir."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
from tqdm import tqdm

from altclip_train import cli
from altclip_train.logging_setup import TqdmHandler, setup_logging


@pytest.fixture
def restore_logging():
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    hf_logging.disable_propagation()
    hf_logging.enable_default_handler()


def _lines(text: str) -> list[str]:
    """What a terminal shows: a carriage return starts the line over."""
    return [segment for segment in re.split(r"[\r\n]", text) if segment.strip()]


def test_log_records_never_land_on_a_progress_bar_line(restore_logging):
    stream = io.StringIO()
    logger = logging.getLogger("altclip_train.test_bar")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for handler_class in (TqdmHandler, logging.StreamHandler):
        stream.seek(0)
        stream.truncate()
        handler = handler_class(stream)
        logger.addHandler(handler)
        with tqdm(total=10, file=stream, desc="train", ascii=True) as bar:
            bar.update(3)
            logger.warning("ran out of samples")
            bar.update(3)
        logger.removeHandler(handler)
        shared = [line for line in _lines(stream.getvalue()) if "ran out of samples" in line and "train" in line]
        if handler_class is TqdmHandler:
            assert "ran out of samples" in stream.getvalue() and not shared
        else:  # the plain handler is what we replaced: its line carries the bar
            assert shared


def test_the_handler_follows_stderr_when_it_is_swapped_and_the_old_one_closed(restore_logging, monkeypatch):
    """A run in-process (a test's captured stderr, a notebook) leaves the root handler behind; a later command
    with another stderr must log there, not into the closed stream with "--- Logging error ---"."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging(logging.INFO)
    logging.getLogger("altclip_train.test_follow").info("first command")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("altclip_train.test_follow").info("second command")
    assert "second command" in second.getvalue() and "Logging error" not in second.getvalue()


def test_setup_logging_routes_transformers_records_through_one_handler(restore_logging, capsys):
    from transformers.utils import logging as hf_logging

    setup_logging(logging.INFO)
    handlers = logging.getLogger().handlers
    assert len(handlers) == 1 and isinstance(handlers[0], TqdmHandler)
    hf_logging.get_logger("transformers.modeling_utils").warning("a real transformers warning")
    logging.getLogger("altclip_train.x").info("an info line")
    err = capsys.readouterr().err
    assert err.count("a real transformers warning") == 1 and "an info line" in err
    setup_logging(logging.WARNING)  # a non-main rank
    logging.getLogger("altclip_train.x").info("hidden")
    logging.getLogger("altclip_train.x").warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and "shown" in err


def test_cli_configures_the_process_before_running_a_command(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "configure_process", lambda: calls.append(True))
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
    assert calls == [True]


def _run(script: str, tmp_path, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DS_ACCELERATOR", "HF_DATASETS_CACHE",
                                                            "ACCELERATE_USE_DEEPSPEED"}}
    env.update(ALTCLIP_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


NOISY_RUN = """
    import logging
    from pathlib import Path

    import torch
    from safetensors.torch import load_file, save_file

    from altclip_train.logging_setup import configure_process
    configure_process()

    from accelerate.utils import extract_model_from_parallel
    from transformers import AltCLIPProcessor
    from transformers.utils import logging as hf_logging

    from altclip_train.data.images import ImagePreprocessor
    from altclip_train.models.student import build_student
    from altclip_train.models.tiny import build_tiny_clip, build_tiny_xlmr

    teacher = build_tiny_clip(Path("teacher"))
    student = build_tiny_xlmr(Path("student"))
    build_student(str(student), 64)                      # XLM-R with a pooler the encoder leaves out
    ImagePreprocessor.from_pretrained(str(teacher))
    from transformers import AutoTokenizer

    AltCLIPProcessor(image_processor=ImagePreprocessor.from_pretrained(str(teacher)).processor,
                     tokenizer=AutoTokenizer.from_pretrained(str(student))).save_pretrained("processor")
    AltCLIPProcessor.from_pretrained("processor")
    extract_model_from_parallel(torch.nn.Linear(1, 1))  # accelerate imports deepspeed here

    # A checkpoint with a weight that really does not belong: that still gets a line.
    weights = load_file(student / "model.safetensors")
    weights["encoder.extra.weight"] = torch.zeros(2)
    save_file(weights, student / "model.safetensors", metadata={"format": "pt"})
    build_student(str(student), 64)

    hf_logging.get_logger("transformers.modeling_utils").warning("REAL transformers warning")
    logging.getLogger("altclip_train.data").warning("REAL project warning")
    from deepspeed.utils import logger as ds_logger
    ds_logger.warning("REAL deepspeed warning")
"""


def test_noise_is_gone_and_real_warnings_still_show(tmp_path):
    pytest.importorskip("deepspeed")
    result = _run(NOISY_RUN, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    for noise in ("LOAD REPORT", "requires torchvision", "Setting accelerator to CPU"):
        assert noise not in out, noise
    for real in ("REAL transformers warning", "REAL project warning", "REAL deepspeed warning"):
        assert out.count(real) == 1, real
    unused = [line for line in out.splitlines() if "checkpoint weights not used by the encoder" in line]
    assert len(unused) == 1 and "encoder.extra.weight" in unused[0] and "pooler" not in unused[0]


def test_deepspeed_notice_stays_when_deepspeed_is_in_use(tmp_path):
    pytest.importorskip("deepspeed")
    script = """
        from altclip_train.logging_setup import configure_process
        configure_process()
        from deepspeed.accelerator import get_accelerator
        get_accelerator()
    """
    result = _run(script, tmp_path, ACCELERATE_USE_DEEPSPEED="true", CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Setting accelerator to CPU" in result.stdout + result.stderr


def test_datasets_cache_goes_under_the_project_cache_dir_unless_the_user_chose(tmp_path):
    script = """
        from altclip_train.logging_setup import configure_process
        configure_process()
        import datasets
        print("CACHE", datasets.config.HF_DATASETS_CACHE)
    """
    result = _run(script, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"CACHE {tmp_path / 'cache' / 'datasets'}" in result.stdout
    chosen = tmp_path / "mine"
    result = _run(script, tmp_path, HF_DATASETS_CACHE=str(chosen))
    assert f"CACHE {chosen}" in result.stdout
