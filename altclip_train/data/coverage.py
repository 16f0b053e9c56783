"""Tokenizer coverage: how well the student's tokenizer spells each language of the phase-1 corpora,
measured before any training step is spent on text the model cannot read.

    altclip-train coverage FacebookAI/xlm-roberta-large --corpus hi=out/hi/corpus.hi --corpus zh=en-zh.tsv
    altclip-train coverage outputs/my-student --corpora corpora.yaml --sample 5000

Per language it reports, on a sample of its sentences:

| column        | what                                                                                       |
|---------------|--------------------------------------------------------------------------------------------|
| `<unk>`       | share of tokens that are the unknown token (as `models.student.unk_rate` counts it)        |
| `bytes`       | share of tokens that are byte pieces `<0x..>` (a byte-fallback tokenizer spelling a character it has no piece for) |
| `tokens/char` | tokens per non-space character; compare languages of one script (byte-spelled text shows 2-4) |
| `verdict`     | `ok`, `weak` (>= 0.5% `<unk>` or >= 1% bytes) or `poor` (>= 3% `<unk>` or >= 10% bytes)     |

Text lost to `<unk>` never reaches the model; byte-spelled text does, but as long runs of pieces whose
embeddings carry little meaning. A weak or poor language gets a warning with a remedy, which depends on
whether XLM-R was pre-trained on it (`data/languages.py` lists its 100 languages).

Corpora are given either as `--corpus LANG=PATH` (a text file, one sentence per line, such as one side of a
Moses pair; a TSV/CSV/JSONL/Parquet path is read as the phase-1 entry `{lang: LANG, path: PATH}`, English
column included) or as `--corpora FILE`: a YAML or JSON file holding a list of `data.corpora` entries, or a
mapping with `corpora:` (and optionally `languages:`), or a whole config with `data.corpora`.

Every phase-1 run prints the same report once at setup (`corpus_store.open_or_build`): there the `<unk>`
rate is the exact one the corpus store counted while tokenising the whole corpus, and the other columns
come from a fixed-size sample of the store, so the report costs the same at any corpus size.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from altclip_train.data.languages import XLMR_LANGUAGES, in_xlmr, language_name
from altclip_train.models.student import UNK_RATE_WARNING

log = logging.getLogger(__name__)

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
BYTE_RATE_WARNING = 0.10
WEAK_UNK_RATE = 0.005
WEAK_BYTE_RATE = 0.01
DEFAULT_SAMPLE = 2000


@dataclass
class LanguageCoverage:
    """Counts for one language; `unk_rate_exact` replaces the sampled `<unk>` rate when the whole corpus was counted."""

    lang: str
    sentences: int = 0
    characters: int = 0
    tokens: int = 0
    unk: int = 0
    byte_pieces: int = 0
    unk_rate_exact: float | None = None

    @property
    def unk_rate(self) -> float:
        if self.unk_rate_exact is not None:
            return self.unk_rate_exact
        return self.unk / self.tokens if self.tokens else 0.0

    @property
    def byte_rate(self) -> float:
        return self.byte_pieces / self.tokens if self.tokens else 0.0

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.characters if self.characters else 0.0

    @property
    def verdict(self) -> str:
        if self.unk_rate >= UNK_RATE_WARNING or self.byte_rate >= BYTE_RATE_WARNING:
            return "poor"
        if self.unk_rate >= WEAK_UNK_RATE or self.byte_rate >= WEAK_BYTE_RATE:
            return "weak"
        return "ok"

    def as_dict(self) -> dict:
        return {**asdict(self), "unk_rate": self.unk_rate, "byte_rate": self.byte_rate,
                "tokens_per_char": self.tokens_per_char, "verdict": self.verdict, "in_xlmr": in_xlmr(self.lang)}


def byte_piece_ids(tokenizer) -> np.ndarray:
    """Ids of the tokenizer's byte pieces `<0x00>`..`<0xFF>` (none for a tokenizer without byte fallback)."""
    return np.asarray(sorted(i for token, i in tokenizer.get_vocab().items() if BYTE_PIECE.fullmatch(token)),
                      dtype=np.int64)


def measure(tokenizer, lang: str, texts: Iterable[str], byte_ids: np.ndarray | None = None) -> LanguageCoverage:
    """Tokenise `texts` (no special tokens added) once and count `<unk>`, byte pieces and characters."""
    texts = [text for text in texts if isinstance(text, str) and text.strip()]
    row = LanguageCoverage(lang, sentences=len(texts))
    if not texts:
        return row
    byte_ids = byte_piece_ids(tokenizer) if byte_ids is None else byte_ids
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    flat = np.fromiter((token for sentence in ids for token in sentence), dtype=np.int64)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    row.tokens = len(flat)
    row.unk = int((flat == unk_id).sum()) if unk_id is not None else 0
    row.byte_pieces = int(np.isin(flat, byte_ids).sum()) if len(byte_ids) else 0
    row.characters = sum(len(text) - sum(map(str.isspace, text)) for text in texts)
    return row


# --------------------------------------------------------------------------------------------- report
def remedy(row: LanguageCoverage) -> str:
    """What to do about a weak or poor language: one sentence, different inside and outside XLM-R's 100."""
    if in_xlmr(row.lang):
        return (f"{language_name(row.lang)} is one of XLM-R's 100 pre-training languages, so XLM-R's own tokenizer "
                f"covers it: check that the student tokenizer is XLM-R's (not a smaller vocabulary) and that the corpus "
                f"is in the script and encoding XLM-R saw (native script, not romanised; Unicode, not Zawgyi or "
                f"mojibake)")
    return (f"'{row.lang}' is not among XLM-R's 100 pre-training languages (altclip_train/data/languages.py): extend "
            f"the student's vocabulary with pieces for its script (train a SentencePiece model on the corpus, or take "
            f"the pieces of a tokenizer that covers it, such as NLLB-200's or mT5's), add them to the tokenizer and "
            f"resize the embeddings (model.resize_token_embeddings); the new rows start untrained, so phase 1 must "
            f"train them: give the language plenty of pairs and keep the embeddings trainable")


def warning_line(row: LanguageCoverage) -> str | None:
    """The warning for a weak or poor language, or None."""
    if row.verdict == "ok":
        return None
    problems = []
    if row.unk_rate >= WEAK_UNK_RATE:
        problems.append(f"{100 * row.unk_rate:.1f}% of its tokens are <unk>, so that text never reaches the model")
    if row.byte_rate >= WEAK_BYTE_RATE:
        problems.append(f"{100 * row.byte_rate:.1f}% of its tokens are byte pieces ({row.tokens_per_char:.2f} tokens "
                        f"per character), so it is spelled out byte by byte")
    return f"language {row.lang}: {row.verdict} coverage: {'; '.join(problems)}. Remedy: {remedy(row)}"


def report_table(rows: list[LanguageCoverage], tokenizer_name: str, exact_unk: bool = False) -> str:
    """The per-language table (no warnings), as printed by the command and logged at phase-1 setup."""
    unk_note = " (<unk>: whole corpus)" if exact_unk else ""
    lines = [f"tokenizer coverage of {tokenizer_name}{unk_note}:",
             f"  {'lang':<8} {'sentences':>9} {'<unk>':>7} {'bytes':>7} {'tokens/char':>11}  verdict"]
    for row in rows:
        note = "" if in_xlmr(row.lang) else " (not an XLM-R language)"
        lines.append(f"  {row.lang:<8} {row.sentences:>9} {100 * row.unk_rate:>6.2f}% {100 * row.byte_rate:>6.2f}% "
                     f"{row.tokens_per_char:>11.2f}  {row.verdict}{note}")
    return "\n".join(lines)


def log_report(rows: list[LanguageCoverage], tokenizer_name: str, exact_unk: bool = False) -> None:
    log.info("%s", report_table(rows, tokenizer_name, exact_unk))
    for row in rows:
        line = warning_line(row)
        if line:
            log.warning("%s", line)


# --------------------------------------------------------------------------------------------- phase-1 store
def store_coverage(store, tokenizer, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> list[LanguageCoverage]:
    """Coverage of a tokenised corpus store: exact `<unk>` rates from its meta, the rest from a sample.

    Pair rows are drawn uniformly from a pool of at most 50 x `sample` rows (an O(pool) read of the
    memory-mapped group column), so a language with a small share still gets rows; one that the pool missed
    is read from its own group.
    """
    rng = np.random.default_rng(seed)
    groups = store.groups
    langs = sorted({group["lang"] for group in groups})
    lang_of_group = np.asarray([langs.index(group["lang"]) for group in groups] or [0])
    n = store.num_pairs
    pool = np.unique(rng.integers(0, n, size=min(n, 50 * sample))) if n > 50 * sample else np.arange(n)
    pool_lang = lang_of_group[np.asarray(store.pair_group[pool], dtype=np.int64)] if n else np.zeros(0, np.int64)
    targets = pa.ipc.open_stream(pa.memory_map(str(store.dir / "text.arrow"))).read_all().column("target")
    exact = store.meta.get("unk_rates", {})
    byte_ids = byte_piece_ids(tokenizer)
    sources = store.num_sources
    english_rows = np.sort(rng.choice(sources, size=min(sample, sources), replace=False)) if sources else []
    rows = [measure(tokenizer, "en", store.source_texts(english_rows), byte_ids)]
    for code, lang in enumerate(langs):
        if lang == "en":
            continue
        picked = pool[pool_lang == code]
        if not len(picked):
            picked = np.concatenate([store.group_rows(g) for g, group in enumerate(groups) if group["lang"] == lang])
        if len(picked) > sample:
            picked = np.sort(rng.choice(picked, size=sample, replace=False))
        rows.append(measure(tokenizer, lang, targets.take(pa.array(np.asarray(picked, dtype=np.int64))).to_pylist(),
                            byte_ids))
    for row in rows:
        if row.lang in exact:
            row.unk_rate_exact = float(exact[row.lang])
    return rows


# --------------------------------------------------------------------------------------------- command
class _Sampler:
    """A uniform sample of up to `size` sentences per language from a stream: the rows with the smallest
    random keys, so memory stays at `size` per language however long the corpus is."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.rng = size, np.random.default_rng(seed)
        self.kept: dict[str, tuple[np.ndarray, list[str]]] = {}

    def add(self, lang: str, texts: pa.Array) -> None:
        keys = self.rng.random(len(texts))
        old_keys, old_texts = self.kept.get(lang, (np.zeros(0), []))
        if len(old_keys) >= self.size:
            chosen = np.flatnonzero(keys < old_keys.max())
        else:
            chosen = np.arange(len(texts))
        if not len(chosen):
            return
        keys = np.concatenate([old_keys, keys[chosen]])
        texts = old_texts + texts.take(pa.array(chosen)).to_pylist()
        if len(keys) > self.size:
            best = np.argpartition(keys, self.size - 1)[:self.size]
            keys, texts = keys[best], [texts[i] for i in best]
        self.kept[lang] = (keys, texts)

    def texts(self, lang: str) -> list[str]:
        return self.kept.get(lang, (None, []))[1]


def load_corpora_file(path: str) -> tuple[list[dict], list[str] | None]:
    """`data.corpora` entries (and `languages`, if given) from a YAML or JSON file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"corpora file not found: {path}")
    from omegaconf import OmegaConf

    try:
        loaded = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    except Exception as error:  # omegaconf wraps yaml's parser errors in several types
        raise ValueError(f"{path}: cannot read it as YAML/JSON ({str(error).splitlines()[0]})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("data"), dict):
        loaded = loaded["data"]
    languages = loaded.get("languages") if isinstance(loaded, dict) else None
    corpora = loaded.get("corpora") if isinstance(loaded, dict) else loaded
    if not isinstance(corpora, list) or not corpora:
        raise ValueError(f"{path}: expected a list of data.corpora entries (or a mapping with corpora: [...])")
    return corpora, languages


def parse_corpus_flag(flag: str, position: int) -> dict:
    lang, sep, path = flag.partition("=")
    if not sep or not lang.strip() or not path.strip():
        raise ValueError(f"--corpus {flag}: expected LANG=PATH, e.g. --corpus hi=out/hi/corpus.hi")
    from altclip_train.data.corpora import FORMATS

    path = path.strip()
    if Path(path).suffix.lower() in FORMATS:
        return {"lang": lang.strip(), "path": path}
    return {"lang": lang.strip(), "text_path": path}


def corpus_coverage(tokenizer, entries: list[dict], languages: list[str] | None = None,
                    sample: int = DEFAULT_SAMPLE, seed: int = 0) -> tuple[list[LanguageCoverage], Counter]:
    """Coverage per language of `entries`: `data.corpora` entries, or `{lang, text_path}` for a plain text file."""
    from altclip_train.data.corpora import CorpusSpec, _read_lines, iter_pairs

    sampler = _Sampler(sample, seed)
    skipped: Counter = Counter()
    order: list[str] = []
    specs = []
    for position, entry in enumerate(entries):
        if "text_path" in entry:
            specs.append(entry)
        else:
            specs.append(CorpusSpec.from_config(dict(entry), position))
    allowed = list(languages or []) or sorted({*XLMR_LANGUAGES, *(s.lang for s in specs
                                                                   if isinstance(s, CorpusSpec) and s.lang)})
    for spec in specs:
        if isinstance(spec, dict):
            path = Path(spec["text_path"])
            if not path.is_file():
                raise FileNotFoundError(f"corpus file not found: {path}")
            order.append(spec["lang"])
            for block in _read_lines(path):
                sampler.add(spec["lang"], pa.array([line for line in block if line.strip()], pa.string()))
            continue
        for batch in iter_pairs(spec, allowed, skipped):
            order.append("en")
            sampler.add("en", batch.column(0))
            langs = batch.column(2)
            for lang in sorted(set(langs.to_pylist())):
                order.append(lang)
                sampler.add(lang, pc.filter(batch.column(1), pc.equal(langs, lang)))
    byte_ids = byte_piece_ids(tokenizer)
    seen = list(dict.fromkeys(order))
    return [measure(tokenizer, lang, sampler.texts(lang), byte_ids) for lang in seen], skipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="altclip-train coverage",
        description="How well a student tokenizer covers each language of the corpora: <unk> rate, byte-fallback "
                    "rate, tokens per character and a verdict, with a remedy for badly covered languages.")
    parser.add_argument("tokenizer", help="student tokenizer: dir or hub id (an XLM-R or phase-1 output dir)")
    parser.add_argument("--corpus", action="append", default=[], metavar="LANG=PATH",
                        help="a text file (one sentence per line) in LANG; a .tsv/.csv/.jsonl/.parquet path is read "
                             "as the data.corpora entry {lang: LANG, path: PATH}; repeatable")
    parser.add_argument("--corpora", default=None, metavar="FILE",
                        help="YAML/JSON with data.corpora entries (a list, {corpora: [...]}, or a config with data:)")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                        help=f"sentences per language to tokenise (default {DEFAULT_SAMPLE})")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point for `altclip-train coverage`: prints the table and a warning per weak or poor language."""
    args = build_parser().parse_args(argv)
    if not args.corpus and not args.corpora:
        raise ValueError("give the corpora with --corpus LANG=PATH (repeatable) or --corpora FILE")
    if args.sample < 1:
        raise ValueError(f"--sample must be at least 1, got {args.sample}")
    entries, languages = load_corpora_file(args.corpora) if args.corpora else ([], None)
    entries = list(entries) + [parse_corpus_flag(flag, i) for i, flag in enumerate(args.corpus)]
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=args.trust_remote_code)
    except OSError as error:
        raise ValueError(f"tokenizer {args.tokenizer}: cannot load it ({str(error).strip().splitlines()[0]})") from None
    rows, skipped = corpus_coverage(tokenizer, entries, languages, args.sample)
    print(report_table(rows, args.tokenizer))
    for row in rows:
        line = warning_line(row)
        if line:
            print(f"warning: {line}")
    if skipped:
        print("rows not read: " + ", ".join(f"{reason}={count}" for reason, count in sorted(skipped.items())))
    if args.json:
        Path(args.json).write_text(json.dumps([row.as_dict() for row in rows], indent=1, ensure_ascii=False))
    return 0
