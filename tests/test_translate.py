"""`altclip-train translate` on a tiny random M2M100 built from a config with a locally trained tokenizer.

Its translations are nonsense; what is tested is the pipeline: deduplication, pairs that stay aligned and equal
what `model.generate` gives for each source alone, skips that are counted and listed (never written),
resumable chunks that give byte-identical output after a crash or a kill -9, two ranks equal to one, one-line
errors, and output that loads as a phase-1 corpus.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from altclip_train.models.tiny import SAMPLE_CAPTIONS, SAMPLE_SENTENCES

# Settings every run here shares; the solo reference below uses the same.
BEAMS, MAX_NEW, MAX_SOURCE = 2, 16, 40
RUN_ARGS = ["--to", "hi", "--num-beams", str(BEAMS), "--max-new-tokens", str(MAX_NEW), "--batch-size", "4",
            "--chunk-size", "10", "--max-source-tokens", str(MAX_SOURCE)]


def build_tiny_m2m(out_dir: Path, seed: int = 0, eos_boost: float = 30.0) -> Path:
    """A random M2M100 (1+1 layers, d=32) with a 300-piece SentencePiece vocabulary and the 100 M2M100 language
    tokens. A wide init (std 1) makes outputs depend on the source; scaling the end-of-sequence embedding row
    makes some outputs end at once (empty), some end later (kept) and some never (over-long), for `hi`."""
    import sentencepiece
    from transformers import (
        M2M100Config,
        M2M100ForConditionalGeneration,
        M2M100Tokenizer,
    )

    from altclip_train.models.tiny import save_model_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    spm = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SAMPLE_SENTENCES), model_writer=spm, model_type="unigram", vocab_size=300,
        hard_vocab_limit=False, character_coverage=1.0, bos_id=0, pad_id=1, eos_id=2, unk_id=3, num_threads=1,
        minloglevel=2)
    (out_dir / "sentencepiece.bpe.model").write_bytes(spm.getvalue())
    pieces = sentencepiece.SentencePieceProcessor(model_proto=spm.getvalue())
    (out_dir / "vocab.json").write_text(json.dumps({pieces.id_to_piece(i): i for i in range(pieces.get_piece_size())}))
    tokenizer = M2M100Tokenizer(str(out_dir / "vocab.json"), str(out_dir / "sentencepiece.bpe.model"),
                                src_lang="en", model_max_length=64)
    tokenizer.save_pretrained(str(out_dir))
    vocab_size = tokenizer.vocab_size + len(tokenizer.lang_code_to_id) + tokenizer.num_madeup_words
    config = M2M100Config(vocab_size=vocab_size, d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=64, init_std=1.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          decoder_start_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = M2M100ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.shared.weight[config.eos_token_id] *= eos_boost
    save_model_dir(model, out_dir)
    return out_dir


def build_tiny_marian(out_dir: Path, seed: int = 0, eos_boost: float = 30.0) -> Path:
    """A random one-pair Marian model (no language tokens) whose config forces an end-of-sequence token at the
    length limit, as published Marian configs do."""
    import sentencepiece
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    from altclip_train.models.tiny import save_model_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    spm = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SAMPLE_SENTENCES), model_writer=spm, model_type="unigram", vocab_size=300,
        hard_vocab_limit=False, character_coverage=1.0, bos_id=-1, pad_id=-1, eos_id=1, unk_id=2, num_threads=1,
        minloglevel=2)
    for name in ("source.spm", "target.spm"):
        (out_dir / name).write_bytes(spm.getvalue())
    pieces = sentencepiece.SentencePieceProcessor(model_proto=spm.getvalue())
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in map(pieces.id_to_piece, range(pieces.get_piece_size())):
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    MarianTokenizer(str(out_dir / "source.spm"), str(out_dir / "target.spm"), str(out_dir / "vocab.json"),
                    model_max_length=64).save_pretrained(str(out_dir))
    config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=64, init_std=1.0, pad_token_id=vocab["<pad>"], eos_token_id=0,
                          decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MarianMTModel(config).eval()
    with torch.no_grad():
        model.model.shared.weight[config.eos_token_id] *= eos_boost
    save_model_dir(model, out_dir)
    return out_dir


@pytest.fixture(scope="module")
def one_thread():
    # A 32-wide model is fastest on one thread, and two test workers must not fight over two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_m2m(tmp_path_factory) -> Path:
    return build_tiny_m2m(tmp_path_factory.mktemp("m2m") / "model")


def english_lines() -> list[str]:
    """48 distinct captions, then blanks, exact duplicates and a duplicate that differs only in outer spaces."""
    lines = [f"{caption} {k}" if k else caption for k in range(6) for caption in SAMPLE_CAPTIONS["en"]]
    return lines + ["", "   ", lines[0], f"  {lines[1]}  ", lines[5]]


@pytest.fixture(scope="module")
def english(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("english") / "captions.txt"
    path.write_text("\n".join(english_lines()) + "\n", encoding="utf-8")
    return path


def translate_cli(*args) -> int:
    from altclip_train.data.translate import main

    return main([str(a) for a in args])


class Solo:
    """The reference: `model.generate` on one source at a time, classified as the command documents."""

    def __init__(self, model_dir: Path, lang: str | None = "hi"):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
        # An output cut at the limit must stay recognisable: no ending stamped onto it.
        self.model.generation_config.forced_eos_token_id = None
        self.forced = self.tokenizer.get_lang_id(lang) if lang else None
        languages = getattr(self.tokenizer, "lang_code_to_id", {})
        self.drop = set(self.tokenizer.all_special_ids) | set(languages.values())

    def __call__(self, english: str) -> tuple[str, str]:
        encoded = self.tokenizer(english, return_tensors="pt")
        if encoded["input_ids"].shape[1] > MAX_SOURCE:
            return "source_too_long", ""
        row = self.model.generate(**encoded, forced_bos_token_id=self.forced, num_beams=BEAMS, do_sample=False,
                                  max_new_tokens=MAX_NEW)[0].tolist()
        text = self.tokenizer.decode([t for t in row[1:] if t not in self.drop], skip_special_tokens=True).strip()
        if self.model.generation_config.eos_token_id not in row[1:]:
            return "max_new_tokens", text
        return ("ok" if text else "empty_output"), text


def read_skipped(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def reference_run(tiny_m2m, english, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("translated") / "out"
    assert translate_cli(english, out, "--model", tiny_m2m, *RUN_ARGS) == 0
    return out


def output_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / "hi" / name).read_bytes() for name in ("corpus.en", "corpus.hi", "skipped.tsv")}


# ---------------------------------------------------------------- what is written
def test_pairs_are_deduplicated_aligned_and_equal_generate_on_each_source_alone(reference_run, tiny_m2m, english):
    sources = (reference_run / "hi" / "corpus.en").read_text(encoding="utf-8").splitlines()
    targets = (reference_run / "hi" / "corpus.hi").read_text(encoding="utf-8").splitlines()
    skipped = read_skipped(reference_run / "hi" / "skipped.tsv")
    unique = list(dict.fromkeys(line.strip() for line in english_lines() if line.strip()))
    assert len(unique) == 48
    # Every unique sentence exactly once: written or listed as skipped; written ones in input order.
    assert sorted(sources + [row["english"] for row in skipped]) == sorted(unique)
    assert sources == [s for s in unique if s in set(sources)]
    assert len(sources) == len(targets)

    solo = Solo(tiny_m2m)
    for en, target in zip(sources, targets):
        assert solo(en) == ("ok", target), en
    for row in skipped:
        assert solo(row["english"])[0] == row["reason"], row
    reasons = Counter(row["reason"] for row in skipped)
    # The tiny model gives every kind of outcome, so each branch above was exercised.
    assert len(sources) > 5 and all(reasons[r] for r in ("empty_output", "max_new_tokens", "source_too_long"))

    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["english"] == {"rows_read": 53, "empty_source": 2, "duplicates": 3, "unique": 48}
    entry = manifest["languages"]["hi"]
    assert entry["pairs"] == len(sources) and entry["skipped"] == {
        "empty_output": reasons["empty_output"], "max_new_tokens": reasons["max_new_tokens"],
        "source_too_long": reasons["source_too_long"]}
    assert entry["code"] == "hi" and entry["model"]["model_type"] == "m2m_100"
    assert entry["generation"]["num_beams"] == BEAMS and entry["generation"]["max_new_tokens"] == MAX_NEW
    assert entry["generation"]["generate"]["forced_bos_token_id"] == solo.forced


def test_output_loads_as_a_phase1_corpus_from_the_printed_entry(reference_run, tiny_m2m, english, capsys):
    import yaml

    from altclip_train.data.corpora import CorpusSpec, iter_pairs

    # A rerun of a finished job translates nothing and prints the same summary.
    assert translate_cli(english, reference_run, "--model", tiny_m2m, *RUN_ARGS) == 0
    printed = capsys.readouterr().out
    block = printed[printed.index("data:"):]
    entry = yaml.safe_load(block)["data"]["corpora"][0]
    assert entry["lang"] == "hi" and "48 unique English sentences" in printed and "skipped: empty_output=" in printed
    spec = CorpusSpec.from_config(entry, 0)
    skipped: Counter = Counter()
    pairs = [pair for batch in iter_pairs(spec, ["en", "hi"], skipped)
             for pair in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())]
    sources = (reference_run / "hi" / "corpus.en").read_text(encoding="utf-8").splitlines()
    targets = (reference_run / "hi" / "corpus.hi").read_text(encoding="utf-8").splitlines()
    assert pairs == list(zip(sources, targets)) and not skipped


# ---------------------------------------------------------------- resume
def test_a_crash_mid_run_loses_one_chunk_and_the_rerun_is_byte_identical(reference_run, tiny_m2m, english, tmp_path,
                                                                        monkeypatch):
    from altclip_train.data import translate

    out = tmp_path / "out"
    real_write = translate.LanguageEntry.write_chunk
    calls = []

    def crash_on_third(self, chunk):
        calls.append(chunk)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill in the middle of a chunk")
        return real_write(self, chunk)

    monkeypatch.setattr(translate.LanguageEntry, "write_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        translate_cli(english, out, "--model", tiny_m2m, *RUN_ARGS)
    monkeypatch.setattr(translate.LanguageEntry, "write_chunk", real_write)
    markers = sorted((out / ".work" / "hi" / "chunks").glob("*.json"))
    assert len(markers) == 2 and not (out / "hi" / "corpus.hi").exists()

    manifest = translate.translate(
        translate.EnglishInput(path=str(english)), out, str(tiny_m2m), [translate.Target("hi", "hi")],
        translate.Generation(num_beams=BEAMS, max_new_tokens=MAX_NEW, batch_size=4, chunk_size=10,
                             max_source_tokens=MAX_SOURCE))
    assert manifest["build"]["hi"]["chunks_reused"] == 2 and manifest["build"]["hi"]["chunks_built"] == 3
    assert output_bytes(out) == output_bytes(reference_run)

    # A chunk file damaged after the fact is found by its checksum and rebuilt alone.
    part = out / ".work" / "hi" / "part-000001.arrow"
    part.write_bytes(part.read_bytes()[:-7])
    manifest = translate.translate(
        translate.EnglishInput(path=str(english)), out, str(tiny_m2m), [translate.Target("hi", "hi")],
        translate.Generation(num_beams=BEAMS, max_new_tokens=MAX_NEW, batch_size=4, chunk_size=10,
                             max_source_tokens=MAX_SOURCE))
    assert manifest["build"]["hi"]["chunks_built"] == 1
    assert output_bytes(out) == output_bytes(reference_run)


def test_changed_settings_rebuild_instead_of_mixing_old_chunks(reference_run, tiny_m2m, english, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    greedy = [a if a != str(BEAMS) else "1" for a in RUN_ARGS]
    assert greedy != RUN_ARGS
    assert translate_cli(english, out, "--model", tiny_m2m, *greedy) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["languages"]["hi"]["generation"]["num_beams"] == 1
    layout = json.loads((out / ".work" / "hi" / "layout.json").read_text())
    assert layout["settings"]["num_beams"] == 1


def test_a_marian_pair_needs_no_language_code_and_its_truncations_are_still_caught(english, tmp_path, one_thread):
    model = build_tiny_marian(tmp_path / "marian")
    out = tmp_path / "out"
    args = [a for a in RUN_ARGS if a not in ("--to", "hi")]
    assert translate_cli(english, out, "--model", model, "--lang", "xx", *args) == 0
    solo = Solo(model, lang=None)
    sources = (out / "xx" / "corpus.en").read_text(encoding="utf-8").splitlines()
    targets = (out / "xx" / "corpus.xx").read_text(encoding="utf-8").splitlines()
    for en, target in zip(sources, targets):
        assert solo(en) == ("ok", target), en
    skipped = read_skipped(out / "xx" / "skipped.tsv")
    for row in skipped:
        assert solo(row["english"])[0] == row["reason"], row
    # The config's forced end-of-sequence would have passed truncated outputs off as finished.
    assert sources and Counter(row["reason"] for row in skipped)["max_new_tokens"] > 0
    assert json.loads((out / "manifest.json").read_text())["languages"]["xx"]["code"] is None


# ---------------------------------------------------------------- inputs
def test_a_table_column_gives_the_same_pairs_as_a_text_file(reference_run, tiny_m2m, tmp_path):
    rows = ["id\tcaption"] + [f"{i}\t{line}" for i, line in enumerate(english_lines())]
    (tmp_path / "captions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert translate_cli(tmp_path / "captions.tsv", out, "--model", tiny_m2m, "--column", "caption", *RUN_ARGS) == 0
    assert output_bytes(out) == output_bytes(reference_run)


def test_no_usable_output_writes_nothing_and_says_so(tiny_m2m, english, tmp_path, one_thread):
    out = tmp_path / "out"
    # For `sw` this model ends every output at once: all empty.
    with pytest.raises(ValueError, match="no usable translation into sw"):
        translate_cli(english, out, "--model", tiny_m2m, *[a if a != "hi" else "sw" for a in RUN_ARGS])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["languages"]["sw"]["pairs"] == 0
    assert manifest["languages"]["sw"]["skipped"]["empty_output"] > 0
    assert not (out / "sw" / "corpus.sw").exists() and not (out / "sw" / "corpus.en").exists()


@pytest.mark.parametrize("case", ["missing", "column", "utf8", "code", "marian_style", "no_target"])
def test_bad_input_is_one_line(case, tiny_m2m, english, tmp_path, capsys):
    from altclip_train import cli

    args = [str(english), str(tmp_path / "out"), "--model", str(tiny_m2m), "--to", "hi"]
    expected = {
        "missing": "translate input not found: ",
        "column": "unknown column 'english' (columns: id, caption); name the English one with --column",
        "utf8": "line 2 is not valid UTF-8",
        "code": "--to xx_Fake: not a language code of ",
        "marian_style": "is a many-language model: name the target languages with --to",
        "no_target": "name the target languages with --to",
    }[case]
    if case == "missing":
        args[0] = str(tmp_path / "nope.txt")
    elif case == "column":
        (tmp_path / "c.tsv").write_text("id\tcaption\n1\tA dog.\n", encoding="utf-8")
        args[0:1] = [str(tmp_path / "c.tsv"), "--column", "english"]
    elif case == "utf8":
        (tmp_path / "bad.txt").write_bytes("A dog.\nA caf\xe9.\n".encode("latin-1"))
        args[0] = str(tmp_path / "bad.txt")
    elif case == "code":
        args[-1] = "xx_Fake"
    elif case == "marian_style":
        args[-2:] = ["--lang", "hi"]
    else:
        args = args[:-2]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["translate", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("altclip-train: error: ") and expected in err, err
    assert not (tmp_path / "out" / "hi").exists()


# ---------------------------------------------------------------- processes
def _two_rank_args(english: Path, out: Path, model: Path) -> list[str]:
    return [str(english), str(out), "--model", str(model), *RUN_ARGS]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.heavy  # a 2-rank launch; the chunked resume tests guard the same cache-entry path in CI
def test_two_ranks_write_what_one_rank_writes(reference_run, tiny_m2m, english, tmp_path):
    from launching import accelerate_command, run

    out = tmp_path / "out"
    log = tmp_path / "two.log"
    run(accelerate_command(2, "translate", _two_rank_args(english, out, tiny_m2m)), log)
    assert output_bytes(out) == output_bytes(reference_run)
    shares = [line for line in log.read_text().splitlines() if "chunks on this rank" in line]
    built = sorted(int(line.split("translated ")[1].split(" of")[0]) for line in shares)
    assert len(built) == 2 and all(built) and sum(built) == 5, shares  # disjoint shares of the 5 chunks


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_is_byte_identical(reference_run, tiny_m2m, english, tmp_path):
    from launching import cli_command, kill_tree, run, start, wait_until

    from altclip_train.data import translate

    out = tmp_path / "out"
    chunks = out / ".work" / "hi" / "chunks"
    proc = start(cli_command("translate", _two_rank_args(english, out, tiny_m2m)), tmp_path / "first.log")
    wait_until(lambda: chunks.is_dir() and len(list(chunks.glob("*.json"))) >= 2, proc, tmp_path / "first.log",
               what="two finished chunks")
    kill_tree(proc)
    done = len(list(chunks.glob("*.json")))
    assert done < 5 and not (out / "hi" / "corpus.hi").exists(), "the run finished before the kill"
    log = tmp_path / "second.log"
    run(cli_command("translate", _two_rank_args(english, out, tiny_m2m)), log)
    assert f"{5 - done} of 5 chunks to build ({done} already done)" in log.read_text()
    assert output_bytes(out) == output_bytes(reference_run)
    assert translate.FORMAT in (out / "manifest.json").read_text()
