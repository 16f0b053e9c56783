"""Deterministic, length-bucketed, rank-split batch plans for map-style data.

An epoch's plan is a function of (seed, epoch) alone: weighted sampling per group (language),
shuffling, bucketing by length so each batch pads only to its own longest row, then shuffling the
batch order. Each *global* batch is split into one contiguous slice per rank, so N processes with
local batch B/N see exactly the samples one process sees with batch B, and resuming at global batch
k of an epoch is just skipping the first k entries of the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class BatchPlan:
    lengths: np.ndarray            # token length per row, for bucketing
    groups: list[np.ndarray]       # row indices of each group (one per corpus / language)
    weights: list[float]           # rows of a group drawn per epoch = weight * group size
    global_batch_size: int
    seed: int = 0
    shuffle: bool = True
    bucket_by_length: bool = True
    bucket_span: int = 64          # batches sorted together in one bucket window
    drop_last: bool = True
    replay_groups: list[np.ndarray] = field(default_factory=list)  # old-language rows mixed into every batch
    replay_weights: list[float] = field(default_factory=list)
    replay_fraction: float = 0.0   # share of each global batch drawn from the replay groups
    _latest: tuple = field(default=(None, None), init=False, repr=False, compare=False)

    @property
    def replay_per_batch(self) -> int:
        """Rows of each global batch that come from the replay groups (0 without replay)."""
        if not self.replay_groups or not self.replay_fraction:
            return 0
        return min(self.global_batch_size - 1, max(1, round(self.replay_fraction * self.global_batch_size)))

    def epoch_rows(self, epoch: int, replay: bool = False) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 2] if replay else [self.seed, epoch])
        rows = []
        groups, weights = (self.replay_groups, self.replay_weights) if replay else (self.groups, self.weights)
        for group, weight in zip(groups, weights):
            whole, fraction = divmod(weight * len(group), len(group)) if len(group) else (0, 0)
            rows.extend([group] * int(whole))
            if fraction:
                rows.append(rng.choice(group, size=int(round(fraction)), replace=False))
        rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return rng.permutation(rows) if self.shuffle else rows

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        # The loop asks for an epoch's length and then for its batches: plan it once (it costs a
        # permutation of the whole corpus, the one step of a restart that grows with it).
        if self._latest[0] == epoch:
            return list(self._latest[1])
        batches = self._plan(epoch)
        self._latest = (epoch, batches)
        return list(batches)

    def _bucketed(self, rows: np.ndarray, size: int) -> np.ndarray:
        if not self.bucket_by_length:
            return rows
        window = size * self.bucket_span
        sorted_windows = [rows[start:start + window][np.argsort(-self.lengths[rows[start:start + window]],
                                                                kind="stable")]
                          for start in range(0, len(rows), window)]
        return np.concatenate(sorted_windows) if sorted_windows else rows

    def _plan(self, epoch: int) -> list[np.ndarray]:
        replayed = self.replay_per_batch
        size = self.global_batch_size - replayed
        rows = self._bucketed(self.epoch_rows(epoch), size)
        batches = [rows[start:start + size] for start in range(0, len(rows), size)]
        if batches and self.drop_last and len(batches[-1]) < size:
            batches.pop()
        if replayed and batches:
            # The old languages' rows, cycled when they are fewer than the epoch needs, go `replayed` to a batch;
            # both streams are length-sorted in the same windows, so paired slices have similar lengths.
            old = self.epoch_rows(epoch, replay=True)
            if not len(old):
                raise ValueError("data.replay: the replay corpora have no rows to draw")
            old = self._bucketed(np.resize(old, replayed * len(batches)), replayed)
            batches = [np.concatenate([batch, old[i * replayed:(i + 1) * replayed]]) for i, batch in enumerate(batches)]
        if self.shuffle and self.bucket_by_length:
            order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
            batches = [batches[i] for i in order]
        return batches

    def num_batches(self, epoch: int = 0) -> int:
        return len(self.global_batches(epoch))


def rank_slice(global_batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (sizes differ by at most one row)."""
    bounds = np.linspace(0, len(global_batch), world_size + 1).astype(int)
    return global_batch[bounds[rank]:bounds[rank + 1]]


def padded_rank_slice(global_batch: np.ndarray, rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-size shares for evaluation: short shares repeat a row and flag it as padding."""
    share = -(-len(global_batch) // world_size)
    rows = global_batch[rank * share:(rank + 1) * share]
    valid = np.ones(share, dtype=bool)
    valid[len(rows):] = False
    if len(rows) < share:
        filler = global_batch[-1:] if len(global_batch) else np.zeros(1, dtype=np.int64)
        rows = np.concatenate([rows, np.repeat(filler, share - len(rows))])
    return rows, valid


def language_weights(sizes: list[int], langs: list[str], weights: list[float],
                     alpha: float | None) -> list[float]:
    """Per-group draw multipliers: the corpus `weights`, then languages rebalanced by temperature sampling.

    With exponent `alpha`, language l's share of an epoch becomes p(l) = n_l^alpha / sum_k n_k^alpha, where
    n_l counts the rows its groups contribute after their corpus weights (XLM-R, mBART and MetaCLIP 2
    balance languages this way; alpha = 1 keeps the natural shares, 0 makes them uniform). The epoch keeps
    its length, and the groups of one language keep their proportions to each other.
    """
    from altclip_train.data.loading import tempered_language_shares

    if alpha is None or float(alpha) == 1.0:
        return list(weights)
    effective = [weight * size for weight, size in zip(weights, sizes)]
    per_lang: dict[str, float] = {}
    for rows, lang in zip(effective, langs):
        per_lang[lang] = per_lang.get(lang, 0.0) + rows
    present = {lang: rows for lang, rows in per_lang.items() if rows > 0}
    shares = tempered_language_shares(present, alpha)
    total = sum(present.values())
    scale = {lang: total * shares[lang] / rows for lang, rows in present.items()}
    return [weight * scale.get(lang, 1.0) for weight, lang in zip(weights, langs)]
