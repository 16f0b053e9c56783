"""Worker for tests/test_assets.py: one DDP rank asking for the tiny assets on a fresh cache.

Run under `accelerate launch` with argv[1] = the rank that asks first ("0", "1" or "any"); the other
waits until the first holds the build lock. Then every rank loads every asset the way a run does.
"""

from __future__ import annotations

import sys
import time

from accelerate import Accelerator

from altclip_train.assets import ASSET_VERSION, cache_root, tiny_asset


def main() -> None:
    first = sys.argv[1]
    accelerator = Accelerator(cpu=True)  # torch.distributed is up from here on, as in a real run
    rank = accelerator.process_index
    lock = cache_root() / f".{ASSET_VERSION}.lock"
    if first != "any" and str(rank) != first:
        while not lock.exists():
            time.sleep(0.05)
        time.sleep(1.0)  # the first rank opens the lock file just before it takes the lock
    paths = {name: tiny_asset(name) for name in ("teacher", "student", "data", "shards")}

    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    from altclip_train.models.student import build_student
    from altclip_train.models.teachers import load_teacher

    assert AutoConfig.from_pretrained(paths["teacher"]).model_type == "clip"
    CLIPModel.from_pretrained(paths["teacher"])
    AutoTokenizer.from_pretrained(paths["student"])
    build_student(paths["student"], load_teacher(paths["teacher"]).text_dim)
    accelerator.wait_for_everyone()
    print(f"rank ok ({rank})", flush=True)


if __name__ == "__main__":
    main()
