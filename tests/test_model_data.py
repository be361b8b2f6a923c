"""model.data.ShardBatches: deterministic, resumable, disjoint per rank, windows inside a shard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.data import ShardBatches
from tasks.token_shards import write_manifest, write_shard


@pytest.fixture
def manifest(tmp_path):
    # three shards of distinct, increasing ids so a window tells where it came from
    entries, first = [], 0
    for i, size in enumerate((500, 300, 700)):
        entries.append(write_shard(tmp_path / f"train-{i:05d}.bin", np.arange(first, first + size) % 60_000, 60_000))
        first += size
    val = write_shard(tmp_path / "val-00000.bin", np.arange(100), 60_000)
    return write_manifest(tmp_path, {"vocab_size": 60_000, "tokenizer_sha256": "x",
                                     "splits": {"train": entries, "val": [val]}})


def test_batches_are_windows_with_shifted_targets_inside_one_shard(manifest):
    data = ShardBatches(manifest, "train", seq_len=32, batch_size=16, seed=3)
    for step in range(20):
        x, y = data.batch(step)
        assert x.shape == y.shape == (16, 32) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert bool(((y[:, -1] - x[:, 0]) == 32).all())  # consecutive ids: no window crosses a shard


def test_same_seed_and_step_same_batch_other_seed_other_batch(manifest):
    a = ShardBatches(manifest, "train", 32, 8, seed=1)
    b = ShardBatches(manifest, "train", 32, 8, seed=1)
    assert all(torch.equal(a.batch(s)[0], b.batch(s)[0]) for s in (0, 5, 99))
    assert not torch.equal(a.batch(0)[0], ShardBatches(manifest, "train", 32, 8, seed=2).batch(0)[0])
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])


def test_ranks_split_the_global_batch(manifest):
    whole = ShardBatches(manifest, "train", 32, 8, seed=4).batch(7)[0]
    halves = [ShardBatches(manifest, "train", 32, 4, seed=4, rank=r, world_size=2).batch(7)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)


def test_eval_batches_are_fixed_and_cover_the_split(manifest):
    data = ShardBatches(manifest, "val", 10, 4)
    batches = list(data.eval_batches())
    assert sum(len(x) for x, _ in batches) == 9 and torch.equal(batches[0][0][0], torch.arange(10))
    assert len(list(data.eval_batches(max_batches=1))) == 1


def test_too_short_a_split_is_a_clear_error(manifest):
    with pytest.raises(ValueError, match="no window of 201 tokens"):
        ShardBatches(manifest, "val", 200, 4)
