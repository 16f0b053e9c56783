"""Phase-1 validation checked against values worked out by hand, not against the code itself.

- `translation_accuracy` on a small 2-d example with repeated English sources, where the right answer,
  and the answers of the usual wrong implementations, can be read off a sketch;
- the held-out pairs of `ParallelTextData` never reach the training batches, by store row and by English
  sentence (the teacher target and the English-English row belong to the sentence, not to the pair);
- validation metrics of a run on two gloo processes equal those of one process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from altclip_train.data.parallel import ParallelTextData
from altclip_train.tasks.distill import translation_accuracy
from conftest import FakeAccelerator, distill_overrides

LANGS = ["en", "zh", "fr", "ja"]


# ---------------------------------------------------------------- translation accuracy, by hand
# Teacher targets of four English sources (ids 0, 1, 2 and 5, so ids are not positions), as points
# on a plane:  s0 = (0, 0), s1 = (10, 0), s2 = (0, 10), s5 = (10, 10).
TARGETS = {0: (0.0, 0.0), 1: (10.0, 0.0), 2: (0.0, 10.0), 5: (10.0, 10.0)}
# One row per (student vector, its own source). Sources 0 and 2 appear twice, as the same English
# sentence does when it has several translations.
ROWS = [
    ((1.0, 9.0), 2),  # nearest s2: right
    ((2.0, 2.0), 0),  # nearest s0 (2.8 away; s1 is 8.2): right. Same direction as s5, so cosine says s5
    ((6.0, 6.0), 5),  # s5 is 5.7 away, s1 and s2 7.2: right
    ((9.0, 1.0), 0),  # nearest s1: wrong
    ((9.0, 0.0), 1),  # nearest s1: right
    ((1.0, 8.0), 2),  # nearest s2: right, though the first row with target s2 is row 0, not this one
]


def hand_example():
    student = torch.tensor([vector for vector, _ in ROWS])
    sources = torch.tensor([source for _, source in ROWS])
    teacher = torch.tensor([TARGETS[source] for _, source in ROWS])
    return student, teacher, sources


def test_translation_accuracy_hand_example_with_repeated_sources():
    student, teacher, sources = hand_example()
    # 5 of 6 rows find their own source. Wrong ways of counting give other numbers:
    #   a row's own *row* as the answer (rows 0 and 5 share s2; the nearest copy is row 0): 4/6;
    #   averaging per source instead of per row: (1 + 1/2 + 1 + 1) / 4 = 0.875;
    #   cosine similarity instead of distance: row 1 goes to s5, 4/6 (a dot product does worse still).
    assert translation_accuracy(student, teacher, sources) == pytest.approx(5 / 6)


def test_translation_accuracy_candidates_are_all_sources_whatever_the_row_order():
    student, teacher, sources = hand_example()
    order = torch.tensor([3, 5, 0, 4, 2, 1])
    assert translation_accuracy(student[order], teacher[order], sources[order]) == pytest.approx(5 / 6)
    # Every student vector exactly on its own target: 1.0; every one on s1's target: only row 4 is right.
    assert translation_accuracy(teacher, teacher, sources) == 1.0
    on_s1 = torch.tensor([TARGETS[1]] * len(ROWS))
    assert translation_accuracy(on_s1, teacher, sources) == pytest.approx(1 / 6)


# ---------------------------------------------------------------- the target, from transformers alone
def test_teacher_targets_are_clips_pooled_end_of_text_state_before_projection(tiny_teacher, tiny_student, parallel_dir,
                                                                             tmp_path):
    """DESIGN: the target is CLIPTextModel(...).pooler_output (end-of-text token, final LayerNorm, before
    text_projection), computed here with plain transformers and compared with the batches' cached targets."""
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    corpora = [{"lang": "zh", "path": str(parallel_dir / "zh.tsv")}]
    data = make_data(tiny_teacher, tiny_student, corpora, tmp_path, val_size=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    text_model = CLIPTextModel.from_pretrained(tiny_teacher).eval()
    projected = CLIPTextModelWithProjection.from_pretrained(tiny_teacher).eval()
    batch = next(iter(data.train_batches(0)))
    pairs = len(batch["lang"]) // 2
    tokens = tokenizer(data.source_texts(batch["source_index"][:pairs].numpy()), padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = text_model(**tokens).pooler_output
        after_projection = projected(**tokens).text_embeds
    cached = batch["teacher_embeds"].float()
    torch.testing.assert_close(cached[:pairs], reference, rtol=2e-3, atol=2e-3)
    assert torch.equal(cached[pairs:], cached[:pairs])  # the translation rows share their English target
    assert (cached[:pairs] - after_projection).abs().max() > 0.1  # the test tells the two targets apart


# ---------------------------------------------------------------- no leak from validation into training
def make_data(teacher, student, corpora, cache_dir, **options) -> ParallelTextData:
    settings = dict(languages=LANGS, batch_size=8, student=str(student), teacher=str(teacher),
                    cache_dir=str(cache_dir), val_size=8, eval_batch_size=4, num_workers=0, tokenize_num_proc=1)
    settings.update(options)
    data = ParallelTextData(corpora=corpora, **settings)
    data.setup(FakeAccelerator())
    return data


def batch_pairs(batch) -> list[tuple[int, str]]:
    """(English source row, translation language) of each real pair in a batch (padding rows left out)."""
    pairs = len(batch["lang"]) // 2
    sources = batch["source_index"][:pairs].tolist()
    return [(source, lang) for source, lang in zip(sources, batch["lang"][pairs:]) if source >= 0]


def split_of(data: ParallelTextData, epochs: int = 3) -> tuple[list[list], set]:
    """The pairs of each training epoch (in order, repeats kept) and the set of validation pairs."""
    train = [[pair for batch in data.train_batches(epoch) for pair in batch_pairs(batch)] for epoch in range(epochs)]
    val = {pair for batch in data.val_batches() for pair in batch_pairs(batch)}
    return train, val


def store_pair_rows(data: ParallelTextData) -> dict[tuple[int, str], int]:
    """Store pair row of each (English source, language); in these corpora each names one pair."""
    store = data.store
    langs = [store.groups[group]["lang"] for group in np.asarray(store.pair_group).tolist()]
    keys = list(zip(np.asarray(store.pair_source).tolist(), langs))
    assert len(set(keys)) == len(keys), "the test corpora must not repeat an English sentence within a language"
    return {key: row for row, key in enumerate(keys)}


@pytest.fixture()
def three_corpora(parallel_dir):
    # zh, fr and ja corpora translate the same English sentences, as OPUS's en-xx corpora largely do.
    return [{"lang": lang, "path": str(parallel_dir / f"{lang}.tsv")} for lang in ("zh", "fr", "ja")]


def test_validation_pairs_are_never_training_pairs(tiny_teacher, tiny_student, three_corpora, tmp_path):
    data = make_data(tiny_teacher, tiny_student, three_corpora, tmp_path)
    rows = store_pair_rows(data)
    epochs, val = split_of(data)
    val_rows = {rows[pair] for pair in val}
    # 32 pairs per corpus: 10% (3) of each held out. A held-out English sentence leaves training in every
    # corpus, so the rows that train are those whose sentence no corpus holds out; an epoch is their full
    # batches of 8.
    assert len(val_rows) == 9
    held_sources = {source for source, _ in val}
    trainable = [row for (source, _), row in rows.items() if source not in held_sources]
    assert 96 - 27 <= len(trainable) <= 96 - 9
    for epoch in epochs:
        epoch_rows = [rows[pair] for pair in epoch]
        assert len(epoch_rows) == len(set(epoch_rows)) == len(trainable) // 8 * 8
        assert not set(epoch_rows) & val_rows, sorted(set(epoch_rows) & val_rows)
    seen = {row for epoch in epochs for row in (rows[pair] for pair in epoch)}
    assert seen | val_rows <= set(range(data.store.num_pairs)) and len(seen) > len(trainable) // 8 * 8  # epochs drop different rows


def test_validation_english_sentences_are_never_trained_on(tiny_teacher, tiny_student, three_corpora, tmp_path):
    data = make_data(tiny_teacher, tiny_student, three_corpora, tmp_path)
    epochs, val = split_of(data)
    train_sources = {data.source_texts([source])[0] for epoch in epochs for source, _ in epoch}
    val_sources = {data.source_texts([source])[0] for source, _ in val}
    assert val_sources and not train_sources & val_sources, sorted(train_sources & val_sources)


# ---------------------------------------------------------------- two processes, same validation metrics
@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_validation_equals_one_process(tiny_teacher, tiny_student, parallel_dir, tmp_path):
    """9 held-out pairs in chunks of 4, 4 and 1: two ranks get 2+2, 2+2 and 1+1 rows, the last one padding,
    which the metrics must leave out. Dropout is off so that the trained steps match too."""
    from altclip_train.cli import compose_config
    from altclip_train.train import train
    from launching import accelerate_command, run, without_dropout

    student = without_dropout(tiny_student, tmp_path / "xlmr")
    extra = ("data.eval_batch_size=4", "trainer.max_steps=2", "trainer.eval_every=1", "trainer.save_every=0",
             "trainer.log_every=1", "trainer.resume=null")
    one, two = tmp_path / "one", tmp_path / "two"
    train(compose_config("distill", distill_overrides(tiny_teacher, student, parallel_dir, one, *extra)))
    run(accelerate_command(2, "distill", distill_overrides(tiny_teacher, student, parallel_dir, two, *extra)),
        tmp_path / "two.log")

    def validation(run_dir) -> dict[int, dict[str, float]]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {row["step"]: {k: v for k, v in row.items() if k.startswith("val/")} for row in rows
                if "val/mse" in row}

    single, double = validation(one), validation(two)
    assert sorted(single) == sorted(double) == [0, 1, 2]
    for step in single:
        assert set(single[step]) == set(double[step]) and len(single[step]) == 9, step  # 4 languages x 2 + val/mse
        for name, value in single[step].items():
            if "translation_acc" in name:
                assert double[step][name] == value, (step, name)
            else:
                assert double[step][name] == pytest.approx(value, rel=1e-5), (step, name)
