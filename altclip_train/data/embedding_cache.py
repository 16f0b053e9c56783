"""On-disk caches of frozen embeddings (teacher text targets, frozen image-tower outputs).

Frozen work is computed once. An entry is a directory `<root>/<kind>/<key>/` holding
`embeddings.npy` (float16, memory-mapped on read) and `meta.json`. The key hashes everything the
vectors depend on (model fingerprint, preprocessing, and the exact ordered inputs), so a different
model, text, image or max length can never be served stale vectors. An entry is written to a
temporary directory and renamed into place, so a crash never leaves a half-written entry; an entry
whose checksum does not match is reported, deleted and rebuilt, never trusted.

With several processes, every rank computes its contiguous share, rank 0 assembles the entry, and
all ranks then read the same file, so the cache is shared across epochs, runs and ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


def hash_strings(items: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingCache:
    """One cache entry: `load()` returns the vectors if present and intact, `build()` writes them."""

    def __init__(self, root: str | Path, kind: str, description: str, inputs_hash: str, num_rows: int):
        self.key = hashlib.sha256(f"{description}\n{inputs_hash}\n{num_rows}".encode()).hexdigest()[:32]
        self.description = description
        self.num_rows = num_rows
        self.dir = Path(root).expanduser() / kind / self.key

    @property
    def embeddings_path(self) -> Path:
        return self.dir / "embeddings.npy"

    def load(self) -> np.ndarray | None:
        """The cached float16 matrix (memory-mapped), or None when absent or corrupt (then deleted)."""
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            array = np.load(self.embeddings_path, mmap_mode="r")
            problem = None
            if meta.get("key") != self.key or array.shape != (self.num_rows, meta["dim"]):
                problem = f"shape {array.shape} does not match its metadata"
            elif file_sha256(self.embeddings_path) != meta["sha256"]:
                problem = "checksum mismatch"
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
            problem = f"unreadable ({error})"
        if problem:
            log.warning("embedding cache %s is corrupt (%s); rebuilding it", self.dir, problem)
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        return array

    def write(self, embeddings: np.ndarray) -> np.ndarray:
        """Atomically write a complete entry (single writer) and return it memory-mapped."""
        if embeddings.shape[0] != self.num_rows:
            raise ValueError(f"expected {self.num_rows} rows, got {embeddings.shape[0]}")
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.key}.", dir=self.dir.parent))
        np.save(staging / "embeddings.npy", np.ascontiguousarray(embeddings, dtype=np.float16))
        meta = {"key": self.key, "rows": self.num_rows, "dim": int(embeddings.shape[1]), "dtype": "float16",
                "sha256": file_sha256(staging / "embeddings.npy"), "description": self.description}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        if self.dir.exists():  # another writer finished first; ours is identical by construction
            shutil.rmtree(staging)
        else:
            os.replace(staging, self.dir)
        return np.load(self.embeddings_path, mmap_mode="r")

    def load_or_build(self, compute: Callable[[int, int], np.ndarray], accelerator=None) -> np.ndarray:
        """Return the vectors, computing rows [start, stop) with `compute` only if the entry is missing.

        `compute` is never called (so the model behind it is never loaded) when the entry is intact.
        """
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        cached = self.load() if rank == 0 else None
        if world > 1:
            cached_everywhere = _broadcast_flag(cached is not None, accelerator)
            if cached_everywhere:
                accelerator.wait_for_everyone()
                return self.load()
        elif cached is not None:
            return cached
        log.info("building embedding cache %s (%d rows)", self.dir, self.num_rows)
        bounds = np.linspace(0, self.num_rows, world + 1).astype(int)
        part = compute(int(bounds[rank]), int(bounds[rank + 1])).astype(np.float16)
        if world == 1:
            return self.write(part)
        parts_dir = self.dir.parent / f".{self.key}.parts"
        parts_dir.mkdir(parents=True, exist_ok=True)
        np.save(parts_dir / f"rank{rank:05d}.npy", part)
        accelerator.wait_for_everyone()
        if rank == 0:
            self.write(np.concatenate([np.load(parts_dir / f"rank{r:05d}.npy") for r in range(world)]))
            shutil.rmtree(parts_dir, ignore_errors=True)
        accelerator.wait_for_everyone()
        return np.load(self.embeddings_path, mmap_mode="r")


def _broadcast_flag(flag: bool, accelerator) -> bool:
    from accelerate.utils import broadcast_object_list

    box = [flag]
    broadcast_object_list(box, from_process=0)
    return bool(box[0])
