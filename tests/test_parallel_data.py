"""Phase-1 data: corpus formats and bad input, the tokenised store (same batches as a direct computation,
reused on restart), per-batch padding, bucketing, weights, language temperature, teacher cache."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from transformers import AutoTokenizer

from altclip_train.data import corpus_store
from altclip_train.data.batching import BatchPlan, language_weights, rank_slice
from altclip_train.data.corpora import CorpusSpec, iter_pairs
from altclip_train.data.parallel import ParallelTextData
from altclip_train.models.teachers import load_teacher
from conftest import FakeAccelerator

FAKE_ACCELERATOR = FakeAccelerator()
LANGS = ["en", "zh", "fr", "ja"]


def make_data(teacher, student, corpora, cache_dir, **kwargs):
    options = dict(languages=LANGS, batch_size=8, student=str(student), teacher=str(teacher),
                   cache_dir=str(cache_dir), val_size=8, num_workers=0, tokenize_num_proc=1)
    options.update(kwargs)
    return ParallelTextData(corpora=corpora, **options)


def read(spec: CorpusSpec, languages=LANGS) -> tuple[list[tuple[str, str, str]], Counter]:
    skipped: Counter = Counter()
    rows = []
    for batch in iter_pairs(spec, languages, skipped):
        rows += list(zip(*(batch.column(i).to_pylist() for i in range(3))))
    return rows, skipped


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
    expected = [(a, b, "fr") for a, b in pairs]
    for name in ("c.csv", "c.jsonl", "c.parquet", "c.tsv"):
        rows, _ = read(CorpusSpec(lang="fr", path=str(tmp_path / name), source_column="english", target_column="french"))
        assert rows == expected, name
    rows, _ = read(CorpusSpec(lang="fr", source_path=str(tmp_path / "m.en"), target_path=str(tmp_path / "m.fr")))
    assert rows == expected


def test_missing_file_unknown_column_and_moses_mismatch_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file not found: .*nope.tsv"):
        read(CorpusSpec(lang="zh", path=str(tmp_path / "nope.tsv")))
    (tmp_path / "c.tsv").write_text("en\tzh\nhello\t你好\n")
    with pytest.raises(ValueError, match="unknown column 'chinese' \\(columns: en, zh\\)"):
        read(CorpusSpec(lang="zh", path=str(tmp_path / "c.tsv"), target_column="chinese"))
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.zh").write_text("一\n二\n")
    with pytest.raises(ValueError, match="has 3 lines but .*a.zh has 2"):
        read(CorpusSpec(lang="zh", source_path=str(tmp_path / "a.en"), target_path=str(tmp_path / "a.zh")))


def test_setup_names_a_missing_corpus_file(tiny_teacher, tiny_student, tmp_path):
    data = make_data(tiny_teacher, tiny_student, [{"lang": "zh", "path": str(tmp_path / "gone.tsv")}], tmp_path)
    with pytest.raises(FileNotFoundError, match="corpus file not found: .*gone.tsv"):
        data.setup(FAKE_ACCELERATOR)


def test_empty_sentences_are_skipped_and_counted(tmp_path):
    (tmp_path / "c.tsv").write_text("en\tzh\nhello\t你好\n   \t空\nbye\t \nok\t好\n")
    rows, skipped = read(CorpusSpec(lang="zh", path=str(tmp_path / "c.tsv")))
    assert [r[0] for r in rows] == ["hello", "ok"] and skipped["empty_sentence"] == 2


def test_not_utf8_names_the_file_and_line_and_a_bom_is_dropped(tmp_path):
    latin = "en\tfr\nhello\tbonjour\ncheese\tfromage r\xe4pe\n".encode("latin-1")
    (tmp_path / "bad.tsv").write_bytes(latin)
    with pytest.raises(ValueError, match=r"bad.tsv: line 3 is not valid UTF-8 \(byte 0xe4"):
        read(CorpusSpec(lang="fr", path=str(tmp_path / "bad.tsv")))
    (tmp_path / "bad.en").write_bytes(b"one\ntwo \xff\n")
    (tmp_path / "bad.fr").write_text("un\ndeux\n")
    with pytest.raises(ValueError, match=r"bad.en: line 2 is not valid UTF-8"):
        read(CorpusSpec(lang="fr", source_path=str(tmp_path / "bad.en"), target_path=str(tmp_path / "bad.fr")))
    (tmp_path / "bom.tsv").write_text("\ufeffen\tfr\nhello\tbonjour\n", encoding="utf-8")
    (tmp_path / "bom.en").write_text("\ufeffhello\n", encoding="utf-8")
    (tmp_path / "bom.fr").write_text("\ufeffbonjour\n", encoding="utf-8")
    assert read(CorpusSpec(lang="fr", path=str(tmp_path / "bom.tsv")))[0] == [("hello", "bonjour", "fr")]
    rows, _ = read(CorpusSpec(lang="fr", source_path=str(tmp_path / "bom.en"), target_path=str(tmp_path / "bom.fr")))
    assert rows == [("hello", "bonjour", "fr")]


def test_one_file_many_languages_through_a_language_column(tmp_path, caplog):
    (tmp_path / "mixed.tsv").write_text("en\ttext\tlang\nhello\t你好\tzh\ncat\tchat\tFR\nbye\tTschüss\tde\n"
                                        "dog\t犬\tja\n", encoding="utf-8")
    spec = CorpusSpec.from_config({"path": str(tmp_path / "mixed.tsv"), "language_column": "lang",
                                   "target_column": "text"}, 0)
    with caplog.at_level(logging.WARNING):
        rows, skipped = read(spec)
    assert rows == [("hello", "你好", "zh"), ("cat", "chat", "fr"), ("dog", "犬", "ja")]
    assert skipped["unknown_language"] == 1 and "de=1" in caplog.text


def test_corpus_entries_are_checked_key_by_key():
    with pytest.raises(ValueError, match=r"data.corpora\[1\]: unknown key 'language_colum'"):
        ParallelTextData(corpora=[{"lang": "zh", "path": "a.tsv"}, {"path": "b.tsv", "language_colum": "l"}],
                         languages=["en", "zh"], batch_size=4, student="s", teacher="t")
    with pytest.raises(ValueError, match="language 'de' is not in data.languages"):
        ParallelTextData(corpora=[{"lang": "de", "path": "x.tsv"}], languages=["en", "zh"], batch_size=4,
                         student="s", teacher="t")
    with pytest.raises(ValueError, match="give lang, or language_column"):
        ParallelTextData(corpora=[{"path": "x.tsv"}], languages=["en", "zh"], batch_size=4, student="s", teacher="t")


# ---------------------------------------------------------------- the store
def test_batches_equal_a_direct_computation(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    """Same rows, same tokens, same targets as tokenising and encoding the sentences directly."""
    corpora = [{"lang": lang, "path": str(parallel_dir / f"{lang}.tsv")} for lang in ("zh", "fr")]
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path, cache_chunk_rows=8)
    data.setup(FAKE_ACCELERATOR)
    pairs = []
    for lang in ("zh", "fr"):
        pairs += [(en, other, lang) for en, other, _ in read(CorpusSpec(lang=lang, path=str(parallel_dir / f"{lang}.tsv")))[0]]
    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    teacher = load_teacher(str(tiny_teacher))
    encoder = teacher.load_text_encoder()
    seen = 0
    for batch in data.train_batches(0):
        n = len(batch["lang"]) // 2
        texts = data.source_texts(batch["source_index"][:n].numpy())
        for i in range(n):
            ids = batch["student_input_ids"][i][batch["student_attention_mask"][i].bool()].tolist()
            assert ids == tokenizer(texts[i], truncation=True, max_length=64)["input_ids"]
            translated = batch["student_input_ids"][n + i][batch["student_attention_mask"][n + i].bool()].tolist()
            candidates = [tokenizer(o, truncation=True, max_length=64)["input_ids"]
                          for en, o, lang in pairs if en == texts[i] and lang == batch["lang"][n + i]]
            assert translated in candidates
        live = teacher.encode_texts(texts, encoder=encoder)
        np.testing.assert_allclose(batch["teacher_embeds"][:n].float().numpy(), live, rtol=2e-3, atol=2e-3)
        assert (batch["teacher_embeds"][:n] == batch["teacher_embeds"][n:]).all()
        seen += n
    assert seen == data.num_train_batches(0) * 8 and data.store.num_pairs == len(pairs)


def test_restart_reuses_the_store_and_never_tokenises_again(tiny_teacher, tiny_student, parallel_dir, tmp_path,
                                                           monkeypatch):
    corpora = [{"lang": "zh", "path": str(parallel_dir / "zh.tsv")}]
    first = make_data(tiny_teacher, tiny_student, corpora, tmp_path)
    first.setup(FAKE_ACCELERATOR)

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was read or tokenised again")

    monkeypatch.setattr(corpus_store, "build_store", refuse)
    monkeypatch.setattr("altclip_train.models.teachers.clip.ClipTeacher.load_text_encoder", refuse)
    again = make_data(tiny_teacher, tiny_student, corpora, tmp_path)
    again.setup(FAKE_ACCELERATOR)
    assert again.store.dir == first.store.dir
    assert [b["student_input_ids"].tolist() for b in again.train_batches(0)] == \
           [b["student_input_ids"].tolist() for b in first.train_batches(0)]
    # A changed corpus file is a different store.
    monkeypatch.undo()
    (tmp_path / "zh.tsv").write_text((parallel_dir / "zh.tsv").read_text() + "one more\t再一个\n", encoding="utf-8")
    changed = make_data(tiny_teacher, tiny_student, [{"lang": "zh", "path": str(tmp_path / "zh.tsv")}], tmp_path)
    changed.setup(FAKE_ACCELERATOR)
    assert changed.store.dir != first.store.dir and changed.store.num_pairs == first.store.num_pairs + 1


def test_parallel_tokenisation_equals_one_process(tiny_teacher, tiny_student, parallel_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_store, "MIN_ROWS_PER_PROC", 8)
    corpora = [{"lang": lang, "path": str(parallel_dir / f"{lang}.tsv")} for lang in ("zh", "fr", "ja")]
    one = make_data(tiny_teacher, tiny_student, corpora, tmp_path / "one", tokenize_num_proc=1)
    two = make_data(tiny_teacher, tiny_student, corpora, tmp_path / "two", tokenize_num_proc=2)
    one.setup(FAKE_ACCELERATOR)
    two.setup(FAKE_ACCELERATOR)
    assert len(two.store.meta["files"]["target_tokens"]) == 2
    rows = np.arange(one.store.num_pairs)
    for column in ("student_target",):
        a, b = getattr(one.store, column).gather(rows), getattr(two.store, column).gather(rows)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_overlong_sentences_are_capped_at_what_the_student_holds(tiny_teacher, tiny_student, tmp_path, caplog):
    giant = " ".join(["a very long sentence"] * 2500)  # 10,000+ characters
    (tmp_path / "long.tsv").write_text("en\tfr\n" + "".join(f"{giant} {i}\t{giant} {i}\n" for i in range(12)) +
                                       "".join(f"short {i}\tcourt {i}\n" for i in range(12)), encoding="utf-8")
    with caplog.at_level(logging.INFO):
        data = make_data(tiny_teacher, tiny_student, [{"lang": "fr", "path": str(tmp_path / "long.tsv")}], tmp_path,
                         student_max_length=512, teacher_max_length=512, val_size=0)
        data.setup(FAKE_ACCELERATOR)
    assert "tokenising to at most 64" in caplog.text
    widths = [b["student_input_ids"].shape[1] for b in data.train_batches(0)]
    assert max(widths) == 64


def test_unk_heavy_language_warns_once(tiny_teacher, tiny_student, tmp_path, caplog):
    from altclip_train.models.tiny import SAMPLE_SENTENCES, train_xlmr_tokenizer

    no_fallback = tmp_path / "no-fallback"
    train_xlmr_tokenizer(SAMPLE_SENTENCES, no_fallback, vocab_size=400, byte_fallback=False)
    hindi = ["यह एक छोटा वाक्य है", "बिल्ली सो रही है", "आज मौसम अच्छा है"]
    english = [s for s in SAMPLE_SENTENCES if "\t" not in s][:30]
    (tmp_path / "ja.tsv").write_text("en\tja\n" + "".join(f"{en}\t{hindi[i % 3]}\n" for i, en in enumerate(english)),
                                     encoding="utf-8")
    corpora = [{"lang": "ja", "path": str(tmp_path / "ja.tsv")}]
    with caplog.at_level(logging.WARNING):
        lossy = make_data(tiny_teacher, tiny_student, corpora, tmp_path, student_tokenizer=str(no_fallback))
        lossy.setup(FAKE_ACCELERATOR)
    assert lossy.store.meta["unk_rates"]["ja"] > 0.3
    assert caplog.text.count("language ja:") == 1 and "<unk>" in caplog.text and "language en:" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fallback = make_data(tiny_teacher, tiny_student, corpora, tmp_path)  # byte fallback: nothing is lost
        fallback.setup(FAKE_ACCELERATOR)
    assert fallback.store.meta["unk_rates"]["ja"] == 0 and "<unk>" not in caplog.text


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


def test_pad_to_multiple_of_changes_shapes_not_results(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    import torch
    from transformers import AutoModel

    corpora = [{"lang": "zh", "path": str(parallel_dir / "zh.tsv")}]
    plain = make_data(tiny_teacher, tiny_student, corpora, tmp_path, pad_to_multiple_of=1)
    eights = make_data(tiny_teacher, tiny_student, corpora, tmp_path, pad_to_multiple_of=8)
    plain.setup(FAKE_ACCELERATOR)
    eights.setup(FAKE_ACCELERATOR)
    model = AutoModel.from_pretrained(tiny_student).eval()
    for a, b in zip(plain.train_batches(0), eights.train_batches(0)):
        assert b["student_input_ids"].shape[1] % 8 == 0 and b["student_input_ids"].shape[1] >= a["student_input_ids"].shape[1]
        with torch.no_grad():
            out_a = model(input_ids=a["student_input_ids"], attention_mask=a["student_attention_mask"]).last_hidden_state[:, 0]
            out_b = model(input_ids=b["student_input_ids"], attention_mask=b["student_attention_mask"]).last_hidden_state[:, 0]
        torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_language_temperature_draws_shares_by_the_formula(alpha):
    sizes = {"zh": 6000, "fr": 1500, "ja": 300, "ko": 60}
    langs = ["zh", "zh", "fr", "ja", "ko"]
    group_sizes = [4000, 2000, 1500, 300, 60]  # zh comes from two corpora
    bounds = np.concatenate([[0], np.cumsum(group_sizes)])
    groups = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(group_sizes))]
    weights = language_weights(group_sizes, langs, [1.0] * 5, alpha)
    plan = BatchPlan(lengths=np.ones(bounds[-1], dtype=np.int32), groups=groups, weights=weights,
                     global_batch_size=64, seed=0)
    drawn = plan.epoch_rows(0)
    lang_of_row = np.repeat(langs, group_sizes)
    counts = Counter(lang_of_row[drawn].tolist())
    norm = sum(n ** alpha for n in sizes.values())
    for lang, n in sizes.items():
        expected = n ** alpha / norm
        assert abs(counts[lang] / len(drawn) - expected) < 0.01, (lang, counts[lang] / len(drawn), expected)
    assert abs(len(drawn) - bounds[-1]) <= len(group_sizes)  # the epoch keeps its length
    zh_rows = lang_of_row[drawn] == "zh"
    from_first = (drawn[zh_rows] < 4000).mean()
    assert abs(from_first - 2 / 3) < 0.02  # a language's corpora keep their proportions


# ---------------------------------------------------------------- teacher cache
@pytest.fixture()
def corpora(parallel_dir):
    return [{"lang": lang, "path": str(parallel_dir / f"{lang}.tsv")} for lang in ("zh", "fr")]


def test_cached_targets_equal_the_live_teacher_within_fp16(tiny_teacher, tiny_student, corpora, tmp_path):
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path)
    data.setup(FAKE_ACCELERATOR)
    live = load_teacher(str(tiny_teacher)).encode_texts(data.source_texts())
    cached = np.asarray(data.rows.teacher, dtype=np.float32)
    assert cached.shape == live.shape
    np.testing.assert_allclose(cached, live, rtol=2e-3, atol=2e-3)
    assert np.abs(live).max() > 0.1  # not trivially zero


def test_complete_cache_never_loads_the_teacher(tiny_teacher, tiny_student, corpora, tmp_path, monkeypatch):
    make_data(tiny_teacher, tiny_student, corpora, tmp_path).setup(FAKE_ACCELERATOR)

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was loaded although the cache is complete")

    monkeypatch.setattr("altclip_train.models.teachers.clip.ClipTeacher.load_text_encoder", refuse)
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path)
    data.setup(FAKE_ACCELERATOR)
    assert data.rows.teacher.shape[1] == 64


def test_cache_key_changes_with_teacher_text_and_max_length(tiny_teacher, tiny_student, corpora, tmp_path):
    make_data(tiny_teacher, tiny_student, corpora, tmp_path).setup(FAKE_ACCELERATOR)
    make_data(tiny_teacher, tiny_student, corpora, tmp_path, teacher_max_length=16).setup(FAKE_ACCELERATOR)
    (tmp_path / "other.tsv").write_text("en\tzh\n" + "".join(f"sentence {i}\t句子 {i}\n" for i in range(30)))
    other = [{"lang": "zh", "path": str(tmp_path / "other.tsv")}]
    make_data(tiny_teacher, tiny_student, other, tmp_path).setup(FAKE_ACCELERATOR)
    entries = [p for p in (tmp_path / "teacher_text").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 3


def test_a_flipped_chunk_is_reported_and_rebuilt_alone(tiny_teacher, tiny_student, corpora, tmp_path, caplog):
    make_data(tiny_teacher, tiny_student, corpora, tmp_path, cache_chunk_rows=8).setup(FAKE_ACCELERATOR)
    entry = next(p for p in (tmp_path / "teacher_text").iterdir() if not p.name.startswith("."))
    path = entry / "embeddings.f16"
    good = path.read_bytes()
    row_bytes = 64 * 2
    blob = bytearray(good)
    blob[9 * row_bytes + 3] ^= 0xFF  # a byte in chunk 1 (rows 8..15)
    path.write_bytes(bytes(blob))
    computed = []
    from altclip_train.models.teachers.clip import ClipTextTarget

    real = ClipTextTarget.targets

    def spy(self, ids, mask):
        computed.append(len(ids))
        return real(self, ids, mask)

    original = ClipTextTarget.targets
    ClipTextTarget.targets = spy
    try:
        with caplog.at_level(logging.WARNING):
            data = make_data(tiny_teacher, tiny_student, corpora, tmp_path, cache_chunk_rows=8)
            data.setup(FAKE_ACCELERATOR)
    finally:
        ClipTextTarget.targets = original
    assert "chunk(s) 1 do not match their checksums" in caplog.text
    assert sum(computed) == 8  # one chunk's rows, nothing else
    assert path.read_bytes() == good


def test_full_verify_catches_a_flip_that_kept_the_mtime(tiny_teacher, tiny_student, corpora, tmp_path, caplog):
    import os

    make_data(tiny_teacher, tiny_student, corpora, tmp_path, cache_chunk_rows=8).setup(FAKE_ACCELERATOR)
    entry = next(p for p in (tmp_path / "teacher_text").iterdir() if not p.name.startswith("."))
    path = entry / "embeddings.f16"
    stat = path.stat()
    good = path.read_bytes()
    blob = bytearray(good)
    blob[3] ^= 0xFF
    path.write_bytes(bytes(blob))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot: same size, same mtime
    quick = make_data(tiny_teacher, tiny_student, corpora, tmp_path, cache_chunk_rows=8)
    quick.setup(FAKE_ACCELERATOR)
    assert path.read_bytes() != good  # a stat check cannot see it, by design
    with caplog.at_level(logging.WARNING):
        make_data(tiny_teacher, tiny_student, corpora, tmp_path, cache_chunk_rows=8,
                  cache_verify="full").setup(FAKE_ACCELERATOR)
    assert "chunk(s) 0 do not match" in caplog.text and path.read_bytes() == good


def test_dataloader_workers_slice_the_memory_map_to_the_same_batches(tiny_teacher, tiny_student, corpora, tmp_path):
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path, num_workers=2)
    data.setup(FAKE_ACCELERATOR)
    in_workers = [(b["student_input_ids"].tolist(), b["teacher_embeds"].tolist()) for b in data.train_batches(1)]
    data.num_workers = 0
    in_process = [(b["student_input_ids"].tolist(), b["teacher_embeds"].tolist()) for b in data.train_batches(1)]
    assert in_workers == in_process and len(in_process) == data.num_train_batches(1)


def test_an_entry_keeps_its_chunking_when_a_later_run_asks_for_another(tiny_teacher, tiny_student, corpora, tmp_path,
                                                                      monkeypatch):
    make_data(tiny_teacher, tiny_student, corpora, tmp_path, cache_chunk_rows=8).setup(FAKE_ACCELERATOR)

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was loaded: the entry was rebuilt for a new chunk size")

    monkeypatch.setattr("altclip_train.models.teachers.clip.ClipTeacher.load_text_encoder", refuse)
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path, cache_chunk_rows=16)
    data.setup(FAKE_ACCELERATOR)
    assert data.teacher_cache_stats["chunks_built"] == 0
