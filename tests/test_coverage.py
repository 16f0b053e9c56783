"""Tokenizer coverage (`altclip-train coverage` and the report each phase-1 run logs at setup), checked against
counts worked out by hand on tiny XLM-R tokenizers that never saw Devanagari, with and without byte fallback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from altclip_train.data.coverage import LanguageCoverage, measure, remedy, warning_line
from altclip_train.models.tiny import (
    SAMPLE_CAPTIONS,
    SAMPLE_SENTENCES,
    train_xlmr_tokenizer,
)

# Two Hindi words of 6 code points each; the tokenizers below were trained on the 9 sample languages only.
HINDI = "नमस्ते दुनिया"
DHIVEHI = "ދިވެހި ބަސް"  # Thaana script, outside XLM-R's 100 languages


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("coverage_tokenizers")
    for fallback in (True, False):
        # 1000 pieces: room for every character of the sample languages next to the 256 byte pieces.
        train_xlmr_tokenizer(SAMPLE_SENTENCES, root / str(fallback), vocab_size=1000, byte_fallback=fallback)
    return {fallback: root / str(fallback) for fallback in (True, False)}


@pytest.fixture(scope="module")
def tokenizers(tokenizer_dirs) -> dict:
    from transformers import AutoTokenizer

    return {fallback: AutoTokenizer.from_pretrained(path) for fallback, path in tokenizer_dirs.items()}


def test_unseen_script_with_byte_fallback_is_spelled_in_bytes(tokenizers):
    tokenizer = tokenizers[True]
    # By hand: each word is the piece "▁" and then 3 UTF-8 bytes per Devanagari code point: 2 x (1 + 3 x 6) = 38
    # tokens, 36 of them byte pieces, none <unk>, for 12 non-space characters.
    assert tokenizer.tokenize(HINDI)[:4] == ["▁", "<0xE0>", "<0xA4>", "<0xA8>"]
    row = measure(tokenizer, "hi", [HINDI])
    assert (row.sentences, row.characters, row.tokens, row.unk, row.byte_pieces) == (1, 12, 38, 0, 36)
    assert row.byte_rate == pytest.approx(36 / 38) and row.tokens_per_char == pytest.approx(38 / 12)
    assert row.unk_rate == 0.0 and row.verdict == "poor"
    line = warning_line(row)
    assert line.startswith("language hi: poor coverage: 94.7% of its tokens are byte pieces (3.17 tokens per")
    assert "<unk>" not in line and "XLM-R's own tokenizer covers it" in line


def test_unseen_script_without_byte_fallback_is_unk(tokenizers):
    from altclip_train.models.student import unk_rate

    tokenizer = tokenizers[False]
    # By hand: "▁" then one <unk> for the whole unknown word (sentencepiece fuses unknown characters): 4 tokens.
    row = measure(tokenizer, "hi", [HINDI])
    assert (row.tokens, row.unk, row.byte_pieces, row.characters) == (4, 2, 0, 12)
    assert row.unk_rate == 0.5 == unk_rate(tokenizer, [HINDI]) and row.tokens_per_char == pytest.approx(4 / 12)
    assert row.verdict == "poor"
    assert "50.0% of its tokens are <unk>, so that text never reaches the model" in warning_line(row)


def test_languages_the_tokenizer_saw_are_ok(tokenizers):
    for fallback, tokenizer in tokenizers.items():
        for lang in ("en", "fr", "zh", "ar"):
            row = measure(tokenizer, lang, SAMPLE_CAPTIONS[lang])
            assert (row.unk_rate, row.byte_rate, row.verdict) == (0.0, 0.0, "ok"), (fallback, lang)
            assert warning_line(row) is None and 0 < row.tokens_per_char <= 1


def test_outside_xlmr_the_remedy_is_a_bigger_vocabulary_whose_rows_need_training(tokenizers):
    row = measure(tokenizers[True], "dv", [DHIVEHI])
    assert row.verdict == "poor"
    text = remedy(row)
    for phrase in ("not among XLM-R's 100 pre-training languages", "extend the student's vocabulary",
                   "NLLB-200's or mT5's", "resize the embeddings", "new rows start untrained", "phase 1 must train"):
        assert phrase in text, phrase
    assert "XLM-R's own tokenizer covers it" in remedy(measure(tokenizers[True], "hi", [HINDI]))


def test_verdict_thresholds():
    def verdict(unk=0, byte_pieces=0):
        return LanguageCoverage("fr", tokens=1000, unk=unk, byte_pieces=byte_pieces).verdict

    assert [verdict(unk=4), verdict(unk=5), verdict(unk=29), verdict(unk=30)] == ["ok", "weak", "weak", "poor"]
    assert [verdict(byte_pieces=9), verdict(byte_pieces=10), verdict(byte_pieces=100)] == ["ok", "weak", "poor"]


def test_the_xlmr_language_list_has_its_100_entries():
    from altclip_train.data.languages import (
        XLMR_LANGUAGES,
        XLMR_VARIANTS,
        in_xlmr,
        iso_code,
    )

    assert len(XLMR_LANGUAGES) + len(XLMR_VARIANTS) == 100
    assert in_xlmr("hi") and in_xlmr("hin_Deva") and in_xlmr("zh-Hant") and not in_xlmr("dv")
    assert iso_code("swh_Latn") == "sw" and iso_code("yor_Latn") == "yo" and iso_code("xyz_Abcd") == "xyz_Abcd"


# ---------------------------------------------------------------- the command
def test_command_reports_flags_and_a_corpora_file(tokenizer_dirs, tmp_path, capsys):
    from altclip_train import cli

    tokenizer_dir = str(tokenizer_dirs[True])
    (tmp_path / "hi.txt").write_text(f"{HINDI}\n\n{HINDI}\n", encoding="utf-8")
    rows = "".join(f"{en}\t{fr}\n" for en, fr in zip(SAMPLE_CAPTIONS["en"], SAMPLE_CAPTIONS["fr"]))
    (tmp_path / "fr.tsv").write_text("en\tfr\n" + rows, encoding="utf-8")
    (tmp_path / "corpora.yaml").write_text(f"data:\n  corpora:\n    - {{lang: fr, path: {tmp_path / 'fr.tsv'}}}\n")
    cli.main(["coverage", tokenizer_dir, "--corpora", str(tmp_path / "corpora.yaml"),
              "--corpus", f"hi={tmp_path / 'hi.txt'}", "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines() if line.startswith("  ") and "verdict" not in line]
    assert [row[0] for row in table] == ["en", "fr", "hi"]
    assert table[2] == ["hi", "2", "0.00%", "94.74%", "3.17", "poor"]
    assert table[0][-1] == "ok" and table[1][-1] == "ok"
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: language hi: poor coverage")
    report = {row["lang"]: row for row in json.loads((tmp_path / "report.json").read_text())}
    assert report["hi"]["tokens"] == 76 and report["hi"]["byte_pieces"] == 72 and report["fr"]["sentences"] == 8


@pytest.mark.parametrize("args, expected", [
    (["--corpus", "hi"], "--corpus hi: expected LANG=PATH"),
    (["--corpus", "hi=/nonexistent/hi.txt"], "corpus file not found: /nonexistent/hi.txt"),
    (["--corpora", "/nonexistent/c.yaml"], "corpora file not found: /nonexistent/c.yaml"),
    ([], "give the corpora with --corpus LANG=PATH"),
])
def test_command_bad_input_is_one_line(tokenizer_dirs, args, expected, capsys):
    from altclip_train import cli

    with pytest.raises(SystemExit):
        cli.main(["coverage", str(tokenizer_dirs[True]), *args])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err, err


# ---------------------------------------------------------------- phase-1 setup
def test_phase1_setup_logs_the_report_once_with_the_stores_exact_unk_rate(tokenizers, tmp_path, caplog):
    from altclip_train.data import coverage
    from altclip_train.data.corpora import CorpusSpec
    from altclip_train.data.corpus_store import Tokenization, open_or_build

    tokenizer = tokenizers[False]
    english = [f"{caption} {extra}" for extra in ("dog", "cat", "city", "park", "sky") for caption in SAMPLE_CAPTIONS["en"]]
    (tmp_path / "hi.tsv").write_text("en\thi\n" + "".join(f"{en}\t{HINDI}\n" for en in english), encoding="utf-8")
    specs = [CorpusSpec.from_config({"lang": "hi", "path": str(tmp_path / "hi.tsv")}, 0)]
    side = Tokenization(tokenizer, 64)
    for start in ("first", "restart"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="altclip_train"):
            store = open_or_build(specs, ["en", "hi"], side, side, tmp_path / "cache")
        tables = [r for r in caplog.records if r.getMessage().startswith("tokenizer coverage of")]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "language hi:" in r.getMessage()]
        assert len(tables) == 1 and len(warnings) == 1, start
        assert "(<unk>: whole corpus)" in tables[0].getMessage()
        assert "50.0% of its tokens are <unk>" in warnings[0].getMessage()
        assert not any("language en:" in r.getMessage() for r in caplog.records)
    assert store.meta["unk_rates"]["hi"] == 0.5

    # The sample is fixed in size: 5 sentences per language of a 40-pair store, and <unk> still the exact rate.
    measured = []
    real_measure = coverage.measure

    def counting(tok, lang, texts, byte_ids=None):
        texts = list(texts)
        measured.append((lang, len(texts)))
        return real_measure(tok, lang, texts, byte_ids)

    coverage.measure = counting
    try:
        rows = coverage.store_coverage(store, tokenizer, sample=5)
    finally:
        coverage.measure = real_measure
    assert measured == [("en", 5), ("hi", 5)] and store.num_pairs == 40
    assert {row.lang: row.unk_rate for row in rows} == {"en": 0.0, "hi": 0.5}
