"""Training batches from token shards (model.shards): random windows drawn from a seed and
a step number, so a resumed run draws exactly the batches an uninterrupted one would have.

    from model.data import ShardBatches
    data = ShardBatches("c2m-data/shards/latest-dir/manifest.json", "train", seq_len=256, batch_size=8, seed=0)
    x, y = data.batch(step)                 # int64 (batch, seq_len) inputs and next-token targets
    for x, y in data.eval_batches(max_batches=20): ...   # fixed, non-overlapping val windows

Under DistributedDataParallel each step draws world_size x batch_size windows and rank r takes
its own slice, so ranks read disjoint windows and the global batch does not depend on how many
processes share it. A window never crosses a shard file; documents inside it are separated by
end-of-text ids as the shards hold them. Needs numpy and torch only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.shards import ShardSet


class ShardBatches:
    def __init__(self, manifest: str | Path, split: str, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, tokenizer_path: str | Path | None = None):
        self.shards = ShardSet.open(Path(manifest), tokenizer_path).tokens(split)
        usable = np.array([max(0, len(t) - seq_len) for t in self.shards], dtype=np.int64)  # window starts
        if not usable.sum():
            raise ValueError(f"the {split} shards of {manifest} hold no window of {seq_len + 1} tokens; "
                             f"use a shorter sequence or a larger corpus")
        self.starts = np.cumsum(usable)
        self.split, self.seq_len, self.batch_size, self.seed = split, seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size

    @property
    def tokens(self) -> int:
        return int(sum(len(t) for t in self.shards))

    def _window(self, flat: int) -> torch.Tensor:
        shard = int(np.searchsorted(self.starts, flat, side="right"))
        offset = flat - (int(self.starts[shard - 1]) if shard else 0)
        return torch.from_numpy(np.asarray(self.shards[shard][offset:offset + self.seq_len + 1], dtype=np.int64))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, targets) of global step `step`: the same for the same seed and step."""
        rng = np.random.Generator(np.random.PCG64([self.seed, step]))
        picks = rng.integers(0, int(self.starts[-1]), size=self.batch_size * self.world_size)
        mine = picks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        windows = torch.stack([self._window(int(p)) for p in mine])
        return windows[:, :-1], windows[:, 1:]

    def eval_batches(self, max_batches: int | None = None):
        """Consecutive non-overlapping windows from the start of the split (the same every time)."""
        batch, done = [], 0
        for tokens in self.shards:
            for start in range(0, len(tokens) - self.seq_len, self.seq_len):
                batch.append(torch.from_numpy(np.asarray(tokens[start:start + self.seq_len + 1], dtype=np.int64)))
                if len(batch) == self.batch_size:
                    windows = torch.stack(batch)
                    yield windows[:, :-1], windows[:, 1:]
                    batch, done = [], done + 1
                    if max_batches is not None and done >= max_batches:
                        return
        if batch:
            windows = torch.stack(batch)
            yield windows[:, :-1], windows[:, 1:]
