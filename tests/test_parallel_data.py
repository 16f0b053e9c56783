"""Phase-1 data: corpus formats, bad input, per-batch padding, bucketing, weights, teacher cache."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from altclip_train.data.batching import BatchPlan, rank_slice
from altclip_train.data.parallel import CorpusSpec, ParallelTextData, load_corpus
from altclip_train.models.teacher import TeacherTextEncoder
from conftest import FakeAccelerator

FAKE_ACCELERATOR = FakeAccelerator()


def make_data(teacher, student, corpora, cache_dir, **kwargs):
    options = dict(languages=["en", "zh", "fr", "ja"], batch_size=8, student=str(student), teacher=str(teacher),
                   cache_dir=str(cache_dir), val_size=8, num_workers=0)
    options.update(kwargs)
    return ParallelTextData(corpora=corpora, **options)


# ---------------------------------------------------------------- formats and bad input
def test_reads_tsv_csv_jsonl_parquet_and_moses(tmp_path):
    import pandas as pd

    pairs = [("Hello there", "Bonjour"), ("A cat, asleep", "Un chat, endormi"), ('He said "hi"', 'Il a dit "salut"')]
    frame = pd.DataFrame(pairs, columns=["english", "french"])
    frame.to_csv(tmp_path / "c.csv", index=False)
    frame.to_json(tmp_path / "c.jsonl", orient="records", lines=True, force_ascii=False)
    frame.to_parquet(tmp_path / "c.parquet")
    (tmp_path / "c.tsv").write_text("english\tfrench\n" + "\n".join(f"{a}\t{b}" for a, b in pairs) + "\n")
    (tmp_path / "m.en").write_text("\n".join(a for a, _ in pairs) + "\n")
    (tmp_path / "m.fr").write_text("\n".join(b for _, b in pairs) + "\n")
    for name in ("c.csv", "c.jsonl", "c.parquet", "c.tsv"):
        corpus = load_corpus(CorpusSpec(lang="fr", path=str(tmp_path / name), source_column="english",
                                        target_column="french"))
        assert list(zip(corpus.source, corpus.target)) == pairs, name
    moses = load_corpus(CorpusSpec(lang="fr", source_path=str(tmp_path / "m.en"), target_path=str(tmp_path / "m.fr")))
    assert list(zip(moses.source, moses.target)) == pairs


def test_missing_file_unknown_column_and_moses_mismatch_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file not found: .*nope.tsv"):
        load_corpus(CorpusSpec(lang="zh", path=str(tmp_path / "nope.tsv")))
    (tmp_path / "c.tsv").write_text("en\tzh\nhello\t你好\n")
    with pytest.raises(ValueError, match="unknown column 'chinese' \\(columns: en, zh\\)"):
        load_corpus(CorpusSpec(lang="zh", path=str(tmp_path / "c.tsv"), target_column="chinese"))
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.zh").write_text("一\n二\n")
    with pytest.raises(ValueError, match="has 3 lines but .*a.zh has 2"):
        load_corpus(CorpusSpec(lang="zh", source_path=str(tmp_path / "a.en"), target_path=str(tmp_path / "a.zh")))


def test_empty_sentences_are_skipped_and_counted(tmp_path):
    (tmp_path / "c.tsv").write_text("en\tzh\nhello\t你好\n   \t空\nbye\t \nok\t好\n")
    corpus = load_corpus(CorpusSpec(lang="zh", path=str(tmp_path / "c.tsv")))
    assert corpus.source == ["hello", "ok"] and corpus.skipped["empty_sentence"] == 2


def test_language_not_in_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="language 'de' is not in data.languages"):
        ParallelTextData(corpora=[{"lang": "de", "path": "x.tsv"}], languages=["en", "zh"], batch_size=4,
                         student="s", teacher="t")


# ---------------------------------------------------------------- batching
def test_batches_pad_to_their_own_longest_row_and_bucket_by_length(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    corpora = [{"lang": lang, "path": str(parallel_dir / f"{lang}.tsv")} for lang in ("zh", "fr", "ja")]
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path)
    data.setup(FAKE_ACCELERATOR)
    widths = []
    for batch in data.train_batches(epoch=0):
        mask = batch["student_attention_mask"]
        assert mask.sum(dim=1).max() == mask.shape[1]  # no column of pure padding
        assert batch["teacher_embeds"].shape == (mask.shape[0], 64) and mask.shape[0] == 16
        assert batch["lang"][:8] == ["en"] * 8
        widths.append(mask.shape[1])
    assert len(set(widths)) > 1


def test_batch_plan_weights_and_exactly_once_split_across_ranks():
    lengths = np.arange(40) % 7
    plan = BatchPlan(lengths=lengths, groups=[np.arange(0, 20), np.arange(20, 40)], weights=[1.0, 0.5],
                     global_batch_size=6, seed=3, drop_last=False)
    rows = plan.epoch_rows(0)
    assert np.isin(np.arange(20), rows).all() and np.isin(rows, np.arange(40)).all()
    assert (rows >= 20).sum() == 10
    seen = np.concatenate([rank_slice(b, r, 2) for b in plan.global_batches(1) for r in range(2)])
    assert sorted(seen.tolist()) == sorted(plan.epoch_rows(1).tolist())
    assert [b.tolist() for b in plan.global_batches(1)] == [b.tolist() for b in plan.global_batches(1)]
    assert plan.epoch_rows(1).tolist() != plan.epoch_rows(2).tolist()


# ---------------------------------------------------------------- teacher cache
@pytest.fixture()
def corpora(parallel_dir):
    return [{"lang": lang, "path": str(parallel_dir / f"{lang}.tsv")} for lang in ("zh", "fr")]


def test_cached_targets_equal_the_live_teacher_within_fp16(tiny_teacher, tiny_student, corpora, tmp_path):
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path)
    data.setup(FAKE_ACCELERATOR)
    live = TeacherTextEncoder(str(tiny_teacher)).encode(data.rows_source_texts(), show_progress=False)
    cached = np.asarray(data.rows.teacher, dtype=np.float32)
    assert cached.shape == live.shape
    np.testing.assert_allclose(cached, live, rtol=2e-3, atol=2e-3)
    assert np.abs(live).max() > 0.1  # not trivially zero


def test_complete_cache_never_loads_the_teacher(tiny_teacher, tiny_student, corpora, tmp_path, monkeypatch):
    make_data(tiny_teacher, tiny_student, corpora, tmp_path).setup(FAKE_ACCELERATOR)

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was loaded although the cache is complete")

    monkeypatch.setattr("altclip_train.models.teacher.load_teacher_text_model", refuse)
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path)
    data.setup(FAKE_ACCELERATOR)
    assert data.rows.teacher.shape[1] == 64


def test_cache_key_changes_with_teacher_text_and_max_length(tiny_teacher, tiny_student, corpora, tmp_path,
                                                          parallel_dir):
    make_data(tiny_teacher, tiny_student, corpora, tmp_path).setup(FAKE_ACCELERATOR)
    make_data(tiny_teacher, tiny_student, corpora, tmp_path, teacher_max_length=16).setup(FAKE_ACCELERATOR)
    (tmp_path / "other.tsv").write_text("en\tzh\n" + "".join(f"sentence {i}\t句子 {i}\n" for i in range(30)))
    other = [{"lang": "zh", "path": str(tmp_path / "other.tsv")}]
    make_data(tiny_teacher, tiny_student, other, tmp_path).setup(FAKE_ACCELERATOR)
    # Same English text under another language pair: the same entry, reused.
    make_data(tiny_teacher, tiny_student, corpora[:1], tmp_path).setup(FAKE_ACCELERATOR)
    entries = [p for p in (tmp_path / "teacher_text").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 3


def test_corrupt_cache_is_rebuilt_not_trusted(tiny_teacher, tiny_student, corpora, tmp_path, caplog):
    make_data(tiny_teacher, tiny_student, corpora, tmp_path).setup(FAKE_ACCELERATOR)
    entry = next(p for p in (tmp_path / "teacher_text").iterdir() if not p.name.startswith("."))
    good = np.load(entry / "embeddings.npy")
    blob = bytearray((entry / "embeddings.npy").read_bytes())
    blob[-10:] = b"\xff" * 10
    (entry / "embeddings.npy").write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING):
        data = make_data(tiny_teacher, tiny_student, corpora, tmp_path)
        data.setup(FAKE_ACCELERATOR)
    assert "corrupt" in caplog.text and "checksum" in caplog.text
    np.testing.assert_array_equal(np.asarray(data.rows.teacher), good)
    assert json.loads((entry / "meta.json").read_text())["rows"] == len(good)
