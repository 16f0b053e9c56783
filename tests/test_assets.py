"""Tests for build-once assets: `build_once` under concurrent callers, and the tiny assets built by
two DDP ranks racing on a fresh cache (the README's multi-process launch once failed 2 times in 4)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from altclip_train.assets import build_once

WORKER = Path(__file__).with_name("asset_race_worker.py")


def _slow_build(staging: Path) -> None:
    (staging / "part").write_text("half")
    time.sleep(0.5)  # long enough that every other caller arrives while this one builds
    (staging / "DONE").write_text(str(os.getpid()))
    with open(staging.parent / "builds.log", "a") as log:
        log.write(f"{os.getpid()}\n")


def _call_build_once(root: str, results) -> None:
    root = Path(root)
    build_once(root, root / "DONE", _slow_build)
    results.put(((root / "DONE").read_text(), (root / "part").read_text()))


def test_build_once_builds_once_for_concurrent_callers(tmp_path):
    root = tmp_path / "assets"
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    callers = [context.Process(target=_call_build_once, args=(str(root), results)) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=60)
        assert caller.exitcode == 0
    seen = {results.get(timeout=5) for _ in callers}
    builders = (tmp_path / "builds.log").read_text().split()
    assert len(builders) == 1, f"built {len(builders)} times"
    assert seen == {(builders[0], "half")}  # every caller saw the one complete build
    assert sorted(path.name for path in tmp_path.iterdir()) == [".assets.lock", "assets", "builds.log"]


def test_build_once_leaves_nothing_behind_a_failed_build_and_retries(tmp_path):
    root = tmp_path / "assets"

    def broken(staging: Path) -> None:
        (staging / "part").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_once(root, root / "DONE", broken)
    assert not root.exists() and not list(tmp_path.glob(".assets.staging-*"))
    with pytest.raises(RuntimeError, match="did not write DONE"):
        build_once(root, root / "DONE", lambda staging: None)
    assert not root.exists()
    # A builder killed mid-build leaves its staging dir; the next one clears it and builds.
    (tmp_path / ".assets.staging-99999999").mkdir()
    build_once(root, root / "DONE", lambda staging: (staging / "DONE").write_text("ok"))
    assert (root / "DONE").read_text() == "ok"
    assert not list(tmp_path.glob(".assets.staging-*"))


@pytest.mark.slow
@pytest.mark.heavy
def test_two_ranks_build_the_tiny_assets_on_a_fresh_cache(tmp_path):
    """accelerate launch, 2 gloo ranks, a fresh ALTCLIP_CACHE_DIR each round; the rank that takes the
    build lock is rank 1, then rank 0, then whichever wins. Both ranks must then load every asset.
    transformers' save_pretrained writes nothing on rank 1 once torch.distributed is up, so before
    the fix a rank-1 build left a teacher dir without config.json."""
    from launching import PYTHON, log_tail, run, run_env

    for round_, first in enumerate(("1", "0", "any")):
        cache = tmp_path / f"cache{round_}"
        log = tmp_path / f"round{round_}.log"
        command = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--main_process_port", "0", str(WORKER), first]
        run(command, log, env=run_env(ALTCLIP_CACHE_DIR=str(cache)), timeout=600)
        text = log.read_text()
        assert text.count("rank ok") == 2, log_tail(log)
        assert text.count("building the tiny assets") == 1, log_tail(log)
