"""On-disk caches of frozen embeddings (teacher text targets, frozen image-tower outputs), as one float16
matrix that every rank fills in chunks and every reader memory-maps.

An entry is `<root>/<kind>/<key>/` in the `cache_entry.CacheEntry` format, with one data file,
`embeddings.f16`: the raw row-major float16 matrix, preallocated (sparse) at full size. Chunk c holds rows
[c * chunk_rows, (c + 1) * chunk_rows); a rank writes a finished chunk straight into its byte range, so no
rank ever holds more than one chunk and nothing is concatenated in memory. Readers get an `np.memmap`.

The key hashes everything the vectors depend on: the model fingerprint and preprocessing (`description`)
and the identity of the ordered inputs (`inputs_id`, e.g. the tokenised corpus's fingerprint or the shard
index's), so a different model, text, image or max length can never be served stale vectors.

    cache = EmbeddingCache(root, "teacher_text", description, inputs_id, num_rows, dim)
    vectors = cache.load_or_build(compute, accelerator)   # compute(start, stop) -> [stop - start, dim]
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from altclip_train.data.cache_entry import CacheEntry, Region, hash_bytes

log = logging.getLogger(__name__)

FORMAT = "embeddings-f16-chunked-v1"
DATA_FILE = "embeddings.f16"
CHUNK_BYTES = 32 << 20     # ~32 MB per chunk: a kill loses seconds of work, a 150 GB entry has ~5k markers
ROW_ALIGN = 2048           # chunk_rows is a multiple of this, so every chunk starts on a page boundary


def default_chunk_rows(dim: int) -> int:
    rows = CHUNK_BYTES // (2 * dim)
    return max(ROW_ALIGN, rows // ROW_ALIGN * ROW_ALIGN)


def hash_strings(items) -> str:
    """A digest of an ordered list of strings (for small inputs; corpora use their store fingerprint)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def _existing_chunk_rows(directory: Path) -> int | None:
    import json

    try:
        layout = json.loads((directory / "layout.json").read_text())
        return int(layout["chunk_rows"]) if layout.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


class EmbeddingCache:
    """One entry: `load()` returns the vectors if the entry is complete and intact; `load_or_build()` makes it so."""

    def __init__(self, root: str | Path, kind: str, description: str, inputs_id: str, num_rows: int, dim: int,
                 chunk_rows: int | None = None):
        self.key = hashlib.sha256(f"{FORMAT}\n{description}\n{inputs_id}\n{num_rows}\n{dim}".encode()).hexdigest()[:32]
        self.description = description
        self.num_rows = int(num_rows)
        self.dim = int(dim)
        self.dir = Path(root).expanduser() / kind / self.key
        # An entry keeps the chunking it was started with (a resumed or reused build must line up with the
        # chunks on disk), whatever chunk size this call asks for.
        self.chunk_rows = _existing_chunk_rows(self.dir) or int(chunk_rows or default_chunk_rows(self.dim))
        num_chunks = -(-self.num_rows // self.chunk_rows)
        self.entry = CacheEntry(self.dir, num_chunks, {
            "format": FORMAT, "rows": self.num_rows, "dim": self.dim, "dtype": "float16",
            "chunk_rows": self.chunk_rows, "description": description})

    @property
    def embeddings_path(self) -> Path:
        return self.dir / DATA_FILE

    @property
    def report(self):
        return self.entry.report

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(self.num_rows, start + self.chunk_rows)

    def _memmap(self) -> np.ndarray:
        if self.num_rows == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        return np.memmap(self.embeddings_path, dtype=np.float16, mode="r", shape=(self.num_rows, self.dim))

    def load(self, verify: str = "stat") -> np.ndarray | None:
        """The memory-mapped matrix when the entry is complete and passes `verify`, else None (never builds)."""
        self.entry.verify(verify)
        return self._memmap() if self.entry.is_complete() else None

    def load_or_build(self, compute: Callable[[int, int], np.ndarray], accelerator=None,
                      verify: str = "stat", desc: str | None = None) -> np.ndarray:
        """The vectors, computing only the chunks that are missing or corrupt; every rank must call it.

        `compute(start, stop)` returns rows [start, stop) and is called once per missing chunk, so it should
        load its model lazily: with a complete entry it is never called and the model is never loaded.
        """
        size = self.num_rows * self.dim * 2

        def preallocate() -> None:
            with open(self.embeddings_path, "ab") as handle:  # never truncates chunks already written
                if handle.tell() != size:
                    handle.truncate(size)

        self.entry.build(self._write_chunk(compute), accelerator, verify=verify, prepare=preallocate,
                         progress_unit="row", chunk_size=lambda c: self.chunk_bounds(c)[1] - self.chunk_bounds(c)[0],
                         desc=desc or f"embedding ({self.dir.parent.name})")
        return self._memmap()

    def _write_chunk(self, compute: Callable[[int, int], np.ndarray]):
        def write(chunk: int):
            start, stop = self.chunk_bounds(chunk)
            vectors = np.asarray(compute(start, stop))
            if vectors.shape != (stop - start, self.dim):
                raise ValueError(f"embedding cache {self.dir}: rows {start}..{stop} came back with shape "
                                 f"{vectors.shape}, expected {(stop - start, self.dim)}")
            data = np.ascontiguousarray(vectors, dtype=np.float16).tobytes()
            offset = start * self.dim * 2
            fd = os.open(self.embeddings_path, os.O_WRONLY)
            try:
                view, position = memoryview(data), offset
                while view:  # pwrite may write less than asked on some filesystems
                    written = os.pwrite(fd, view, position)
                    view, position = view[written:], position + written
                os.fsync(fd)
            finally:
                os.close(fd)
            return [(Region(DATA_FILE, offset, len(data)), hash_bytes(data))]

        return write
