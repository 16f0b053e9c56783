"""Bundled offline assets for `experiment=tiny`: tiny models and the demo corpus, built on first use.

Configs refer to them as `${tiny_asset:teacher}` (a tiny CLIP, briefly pretrained on the demo's
English digit captions so its text vectors tell sentences apart), `${tiny_asset:student}` (a random
tiny XLM-R whose tokenizer has byte fallback), `${tiny_asset:data}` (the demo's digits, captions and
parallel corpus) and `${tiny_asset:shards}` (its multilingual pairs as WebDataset shards).
They are written once under `$ALTCLIP_CACHE_DIR/tiny-v2/` (default `~/.cache/altclip_train`) by
`build_once`: under a file lock, into a staging dir that is renamed into place, so concurrent ranks
or runs never see half-built files.
"""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

# Bump whenever what the builder writes changes, so caches of an older build are never reused.
ASSET_VERSION = "tiny-v2"
NAMES = ("teacher", "student", "data", "shards")
TEACHER_PRETRAIN_STEPS = 150
STUDENT_VOCAB = 4000


def cache_root() -> Path:
    return Path(os.environ.get("ALTCLIP_CACHE_DIR", "~/.cache/altclip_train")).expanduser()


def tiny_asset(name: str) -> str:
    """Path of one tiny asset, building the whole set the first time any is asked for."""
    if name not in NAMES:
        raise ValueError(f"unknown tiny asset '{name}'; choose one of {', '.join(NAMES)}")
    root = cache_root() / ASSET_VERSION
    build_once(root, root / "COMPLETE", _build)
    return str(root / name)


def build_once(root: Path, marker: Path, build: Callable[[Path], None]) -> Path:
    """Make `root` exist with `marker` in it, running `build(staging)` at most once across processes.

    The first caller takes a file lock next to `root`, runs `build` into an empty staging dir and
    renames it to `root`; callers that arrive meanwhile wait on the lock and then find `marker`. So
    `root` is either absent or complete, whichever rank builds and even if a builder is killed. `build`
    must write only into the directory it is given, and only on its own process (no collectives:
    the other ranks are waiting on the lock, not in a barrier).
    """
    root, marker = Path(root), Path(marker)
    relative_marker = marker.relative_to(root)
    if marker.exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return root
        # Holding the lock means any staging dir left here belongs to a builder that died.
        for stale in root.parent.glob(f".{root.name}.staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = root.parent / f".{root.name}.staging-{os.getpid()}"
        staging.mkdir()
        try:
            build(staging)
            if not (staging / relative_marker).exists():
                raise RuntimeError(f"building {root} did not write {relative_marker}")
            shutil.rmtree(root, ignore_errors=True)
            os.replace(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _build(staging: Path) -> None:
    from altclip_train.data.prepare_wds import prepare_wds
    from altclip_train.demo.build_data import build_demo_data
    from altclip_train.models.tiny import build_tiny_clip, build_tiny_xlmr, pretrain_tiny_clip

    started = time.monotonic()
    print(f"altclip-train: building the tiny assets in {staging.parent / ASSET_VERSION} (first use only)",
          file=sys.stderr, flush=True)
    demo = build_demo_data(staging / "data")
    build_tiny_clip(staging / "teacher", demo.all_texts("en"))
    with open(demo.teacher_pairs, newline="", encoding="utf-8") as handle:
        pairs = [(demo.root / row["image"], row["caption"]) for row in csv.DictReader(handle)]
    pretrain_tiny_clip(staging / "teacher", pairs, steps=TEACHER_PRETRAIN_STEPS)
    build_tiny_xlmr(staging / "student", demo.all_texts(), vocab_size=STUDENT_VOCAB)
    prepare_wds(demo.multilingual_pairs, staging / "shards", image_root=demo.root, shard_size=400)
    (staging / "COMPLETE").write_text("ok\n")
    print(f"altclip-train: tiny assets built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
