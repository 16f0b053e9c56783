"""Shard lists: the one home for turning a shard spec into urls, telling local from remote shards, and
identifying a shard set on disk (for cache keys and the cache's default location).

A spec is a brace range (`shards-{00000..00009}.tar`), a glob, a directory (its `*.tar`), a `::`-joined list,
or a list of any of these; `http(s)://`, `s3://`, `pipe:` and other schemes are remote and pass unchecked.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import braceexpand

log = logging.getLogger(__name__)

_URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")
_GLOB_CHARS = re.compile(r"[*?\[]")


def is_remote(spec: str) -> bool:
    """True for a url with a scheme other than file:, which we pass to webdataset unchecked."""
    match = _URL_SCHEME.match(spec)
    return match is not None and match.group(1).lower() != "file"


def local_path(spec: str) -> str:
    """A local shard spec (plain path or file: url) as a filesystem path."""
    if spec.lower().startswith("file:"):
        spec = url2pathname(urlparse(spec).path)
    return os.path.expanduser(spec)


def expand_shard_urls(spec: str | Iterable[str]) -> list[str]:
    """Turn a shard spec into the list of shard urls, in order.

    Accepts brace ranges (`shards-{00000..00009}.tar`), local globs, a directory (its `*.tar` files),
    `::`-joined specs and lists of any of these. Remote urls (`http(s)://`, `s3://`, `pipe:`, ...) are
    brace-expanded and passed through unchecked; every local entry must match at least one file.
    """
    parts = spec.split("::") if isinstance(spec, str) else [str(item) for item in spec]
    urls: list[str] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if not isinstance(spec, str) and "::" in part:
            urls.extend(expand_shard_urls(part))
            continue
        if is_remote(part):
            urls.extend(braceexpand.braceexpand(part))
            continue
        for pattern in braceexpand.braceexpand(local_path(part)):
            if _GLOB_CHARS.search(pattern):
                matches = sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
            elif os.path.isdir(pattern):
                matches = sorted(glob.glob(os.path.join(glob.escape(pattern), "*.tar")))
            else:
                matches = [pattern] if os.path.isfile(pattern) else []
            if not matches:
                origin = "" if pattern == part else f" (from '{part}')"
                raise FileNotFoundError(f"no shards match '{pattern}'{origin}")
            urls.extend(matches)
    if not urls:
        raise FileNotFoundError(f"no shards match '{spec}'")
    return urls


def shard_fingerprints(urls: Sequence[str]) -> list[list]:
    """[url, size, mtime_ns] per shard: local shards by resolved path and stat, remote ones by url alone."""
    prints = []
    for url in urls:
        if is_remote(url):
            prints.append([url, None, None])
            continue
        path = Path(local_path(url)).resolve()
        stat = path.stat()
        prints.append([str(path), stat.st_size, stat.st_mtime_ns])
    return prints


def default_cache_dir(urls: Sequence[str]) -> Path:
    """`<dir of the first local shard>/.altclip_cache` when that dir is writable, else the user cache."""
    for url in urls:
        if not is_remote(url):
            data_dir = Path(local_path(url)).resolve().parent
            if os.access(data_dir, os.W_OK):
                return data_dir / ".altclip_cache"
            log.warning("shard directory %s is not writable; keeping the image cache in the user cache", data_dir)
            break
    return Path(os.environ.get("ALTCLIP_CACHE_DIR", "~/.cache/altclip_train")).expanduser()


def manifest_sample_count(urls: Sequence[str]) -> int | None:
    """Samples in `urls` according to the prepare-wds `manifest.json` beside them; None if any shard is unlisted."""
    manifests: dict[Path, dict[str, int]] = {}
    total = 0
    for url in urls:
        if is_remote(url):
            return None
        path = Path(local_path(url))
        if path.parent not in manifests:
            try:
                manifest = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))
                manifests[path.parent] = {shard["name"]: int(shard["samples"]) for shard in manifest["shards"]}
            except (OSError, ValueError, KeyError, TypeError):
                manifests[path.parent] = {}
        if path.name not in manifests[path.parent]:
            return None
        total += manifests[path.parent][path.name]
    return total
