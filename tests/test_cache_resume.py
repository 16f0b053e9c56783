"""Killed cache builds resume where they stopped: kill -9 half way through a teacher-cache build and an
image-cache build, on one process and on 2 gloo processes; the rerun recomputes at most one chunk per rank
and the entry is byte-identical to an uninterrupted build."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from launching import PYTHON, REPO, accelerate_command, kill_tree, run, run_env, start, wait_until

BUILDER = str(REPO / "tests" / "cache_builder.py")
CHUNK_ROWS = 4


@pytest.fixture(scope="module")
def inputs(tiny_teacher, tiny_student, tmp_path_factory) -> dict:
    from launching import build_pair_shards

    root = tmp_path_factory.mktemp("resume_inputs")
    sentences = [f"sentence {a} {b}" for a in ("one", "two", "three", "four", "five", "six")
                 for b in ("red", "green", "blue", "small", "big", "old")]  # 36 distinct -> 9 chunks
    (root / "fr.tsv").write_text("en\tfr\n" + "".join(f"{s}\tphrase {s}\n" for s in sentences), encoding="utf-8")
    shards = build_pair_shards(root / "pairs")  # 16 images -> 4 chunks of 4
    return {"teacher": str(tiny_teacher), "student": str(tiny_student), "corpus": str(root / "fr.tsv"),
            "shards": str(shards / "shard-{00000..00003}.tar"), "chunk_rows": CHUNK_ROWS}


def builder_command(world: int, args: list[str]) -> list[str]:
    if world == 1:
        return [PYTHON, BUILDER, *args]
    cmd = accelerate_command(world, "unused", [])
    at = cmd.index("-m", cmd.index("--main_process_port"))
    return [*cmd[:at], BUILDER, *args]


def entry_dir(cache_dir: Path, kind: str) -> Path:
    root = cache_dir / ("teacher_text" if kind == "teacher" else "image_embeds")
    (entry,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    return entry


def markers(cache_dir: Path, kind: str) -> int:
    root = cache_dir / ("teacher_text" if kind == "teacher" else "image_embeds")
    return sum(len(list((p / "chunks").glob("*.json"))) for p in root.glob("*") if (p / "chunks").is_dir()) \
        if root.is_dir() else 0


@pytest.fixture(scope="module")
def references(inputs, tmp_path_factory) -> dict:
    """The uninterrupted builds, once per kind."""
    root = tmp_path_factory.mktemp("resume_reference")
    inputs_file = root / "inputs.json"
    inputs_file.write_text(json.dumps(inputs))
    built = {}
    for kind in ("teacher", "images"):
        run(builder_command(1, [kind, str(inputs_file), str(root / kind), str(root / f"{kind}.log")]),
            root / f"{kind}.out")
        built[kind] = (entry_dir(root / kind, kind) / "embeddings.f16").read_bytes()
    return built


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("kind", ["teacher", "images"])
def test_a_killed_build_resumes_and_ends_byte_identical(inputs, references, tmp_path, kind, world):
    inputs_file = tmp_path / "inputs.json"
    inputs_file.write_text(json.dumps(inputs))
    total = 9 if kind == "teacher" else 4

    cache, first_log, second_log = tmp_path / "cache", tmp_path / "first.log", tmp_path / "second.log"
    delay = "1.5" if kind == "teacher" else "3"
    proc = start(builder_command(world, [kind, str(inputs_file), str(cache), str(first_log), delay]),
                 tmp_path / "first.out", env=run_env())
    wait_until(lambda: markers(cache, kind) >= total // 2, proc, tmp_path / "first.out", what="half the chunks")
    kill_tree(proc)
    done_before = markers(cache, kind)
    assert 0 < done_before < total, "the kill must land half way"

    run(builder_command(world, [kind, str(inputs_file), str(cache), str(second_log)]), tmp_path / "second.out")
    first_lines = [line.split() for line in first_log.read_text().splitlines()]
    second_lines = [line.split() for line in second_log.read_text().splitlines()]
    if kind == "teacher":  # one process tokenised the corpus, once; the rerun read it back
        assert sum(words[1] == "store" for words in first_lines) == 1
        assert not any(words[1] == "store" for words in second_lines)
    started_first = {int(words[1]) for words in first_lines if words[1] != "store"}
    recomputed = Counter(int(words[0]) for words in second_lines if words[1] != "store"
                         and int(words[1]) in started_first)
    redone = [int(words[1]) for words in second_lines if words[1] != "store"]
    if world == 2 and total - done_before >= 2:  # both ranks took a share of the rebuild
        assert {int(words[0]) for words in second_lines} == {0, 1}
    assert len(redone) == total - done_before  # only the chunks without a marker
    assert all(count <= 1 for count in recomputed.values()) and sum(recomputed.values()) <= world
    assert (entry_dir(cache, kind) / "embeddings.f16").read_bytes() == references[kind]
