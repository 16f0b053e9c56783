"""Builds one embedding cache, slowly, so a test can kill it half way: run with python or `accelerate launch`.

    python tests/cache_builder.py teacher|images INPUTS_JSON CACHE_DIR LOG [DELAY_S]

INPUTS_JSON names the tiny teacher, student, corpus dir or shards. Every chunk this rank computes is
appended to LOG as `<rank> <first row>` before it is computed, and each chunk takes DELAY_S longer, so the
test knows which chunks were started when it killed the build; a corpus-store build is logged as
`<rank> store`. Writes `<CACHE_DIR>/done-<rank>` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(kind: str, inputs_file: str, cache_dir: str, log_path: str, delay: float = 0.0) -> None:
    from accelerate import Accelerator

    inputs = json.loads(Path(inputs_file).read_text())
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        from accelerate.utils import InitProcessGroupKwargs

        accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    else:
        accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index

    from altclip_train.data import embedding_cache

    real = embedding_cache.EmbeddingCache._write_chunk

    def slow_write_chunk(self, compute):
        def logged_compute(start, stop):
            with open(log_path, "a") as log:
                log.write(f"{rank} {start}\n")
            time.sleep(delay)
            return compute(start, stop)
        return real(self, logged_compute)

    embedding_cache.EmbeddingCache._write_chunk = slow_write_chunk
    from altclip_train.data import corpus_store

    real_build = corpus_store.build_store

    def counted_build(*args, **kwargs):
        with open(log_path, "a") as log:
            log.write(f"{rank} store\n")
        return real_build(*args, **kwargs)

    corpus_store.build_store = counted_build
    if kind == "teacher":
        from altclip_train.data.parallel import ParallelTextData

        data = ParallelTextData(corpora=[{"lang": "fr", "path": inputs["corpus"]}], languages=["en", "fr"],
                                batch_size=8, student=inputs["student"], teacher=inputs["teacher"],
                                cache_dir=cache_dir, val_size=0, num_workers=0, tokenize_num_proc=1,
                                cache_chunk_rows=inputs["chunk_rows"], teacher_batch_size=4)
        data.setup(accelerator)
    else:
        from altclip_train.data.image_cache import build_image_cache

        build_image_cache(inputs["shards"], inputs["teacher"], cache_dir=cache_dir, batch_size=2, num_workers=0,
                          accelerator=accelerator, chunk_rows=inputs["chunk_rows"])
    accelerator.wait_for_everyone()
    Path(cache_dir, f"done-{rank}").write_text("ok\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]) if len(sys.argv) > 5 else 0.0)
