"""One on-disk cache entry format for everything frozen that the project computes once: a directory of
fixed-size chunks, built by every rank in parallel, resumable after a kill, each chunk checksummed alone.

| piece                 | what it is                                                                      |
|-----------------------|---------------------------------------------------------------------------------|
| `layout.json`         | the entry's description and chunk count; written before the first chunk         |
| `chunks/NNNNNN.json`  | one marker per finished chunk: the byte regions it wrote and their blake2b      |
| `complete.json`       | written once every chunk has its marker: size and mtime of every data file      |

What a chunk's bytes are and where they go is the payload's business (`embedding_cache.EmbeddingCache`
writes row ranges of one preallocated matrix; `image_cache.ShardIndex` writes one Arrow file per group of
shards). This module only decides *which* chunks a rank computes, and whether a finished entry can be trusted.

Building: the chunks without a marker are dealt round-robin to the ranks. A rank writes a chunk's bytes,
fsyncs them, and only then writes its marker (atomically, by rename), so a killed build loses at most the
chunk each rank was in the middle of, and the rerun computes only the chunks that have no marker. The
chunking is fixed in `layout.json` at the first start, so a resumed build (with any number of ranks)
computes exactly the chunks an uninterrupted one would, and the result is byte-identical.

What is verified, and when:
- **When a chunk is written**: the hash of the bytes it wrote goes into its marker.
- **Every open of a complete entry**: every marker is present, and every data file has the size and mtime
  that `complete.json` recorded. That is a `stat` per file, no bytes read, so a 150 GB entry opens in
  milliseconds. Any write to a data file (a truncation, a stray edit, a half-finished rebuild) moves its mtime.
- **When a data file's stat differs, or with `verify="full"`**: every chunk in that file is re-hashed. A
  chunk whose bytes differ from its marker is reported, its marker is removed, and it alone is rebuilt.
Bit rot that leaves size and mtime alone is only caught by `verify="full"` (`data.cache_verify=full`,
`altclip-train cache-images --verify`), which reads every byte once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

VERIFY_MODES = ("stat", "full")
_HASH_BLOCK = 1 << 24


@dataclass(frozen=True)
class Region:
    """`length` bytes at `offset` of the file `name` (relative to the entry dir)."""

    name: str
    offset: int
    length: int


@dataclass
class BuildReport:
    """What the last `build` did on this rank: chunks it computed, chunks that were already complete."""

    chunks_built: int = 0
    chunks_reused: int = 0
    seconds: float = 0.0


def hash_region(path: Path, offset: int, length: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        handle.seek(offset)
        remaining = length
        while remaining > 0:
            block = handle.read(min(_HASH_BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def hash_bytes(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write-then-rename, so a reader (or a kill) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def ranks_of(accelerator) -> tuple[int, int]:
    return (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)


def wait_for_everyone(accelerator) -> None:
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


class CacheEntry:
    """The chunk protocol of one entry directory; see the module docstring."""

    def __init__(self, directory: str | Path, num_chunks: int, description: dict):
        self.dir = Path(directory)
        self.num_chunks = int(num_chunks)
        self.description = description
        self.report = BuildReport()

    # ---------------------------------------------------------------- state on disk
    def marker_path(self, chunk: int) -> Path:
        return self.dir / "chunks" / f"{chunk:06d}.json"

    def marker(self, chunk: int) -> dict | None:
        try:
            return json.loads(self.marker_path(chunk).read_text())
        except (OSError, ValueError):
            return None

    def done_chunks(self) -> set[int]:
        """Chunks with a marker: one directory listing, not one stat per chunk."""
        chunk_dir = self.dir / "chunks"
        if not chunk_dir.is_dir():
            return set()
        return {int(name[:-5]) for name in os.listdir(chunk_dir) if name.endswith(".json") and name[:-5].isdigit()}

    def pending_chunks(self) -> list[int]:
        done = self.done_chunks()
        return [chunk for chunk in range(self.num_chunks) if chunk not in done]

    @property
    def complete_path(self) -> Path:
        return self.dir / "complete.json"

    def is_complete(self) -> bool:
        return self.complete_path.is_file()

    def data_files(self) -> dict[str, list[tuple[int, Region, str]]]:
        """Every data file of the entry, with the (chunk, region, hash) triples its markers recorded."""
        files: dict[str, list[tuple[int, Region, str]]] = {}
        for chunk in range(self.num_chunks):
            marker = self.marker(chunk)
            for region, digest in _regions_of(marker):
                files.setdefault(region.name, []).append((chunk, region, digest))
        return files

    # ---------------------------------------------------------------- opening
    def prepare(self, reset_if: Callable[[dict], bool] | None = None) -> None:
        """Create the entry (or adopt the one on disk): called by one process before any rank builds.

        An existing layout that disagrees with this description (another chunking, a half-written entry of
        an older format) is wiped, since its chunks would not line up with ours.
        """
        layout_path = self.dir / "layout.json"
        wanted = {"num_chunks": self.num_chunks, **self.description}
        if layout_path.is_file():
            try:
                existing = json.loads(layout_path.read_text())
            except ValueError:
                existing = None
            if existing != wanted or (reset_if is not None and reset_if(existing)):
                log.warning("cache entry %s has another layout; rebuilding it", self.dir)
                _remove_tree(self.dir)
        (self.dir / "chunks").mkdir(parents=True, exist_ok=True)
        if not layout_path.is_file():
            write_json_atomic(layout_path, wanted)

    def verify(self, mode: str = "stat") -> list[int]:
        """Check a complete entry (see the module docstring); returns the chunks found bad, their markers gone.

        An entry that is not complete is left alone: its markers were written after their bytes were.
        """
        if mode not in VERIFY_MODES:
            raise ValueError(f"cache verify mode '{mode}': choose one of {', '.join(VERIFY_MODES)}")
        if not self.is_complete():
            return []
        try:
            recorded = json.loads(self.complete_path.read_text())["files"]
        except (OSError, ValueError, KeyError):
            recorded = {}
        files = self.data_files()
        missing = [chunk for chunk in range(self.num_chunks) if self.marker(chunk) is None]
        suspects: list[str] = []
        for name, entries in files.items():
            stat = _stat(self.dir / name)
            if mode == "full" or stat is None or recorded.get(name) != stat:
                suspects.append(name)
        bad = set(missing)
        if suspects:
            total = sum(region.length for name in suspects for _, region, _ in files[name])
            with tqdm(total=total, desc=f"verifying {self.dir.name[:12]}", unit="B", unit_scale=True,
                      disable=total < (256 << 20) or None) as progress:
                for name in suspects:
                    path = self.dir / name
                    for chunk, region, digest in files[name]:
                        if not path.is_file() or hash_region(path, region.offset, region.length) != digest:
                            bad.add(chunk)
                        progress.update(region.length)
        if bad:
            log.warning("cache entry %s: chunk(s) %s do not match their checksums; rebuilding them alone",
                        self.dir, _short_list(sorted(bad)))
            for chunk in bad:
                self.marker_path(chunk).unlink(missing_ok=True)
            self.complete_path.unlink(missing_ok=True)
        elif suspects:
            # The bytes are intact (e.g. the files were copied, which moves mtimes): trust the new stats.
            self._write_complete(files)
        return sorted(bad)

    # ---------------------------------------------------------------- building
    def build(self, write_chunk: Callable[[int], Iterable[tuple[Region, str]]], accelerator=None,
              verify: str = "stat", prepare: Callable[[], None] | None = None, progress_unit: str = "chunk",
              chunk_size: Callable[[int], int] | None = None, desc: str = "building cache") -> None:
        """Make the entry complete: verify it, then let every rank write its share of the missing chunks.

        `write_chunk(c)` computes chunk c, writes (and fsyncs) its bytes and returns the regions it wrote with
        their hashes. `prepare()` runs once, on rank 0, before any rank writes (e.g. to preallocate a file).
        Every rank must call this, and all leave it with the entry complete.
        """
        rank, world = ranks_of(accelerator)
        started = time.perf_counter()
        if rank == 0:
            self.prepare()
            if prepare is not None:
                prepare()
            self.verify(verify)
        wait_for_everyone(accelerator)  # nobody writes before every rank has read the same state
        if self.is_complete():
            self.report = BuildReport(chunks_reused=self.num_chunks, seconds=time.perf_counter() - started)
            return
        pending = self.pending_chunks()
        mine = pending[rank::world]
        wait_for_everyone(accelerator)  # every rank listed the pending chunks before any marker appears
        if rank == 0 and pending:
            log.info("%s: %d of %d chunks to build (%d already done), %d rank(s)", self.dir, len(pending),
                     self.num_chunks, self.num_chunks - len(pending), world)
        show = getattr(accelerator, "is_local_main_process", True)
        total = sum(chunk_size(c) for c in mine) if chunk_size else len(mine)
        with tqdm(total=total, desc=desc, unit=progress_unit, disable=not show or not mine or None,
                  dynamic_ncols=True) as progress:
            for chunk in mine:
                regions = list(write_chunk(chunk))
                write_json_atomic(self.marker_path(chunk), {
                    "chunk": chunk,
                    "regions": [[r.name, r.offset, r.length, digest] for r, digest in regions]})
                progress.update(chunk_size(chunk) if chunk_size else 1)
        wait_for_everyone(accelerator)
        if rank == 0:
            missing = self.pending_chunks()
            if missing:
                raise RuntimeError(f"cache entry {self.dir}: chunks {_short_list(missing)} have no marker after "
                                   f"every rank finished; is the cache dir on a filesystem every rank shares?")
            self._write_complete(self.data_files())
        wait_for_everyone(accelerator)
        if not self.is_complete():
            raise FileNotFoundError(f"rank {rank} cannot see {self.complete_path} that rank 0 wrote; put the cache "
                                    f"dir on a filesystem every rank shares")
        self.report = BuildReport(chunks_built=len(mine), chunks_reused=self.num_chunks - len(pending),
                                  seconds=time.perf_counter() - started)

    def _write_complete(self, files: dict) -> None:
        write_json_atomic(self.complete_path, {"files": {name: _stat(self.dir / name) for name in files}})


def _regions_of(marker: dict | None) -> list[tuple[Region, str]]:
    if not marker:
        return []
    return [(Region(name, int(offset), int(length)), digest) for name, offset, length, digest in marker["regions"]]


def _stat(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _short_list(items: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
