"""What both phases' data modules share to turn rows into batches: per-batch padding, DataLoaders with
private random generators, and the longest tokenisation a model can hold.

| helper              | gives                                                                   |
|---------------------|-------------------------------------------------------------------------|
| `pad_batch`         | `(input_ids, attention_mask)` padded to this batch's longest row        |
| `make_loader`       | a DataLoader whose workers draw from their own seeded generator         |
| `capped_max_length` | `min(configured, tokenizer limit, position embeddings)`, logged once    |
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

_announced_caps: set[tuple] = set()


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, width: int | None = None,
              multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence of this batch only (or to a fixed `width`).

    `multiple_of` rounds the width up (8 keeps tensor-core shapes on GPU); padded positions are masked,
    so the model's outputs are unchanged.
    """
    width = width or max((len(seq) for seq in sequences), default=1)
    if multiple_of > 1:
        width = -(-width // multiple_of) * multiple_of
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = min(len(seq), width)
        ids[i, :n] = torch.as_tensor(np.asarray(seq[:n], dtype=np.int64))
        mask[i, :n] = 1
    return ids, mask


def pad_flat(values: np.ndarray, offsets: np.ndarray, pad_id: int, multiple_of: int = 1,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`pad_batch` for rows stored flat (Arrow list layout: row i is values[offsets[i]:offsets[i+1]]).

    Vectorised: no Python loop over rows, which matters when a DataLoader worker slices a memory map.
    """
    lengths = np.diff(offsets)
    width = width or max(int(lengths.max(initial=1)), 1)
    if multiple_of > 1:
        width = -(-width // multiple_of) * multiple_of
    lengths = np.minimum(lengths, width)
    ids = np.full((len(lengths), width), pad_id, dtype=np.int64)
    mask = np.arange(width)[None, :] < lengths[:, None]
    rows, cols = np.nonzero(mask)
    ids[rows, cols] = values[offsets[:-1][rows] + cols]
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def resolve_pad_multiple(setting: Any, device) -> int:
    """`auto`: 8 on CUDA (tensor cores want multiples of 8), 1 elsewhere."""
    if setting in (None, "auto"):
        return 8 if torch.device(device).type == "cuda" else 1
    value = int(setting)
    if value < 1:
        raise ValueError(f"data.pad_to_multiple_of must be a positive integer or auto, got {setting}")
    return value


def make_loader(dataset, seed: int, sampler: Sequence | None = None, batch_size: int | None = None,
                num_workers: int = 0, collate_fn=None, pin_memory: bool = False, **kwargs) -> DataLoader:
    """A DataLoader that never draws from the global torch RNG.

    DataLoader seeds its workers from its `generator`, or from the global RNG when there is none. Drawing
    from the global RNG would shift the dropout masks of everything after it, so a resumed run (which
    builds a different number of loaders before step k) would not match an uninterrupted one.
    """
    return DataLoader(dataset, sampler=sampler, batch_size=batch_size, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(int(seed)), **kwargs)


def capped_max_length(configured: int, tokenizer, model_config=None, what: str = "text") -> int:
    """The longest tokenisation the model can hold: min(configured, tokenizer.model_max_length,
    max_position_embeddings - offset). RoBERTa-style towers (XLM-R, AltCLIP's text model) number positions
    from padding_idx + 1, so they lose padding_idx + 1 positions; CLIP's text tower loses none."""
    limits = [int(configured)]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    config = getattr(model_config, "text_config", None) or model_config
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = 0
        if getattr(config, "model_type", "") in {"xlm-roberta", "roberta", "altclip_text_model", "camembert"}:
            offset = int(getattr(config, "pad_token_id", 1) or 0) + 1
        limits.append(int(positions) - offset)
    cap = min(limits)
    if cap < configured:
        key = (what, configured, cap)
        if key not in _announced_caps:
            _announced_caps.add(key)
            log.info("%s: max length %d is more than the model holds; tokenising to at most %d", what,
                     configured, cap)
    return cap


def tempered_language_shares(counts: dict[str, int], alpha: float | None) -> dict[str, float]:
    """Temperature sampling over languages (XLM-R, mBART, MetaCLIP 2): p(lang) = n_lang^alpha / sum n^alpha.

    alpha = 1 (or None) keeps the data's own proportions, alpha = 0 makes every language equally likely, and
    values in between lift the small languages. Languages with no data get share 0.
    """
    alpha = 1.0 if alpha is None else float(alpha)
    if alpha < 0:
        raise ValueError(f"data.language_temperature must be >= 0, got {alpha}")
    powered = {lang: float(n) ** alpha if n > 0 else 0.0 for lang, n in counts.items()}
    total = sum(powered.values())
    if total <= 0:
        raise ValueError(f"no data in any language to balance: {dict(counts)}")
    return {lang: value / total for lang, value in powered.items()}

