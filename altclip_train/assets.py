"""Bundled offline assets for `experiment=tiny`: tiny models and the demo corpus, built on first use.

Configs refer to them as `${tiny_asset:teacher}`, `${tiny_asset:student}`, `${tiny_asset:data}` (the
demo's digits, captions and parallel corpus) and `${tiny_asset:shards}` (its multilingual pairs as
WebDataset shards).
They are written once under `$ALTCLIP_CACHE_DIR/tiny-v1/` (default `~/.cache/altclip_train`),
atomically and under a file lock, so concurrent ranks or runs never see half-built files.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

ASSET_VERSION = "tiny-v1"
NAMES = ("teacher", "student", "data", "shards")


def cache_root() -> Path:
    return Path(os.environ.get("ALTCLIP_CACHE_DIR", "~/.cache/altclip_train")).expanduser()


def tiny_asset(name: str) -> str:
    """Path of one tiny asset, building the whole set the first time any is asked for."""
    if name not in NAMES:
        raise ValueError(f"unknown tiny asset '{name}'; choose one of {', '.join(NAMES)}")
    root = cache_root() / ASSET_VERSION
    build_once(root, root / "COMPLETE", _build)
    return str(root / name)


def build_once(root: Path, marker: Path, build) -> Path:
    """Run `build(root)` unless `marker` exists, under a file lock so concurrent callers wait and reuse."""
    if not marker.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f".{root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not marker.exists():
                build(root)
    return root


def _build(root: Path) -> None:
    from altclip_train.data.prepare_wds import prepare_wds
    from altclip_train.demo.build_data import build_demo_data
    from altclip_train.models.tiny import build_tiny_clip, build_tiny_xlmr

    staging = root.with_name(f".{ASSET_VERSION}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    demo = build_demo_data(staging / "data")
    build_tiny_clip(staging / "teacher", demo.all_texts("en"))
    build_tiny_xlmr(staging / "student", demo.all_texts())
    prepare_wds(demo.multilingual_pairs, staging / "shards", image_root=demo.root, shard_size=400)
    (staging / "COMPLETE").write_text("ok\n")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(staging, root)
