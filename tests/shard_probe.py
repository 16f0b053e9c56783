"""Which samples each rank trains on: run under `accelerate launch` (or imported, for one process).

    accelerate launch --multi_gpu --num_processes 2 tests/shard_probe.py OUT_DIR EPOCHS \
        distill OVERRIDES... -- contrastive OVERRIDES... -- ...

For each job (a command and its overrides, jobs separated by `--`) it builds the phase's data module
from the same Hydra config and the same Accelerator a training run uses, walks `EPOCHS` epochs of
this rank's batches and writes `OUT_DIR/job-<j>-rank-<i>.json`:
{"rank": i, "world_size": n, "epochs": [[ids of batch 0, ids of batch 1, ...], ...]}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra.utils import instantiate


def sample_ids(batch: dict) -> list[str]:
    """One id per training sample of a batch.

    A parallel pair is (language, English source row). An image-text pair is its caption's token ids
    (the caller maps captions back to images: one caption per image per epoch)."""
    if "source_index" in batch:
        half = len(batch["source_index"]) // 2  # English rows first, then their translations
        return [f"{lang}:{int(index)}" for lang, index in zip(batch["lang"][half:], batch["source_index"][:half])]
    if "input_ids" in batch:
        return [" ".join(map(str, ids[mask.bool()].tolist()))
                for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    raise KeyError(f"no sample id in a batch with keys {sorted(batch)}")


def collect(command: str, overrides: list[str], epochs: int, accelerator=None) -> dict:
    from altclip_train.cli import compose_config
    from altclip_train.train import build_accelerator

    cfg = compose_config(command, overrides)
    accelerator = accelerator or build_accelerator(cfg)
    data = instantiate(cfg.data, _convert_="all")
    data.setup(accelerator)
    seen = [[sample_ids(batch) for batch in data.train_batches(epoch, 0)] for epoch in range(epochs)]
    return {"rank": accelerator.process_index, "world_size": accelerator.num_processes, "epochs": seen}


def split_jobs(args: list[str]) -> list[list[str]]:
    jobs, current = [], []
    for arg in args:
        if arg == "--":
            jobs.append(current)
            current = []
        else:
            current.append(arg)
    return [job for job in [*jobs, current] if job]


def main(argv: list[str]) -> None:
    from altclip_train.cli import compose_config
    from altclip_train.train import build_accelerator

    out_dir, epochs, *rest = argv
    jobs = split_jobs(rest)
    accelerator = build_accelerator(compose_config(jobs[0][0], jobs[0][1:]))  # one process group for all jobs
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for number, (command, *overrides) in enumerate(jobs):
        result = collect(command, overrides, int(epochs), accelerator)
        (Path(out_dir) / f"job-{number}-rank-{result['rank']}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
