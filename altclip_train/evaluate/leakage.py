"""Leakage check: how much of each evaluation benchmark is in a training run's data.

    altclip-train check-leakage outputs/contrastive xtd10 xm3600 --data-root /data/benchmarks
    altclip-train eval models.phase2=outputs/contrastive/final benchmarks=[xtd10] data_root=/data/benchmarks \\
        leakage.runs=[outputs/contrastive]

For every benchmark it counts

- **captions** (per language and in all) whose normalised text equals a normalised training text. Normalising
  (`normalise_text`) is Unicode-aware: NFKC, case folding, every punctuation character (categories P*) removed,
  runs of whitespace collapsed to one space, ends trimmed. "A dog, running!" and "a  DOG running" match;
  a text that normalises to nothing matches nothing. Classification benchmarks have no captions.
- **images** whose content hash (sha256 of the file bytes, as stored: `prepare-wds` copies image files into the
  shards byte for byte) equals that of an image in the training shards; a renamed copy is found, a re-encoded
  one is not.

What a run trained on is read from its `config.yaml` (what `altclip-train distill|contrastive` writes in its
run dir; RUN may also be its `final/` model dir):

- phase 1 (`data.corpora`, `data.replay`): both sides of every pair, from the run's corpus store
  (`<data.cache_dir>/corpora/<key>`, located from the corpora and tokenizers as training does; its unique English
  sentences in `sources.arrow` and the translations in `text.arrow`). Without the store
  (cache deleted, tokenizers unavailable) the corpus files are read instead, and the log says so. Pairs held out
  for validation count as training text: they were in the run's data.
- phase 2 (`data.shards`): every usable caption (`data.languages`, `data.default_lang`) and every image.
- upstream runs (on by default): a run whose teacher or student is another run's model dir (`<run>/final`) also
  leaks what that run trained on; those runs are followed too, once each.

Scale: the benchmark side is small (thousands to a few hundred thousand captions), so it is the side held in
memory: sorted 8-byte blake2b digests (sha256 prefixes for images). The training data is streamed once, in
chunks of `chunk_rows` texts (Arrow files are read record batch by record batch, not mapped whole); each chunk's
digests are looked up with `np.searchsorted`. Memory is O(benchmark + chunk), never O(corpus), and no training
string outlives its chunk: peak RSS 295 / 292 / 291 MB at 0.25M / 1M / 2M pairs, about 220k texts/s on one core.

Results (`check_leakage`) are a dict per benchmark, written into eval.json under "leakage" and as a table in
eval.md; a share above `warn_fraction` of a benchmark's captions (in all or in one language) or images is
logged as a warning.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from altclip_train.errors import UserError

log = logging.getLogger(__name__)

DIGEST_BYTES = 8
DEFAULT_CHUNK_ROWS = 65_536
DEFAULT_WARN_FRACTION = 0.01
EXAMPLES = 5  # leaked captions kept per benchmark, for a look at what leaked


# ------------------------------------------------------------------------------------------ hashing
class _DropPunctuation(dict):
    """A `str.translate` table, filled as characters are met: punctuation (P*) -> deleted, the rest kept."""

    def __missing__(self, code: int):
        value = None if unicodedata.category(chr(code)).startswith("P") else code
        self[code] = value
        return value


_DROP_PUNCTUATION = _DropPunctuation()


def normalise_text(text: str) -> str:
    """The form two texts are compared in: NFKC, casefolded, punctuation (P*) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.translate(_DROP_PUNCTUATION).split())


def text_digests(texts: Iterable[str]) -> np.ndarray:
    """8-byte blake2b digest of each normalised text, as uint64; 0 for a text that normalises to nothing."""
    empty = bytes(DIGEST_BYTES)
    parts = []
    for text in texts:
        normal = normalise_text(text)
        parts.append(hashlib.blake2b(normal.encode("utf-8"), digest_size=DIGEST_BYTES).digest() if normal else empty)
    return np.frombuffer(b"".join(parts), dtype="<u8").copy() if parts else np.zeros(0, dtype=np.uint64)


def image_digest(data: bytes) -> bytes:
    """The content hash of an image as stored: the first 8 bytes of the sha256 of its bytes."""
    return hashlib.sha256(data).digest()[:DIGEST_BYTES]


def image_digests(blobs: Iterable[bytes]) -> np.ndarray:
    parts = [image_digest(blob) for blob in blobs]
    return np.frombuffer(b"".join(parts), dtype="<u8").copy() if parts else np.zeros(0, dtype=np.uint64)


class DigestMatcher:
    """A small sorted set of wanted digests, and which of them the streamed training digests contained."""

    def __init__(self, wanted: np.ndarray):
        self.wanted = np.unique(np.asarray(wanted, dtype=np.uint64))
        self.wanted = self.wanted[self.wanted != 0]
        self.found = np.zeros(len(self.wanted), dtype=bool)
        self.seen = 0  # training items looked up

    def update(self, digests: np.ndarray) -> None:
        self.seen += len(digests)
        if not len(self.wanted) or not len(digests):
            return
        position = np.minimum(np.searchsorted(self.wanted, digests), len(self.wanted) - 1)
        self.found[position[self.wanted[position] == digests]] = True

    def contains(self, digests: np.ndarray) -> np.ndarray:
        """Whether each digest was seen in the training data."""
        digests = np.asarray(digests, dtype=np.uint64)
        if not len(self.wanted):
            return np.zeros(len(digests), dtype=bool)
        position = np.minimum(np.searchsorted(self.wanted, digests), len(self.wanted) - 1)
        return (self.wanted[position] == digests) & self.found[position] & (digests != 0)


# ------------------------------------------------------------------------------------------ training data
@dataclass
class TrainingData:
    """What to stream: corpus stores, corpus files (when a store is gone) and image-text shard sets."""

    runs: list[Path] = field(default_factory=list)
    stores: list[Path] = field(default_factory=list)
    corpora: list[tuple] = field(default_factory=list)  # (CorpusSpec, languages, datasets cache dir)
    shards: list[tuple] = field(default_factory=list)  # (urls, default_lang, languages or None)

    def describe(self) -> list[str]:
        return ([f"run {run}" for run in self.runs] + [f"corpus store {store}" for store in self.stores]
                + [f"corpus file {spec.name}" for spec, _, _ in self.corpora]
                + [f"{len(urls)} shard(s) from {urls[0]}" for urls, _, _ in self.shards])

    @property
    def has_images(self) -> bool:
        return bool(self.shards)


def run_config_path(run: str | Path) -> Path:
    """The saved config of a training run dir (or of the run a `final/` model dir belongs to); one line if none."""
    run = Path(run).expanduser()
    if not run.exists():
        raise UserError(f"leakage run {run}: no such directory")
    for directory in (run, run.parent) if (run / "config.json").is_file() else (run,):
        for candidate in (directory / "config.yaml", directory / ".hydra" / "config.yaml"):
            if candidate.is_file():
                return candidate
    raise UserError(f"leakage run {run}: not a training run dir (no config.yaml; give the dir that "
                    f"`altclip-train distill|contrastive` wrote)")


def _load_config(path: Path):
    from omegaconf import OmegaConf

    from altclip_train.resolvers import register_resolvers

    register_resolvers()
    cfg = OmegaConf.load(path)
    data = cfg.get("data")
    if data is None or not (data.get("corpora") or data.get("shards")):
        raise UserError(f"{path}: not a training run's config (no data.corpora or data.shards)")
    return cfg


def _model_dirs(cfg) -> list[Path]:
    """Local model dirs the run started from (teacher, student, tokenizers): where upstream runs are found."""
    from omegaconf import OmegaConf

    found = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and 0 < len(node) < 4096 and "\n" not in node and "://" not in node:
            path = Path(node).expanduser()
            if path.is_dir() and (path / "config.json").is_file():
                found.append(path.resolve())

    for section in ("model", "data"):
        if cfg.get(section) is not None:
            walk(OmegaConf.to_container(cfg[section], resolve=False))
    return list(dict.fromkeys(found))


def _phase1_sources(cfg, config_path: Path, into: TrainingData) -> None:
    from omegaconf import OmegaConf

    from altclip_train.data.parallel import ParallelTextData

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("_target_", None)
    try:
        module = ParallelTextData(**data)
    except TypeError as error:
        raise UserError(f"{config_path}: data: {error}") from error
    try:
        store = module.corpus_store_dir()
    except (OSError, ValueError) as error:
        store = None
        reason = f"its tokenizers cannot be loaded ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
    else:
        reason = f"its corpus store {store} is not there"
    if store is not None and (store / "meta.json").is_file():
        into.stores.append(store)
        return
    missing = [str(path) for spec in module.specs for path in spec.files() if not path.is_file()]
    if missing:
        raise UserError(f"{config_path}: cannot read the run's training text: {reason} and corpus file "
                        f"{missing[0]} is gone")
    log.warning("%s: %s; reading its corpus files instead", config_path.parent, reason)
    datasets_cache = str(Path(module.cache_dir).expanduser() / "datasets")
    into.corpora += [(spec, list(module.languages), datasets_cache) for spec in module.specs]


def _phase2_sources(cfg, config_path: Path, into: TrainingData) -> None:
    from omegaconf import OmegaConf

    from altclip_train.data.shards import expand_shard_urls

    shards = OmegaConf.to_container(cfg.data, resolve=True)["shards"]
    try:
        urls = expand_shard_urls(shards)
    except FileNotFoundError as error:
        raise UserError(f"{config_path}: data.shards: {error}") from error
    languages = cfg.data.get("languages")
    into.shards.append((urls, str(cfg.data.get("default_lang") or "en"),
                        None if languages is None else [str(lang) for lang in languages]))


def training_data(runs: Sequence[str | Path] = (), shards=None, upstream: bool = True) -> TrainingData:
    """Everything `runs` trained on (and, with `upstream`, the runs their models came from), plus `shards`."""
    result = TrainingData()
    pending = [run_config_path(run) for run in runs]
    visited: set[Path] = set()
    while pending:
        config_path = pending.pop(0)
        if config_path.resolve() in visited:
            continue
        visited.add(config_path.resolve())
        run_dir = config_path.parent.parent if config_path.parent.name == ".hydra" else config_path.parent
        cfg = _load_config(config_path)
        result.runs.append(run_dir)
        if cfg.data.get("corpora"):
            _phase1_sources(cfg, config_path, result)
        if cfg.data.get("shards"):
            _phase2_sources(cfg, config_path, result)
        if upstream:
            for model_dir in _model_dirs(cfg):
                if model_dir.parent.resolve() != run_dir.resolve() and (model_dir.parent / "config.yaml").is_file():
                    log.info("leakage: %s started from %s; checking what that run trained on too", run_dir, model_dir)
                    pending.append(model_dir.parent / "config.yaml")
    if shards:
        from altclip_train.data.shards import expand_shard_urls

        result.shards.append((expand_shard_urls(shards), "en", None))
    if not (result.stores or result.corpora or result.shards):
        raise UserError("leakage: no training data to check against (give a run dir or shards)")
    return result


def _store_texts(store: Path, chunk_rows: int) -> Iterator[list[str]]:
    import pyarrow as pa

    for name, column in (("sources.arrow", "text"), ("text.arrow", "target")):
        # Read batch by batch (each freed after use) rather than mapped whole: peak RSS stays flat in N.
        with pa.OSFile(str(store / name)) as source:
            for batch in pa.ipc.open_stream(source):
                values = batch.column(batch.schema.get_field_index(column))
                for start in range(0, len(values), chunk_rows):
                    yield values.slice(start, chunk_rows).to_pylist()


def _corpus_texts(spec, languages, datasets_cache, chunk_rows: int) -> Iterator[list[str]]:
    from collections import Counter

    from altclip_train.data.corpora import iter_pairs

    for batch in iter_pairs(spec, languages, Counter(), datasets_cache):
        for column in (0, 1):
            values = batch.column(column)
            for start in range(0, len(values), chunk_rows):
                yield values.slice(start, chunk_rows).to_pylist()


def _shard_items(urls, default_lang, languages, chunk_rows: int) -> Iterator[tuple[list[str], list[bytes]]]:
    from altclip_train.data.webdataset import iter_image_text_records

    texts: list[str] = []
    images: list[bytes] = []
    for record in iter_image_text_records(urls, decode=False, default_lang=default_lang, languages=languages):
        texts += [text for _, text in record["captions"]]
        images.append(record["image_bytes"])
        if len(texts) >= chunk_rows or len(images) >= chunk_rows:
            yield texts, images
            texts, images = [], []
    if texts or images:
        yield texts, images


def stream_training_data(data: TrainingData, text_matcher: DigestMatcher, image_matcher: DigestMatcher | None,
                         chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict:
    """Hash every training text (and image) once, chunk by chunk, into the matchers; returns counts and timing."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    with tqdm(desc="leakage: hashing training data", unit=" texts", unit_scale=True, disable=None) as progress:
        for store in data.stores:
            for texts in _store_texts(store, chunk_rows):
                text_matcher.update(text_digests(texts))
                progress.update(len(texts))
        for spec, languages, datasets_cache in data.corpora:
            for texts in _corpus_texts(spec, languages, datasets_cache, chunk_rows):
                text_matcher.update(text_digests(texts))
                progress.update(len(texts))
        for urls, default_lang, languages in data.shards:
            for texts, images in _shard_items(urls, default_lang, languages, chunk_rows):
                text_matcher.update(text_digests(texts))
                if image_matcher is not None:
                    image_matcher.update(image_digests(images))
                progress.update(len(texts))
    seconds = time.perf_counter() - started
    images = image_matcher.seen if image_matcher is not None else 0
    log.info("leakage: hashed %d training texts and %d images in %.1f s (%.0f texts/s)", text_matcher.seen, images,
             seconds, text_matcher.seen / max(seconds, 1e-9))
    return {"texts": text_matcher.seen, "images": images, "seconds": round(seconds, 2)}


# ------------------------------------------------------------------------------------------ the check
def _benchmark_captions(benchmark) -> dict[str, list[str]]:
    """lang -> every caption (retrieval benchmarks); classification benchmarks have none."""
    languages = getattr(benchmark, "languages", {}) or {}
    result = {}
    for lang, entries in languages.items():
        if isinstance(entries, list):
            result[lang] = [caption for _, captions in entries for caption in captions]
    return result


def _benchmark_images(benchmark) -> list[Path]:
    return [item[0] if isinstance(item, tuple) else item for item in benchmark.images]


def _share(found: int, total: int) -> dict:
    return {"total": int(total), "in_training": int(found), "fraction": round(found / total, 6) if total else 0.0}


def check_leakage(benchmarks: dict, data: TrainingData, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                  warn_fraction: float = DEFAULT_WARN_FRACTION) -> dict:
    """Per benchmark name: captions (in all and per language) and images found in `data`; see the module doc."""
    captions = {name: _benchmark_captions(benchmark) for name, benchmark in benchmarks.items()}
    caption_digests = {name: {lang: text_digests(texts) for lang, texts in per_lang.items()}
                       for name, per_lang in captions.items()}
    text_matcher = DigestMatcher(np.concatenate([d for per_lang in caption_digests.values() for d in per_lang.values()]
                                                or [np.zeros(0, dtype=np.uint64)]))
    image_files = {name: _benchmark_images(benchmark) for name, benchmark in benchmarks.items()}
    image_matcher = None
    file_digests: dict[str, np.ndarray] = {}
    if data.has_images:
        for name, files in image_files.items():
            file_digests[name] = image_digests(path.read_bytes() for path in files)
        image_matcher = DigestMatcher(np.concatenate(list(file_digests.values()) or [np.zeros(0, dtype=np.uint64)]))
    training = {**stream_training_data(data, text_matcher, image_matcher, chunk_rows), "sources": data.describe()}

    report = {}
    for name in benchmarks:
        entry: dict = {"captions": None, "images": None}
        if captions[name]:
            per_lang = {}
            examples = []
            for lang, digests in caption_digests[name].items():
                hits = text_matcher.contains(digests)
                per_lang[lang] = _share(int(hits.sum()), len(digests))
                examples += [f"{lang}: {captions[name][lang][i]}" for i in np.flatnonzero(hits)[:EXAMPLES]]
            found = sum(value["in_training"] for value in per_lang.values())
            total = sum(value["total"] for value in per_lang.values())
            entry["captions"] = {**_share(found, total), "languages": per_lang, "examples": examples[:EXAMPLES]}
        if image_matcher is not None:
            hits = image_matcher.contains(file_digests[name])
            entry["images"] = {**_share(int(hits.sum()), len(hits)),
                               "examples": [str(image_files[name][i]) for i in np.flatnonzero(hits)[:EXAMPLES]]}
        else:
            entry["images"] = {"total": len(image_files[name]), "in_training": None, "fraction": None,
                               "note": "the training data has no images"}
        entry["training"] = training
        entry["warn_fraction"] = warn_fraction
        report[name] = entry
        warn_if_leaking(name, entry, warn_fraction)
    return report


def warn_if_leaking(name: str, entry: dict, warn_fraction: float) -> None:
    captions, images = entry.get("captions"), entry.get("images")
    if captions:
        langs = [f"{lang} {v['in_training']}/{v['total']}" for lang, v in captions["languages"].items()
                 if v["fraction"] > warn_fraction]
        if captions["fraction"] > warn_fraction or langs:
            log.warning("leakage: %s: %d of its %d captions (%.2f%%) are in the training text (above %.2f%% in: %s)",
                        name, captions["in_training"], captions["total"], 100 * captions["fraction"],
                        100 * warn_fraction, ", ".join(langs) or "none alone")
    if images and images.get("fraction") is not None and images["fraction"] > warn_fraction:
        log.warning("leakage: %s: %d of its %d images (%.2f%%) are in the training shards (same bytes)",
                    name, images["in_training"], images["total"], 100 * images["fraction"])


@dataclass
class LeakagePlan:
    """The eval config's `leakage` section, resolved (runs read, data located) before any model loads."""

    data: TrainingData
    warn_fraction: float = DEFAULT_WARN_FRACTION
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def check(self, benchmarks: dict) -> dict:
        return check_leakage(benchmarks, self.data, chunk_rows=self.chunk_rows, warn_fraction=self.warn_fraction)


LEAKAGE_KEYS = ("runs", "upstream", "shards", "warn_fraction", "chunk_rows")


def plan_from_config(section, benchmarks: dict) -> LeakagePlan | None:
    """The eval config's `leakage` section (keys: `LEAKAGE_KEYS`, documented in configs/eval.yaml) as a plan;
    None when it names no runs and no shards, or there are no benchmarks to check."""
    if section is None:
        return None
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else dict(section)
    unknown = sorted(set(options) - set(LEAKAGE_KEYS))
    if unknown:
        raise UserError(f"leakage.{unknown[0]}: unknown key (leakage has {', '.join(LEAKAGE_KEYS)})")
    runs = options.get("runs") or []
    runs = [runs] if isinstance(runs, str) else list(runs)
    if not runs and not options.get("shards"):
        return None
    if not benchmarks:
        log.warning("leakage: runs/shards are set but benchmarks=[] is empty: nothing to check")
        return None
    warn = options.get("warn_fraction", DEFAULT_WARN_FRACTION)
    chunk = options.get("chunk_rows", DEFAULT_CHUNK_ROWS)
    if warn is None or not 0 <= float(warn) <= 1:
        raise UserError(f"leakage.warn_fraction={warn}: give a share in [0, 1]")
    if chunk is None or int(chunk) < 1:
        raise UserError(f"leakage.chunk_rows={chunk}: give a positive number of rows")
    data = training_data(runs, options.get("shards"), upstream=bool(options.get("upstream", True)))
    return LeakagePlan(data, float(warn), int(chunk))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="altclip-train check-leakage",
        description="How many of each benchmark's captions (normalised) and images (same bytes) are in a training "
                    "run's data.")
    parser.add_argument("run", metavar="RUN", help="a training run dir (its config.yaml), or its final/ model dir")
    parser.add_argument("benchmarks", metavar="BENCHMARK", nargs="+", help="xtd10, xm3600, flickr30k_200, ...")
    parser.add_argument("--data-root", help="the folder holding the benchmarks (as eval's data_root)")
    parser.add_argument("--benchmark-options", default=None,
                        help="per benchmark reader options, YAML: '{xm3600: {languages: [en, de]}}'")
    parser.add_argument("--shards", action="append", default=None,
                        help="more image-text shards to check against (repeatable; a spec as data.shards)")
    parser.add_argument("--no-upstream", action="store_true",
                        help="do not follow the runs this run's teacher/student came from")
    parser.add_argument("--warn-fraction", type=float, default=DEFAULT_WARN_FRACTION,
                        help=f"warn above this share of captions or images (default {DEFAULT_WARN_FRACTION})")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="training texts hashed per chunk")
    parser.add_argument("--json", metavar="PATH", help="also write the counts as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from altclip_train.evaluate.benchmarks import open_benchmark
    from altclip_train.evaluate.report import leakage_markdown

    options = {}
    if args.benchmark_options:
        import yaml

        try:
            options = yaml.safe_load(args.benchmark_options) or {}
        except yaml.YAMLError as error:
            raise UserError(f"--benchmark-options: not YAML: {str(error).splitlines()[0]}") from error
        if not isinstance(options, dict):
            raise UserError("--benchmark-options: give a mapping, e.g. '{xm3600: {languages: [en, de]}}'")
    run_config_path(args.run)  # the cheap checks first (RUN, then the benchmarks), each failing in one line
    benchmarks = {}
    for name in args.benchmarks:
        benchmark = open_benchmark(name, args.data_root, **(options.get(name) or {}))
        benchmarks[benchmark.name] = benchmark
    data = training_data([args.run], args.shards, upstream=not args.no_upstream)
    report = check_leakage(benchmarks, data, chunk_rows=args.chunk_rows, warn_fraction=args.warn_fraction)
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(leakage_markdown(report))
    return 0
