"""The pretraining loop: learning-rate schedules, resume after SIGKILL with bitwise-equal losses,
DDP over 2 gloo processes equal to one process with the same global batch, checkpoint errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.llama import Llama
from model.train import TrainConfig, learning_rate
from tasks.token_shards import write_manifest, write_shard

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"preset": "tiny", "micro_batch": 4, "tokens_per_step": 1024, "warmup_steps": 2, "eval_every": 4,
            "eval_batches": 2, "checkpoint_every": 4, "lr": 3e-3, "sample_prompts": []}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A toy language: 40 random phrases of 3-8 ids in random order."""
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    phrases = [rng.integers(5, 256, size=rng.integers(3, 9)) for _ in range(40)]
    stream = lambda n: np.concatenate([phrases[i] for i in rng.integers(0, 40, size=n)])  # noqa: E731
    train, val = write_shard(out / "train-00000.bin", stream(6000), 256), write_shard(out / "val-00000.bin", stream(600), 256)
    return write_manifest(out, {"vocab_size": 256, "tokenizer_sha256": "x", "splits": {"train": [train], "val": [val]}})


def run(manifest: Path, out: Path, steps: int, env_extra: dict | None = None, nproc: int = 1, kill_at: int | None = None,
        **settings) -> list[dict]:
    """python -m model.train (or torchrun) as a user runs it; its metric lines. With `kill_at`,
    SIGKILL the run as soon as it reports that step."""
    config = json.dumps({**SETTINGS, "max_steps": steps, **settings})
    module = ["-m", "model.train", "--manifest", str(manifest), "--out", str(out), "--config-json", config]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                "--master_port", str(29500 + os.getpid() % 1000)] if nproc > 1 else []
    command = [sys.executable, *launcher, *module]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        if line.startswith("{"):
            lines.append(json.loads(line))
            if kill_at is not None and lines[-1].get("step") == kill_at and "train/loss" in lines[-1]:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    if kill_at is None:
        assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return [m for m in lines if "train/loss" in m]


def test_schedules_warm_up_then_decay():
    cosine = TrainConfig(manifest="m", out="o", lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert learning_rate(cosine, 0) == pytest.approx(0.1) and learning_rate(cosine, 9) == pytest.approx(1.0)
    assert learning_rate(cosine, 60) == pytest.approx(0.55) and learning_rate(cosine, 110) == pytest.approx(0.1)
    wsd = TrainConfig(manifest="m", out="o", lr=1.0, warmup_steps=10, max_steps=110, schedule="wsd", decay_fraction=0.2)
    assert learning_rate(wsd, 50) == 1.0 and learning_rate(wsd, 88) == 1.0
    assert learning_rate(wsd, 99) == pytest.approx(0.55) and learning_rate(wsd, 110) == pytest.approx(0.1)


def test_sigkill_then_resume_gives_the_same_losses_bitwise(manifest, tmp_path):
    straight = run(manifest, tmp_path / "straight", steps=8)
    assert straight[-1]["train/loss"] < straight[0]["train/loss"]
    killed = run(manifest, tmp_path / "resumed", steps=8, kill_at=6)
    assert killed[-1]["step"] == 6 and latest_checkpoint(tmp_path / "resumed").name == "step-000004"
    resumed = run(manifest, tmp_path / "resumed", steps=8)
    assert [m["step"] for m in resumed] == [5, 6, 7, 8]
    assert [m["train/loss"] for m in resumed] == [m["train/loss"] for m in straight[4:]]
    assert resumed[-1]["val/loss"] == straight[-1]["val/loss"]


def test_ddp_over_two_processes_matches_one_with_the_same_global_batch(manifest, tmp_path):
    one = run(manifest, tmp_path / "one", steps=4, micro_batch=4)
    two = run(manifest, tmp_path / "two", steps=4, nproc=2, micro_batch=2)
    assert [m["step"] for m in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4)


def test_checkpoint_of_another_config_or_damaged_is_refused(tmp_path):
    config = ModelConfig.from_preset("tiny", vocab_size=256)
    model = Llama(config)
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path / "step-000001", model, optimizer, {"step": 1, "config": config.to_dict()})
    other = ModelConfig.from_preset("tiny", vocab_size=256, n_layers=3)
    with pytest.raises(CheckpointError, match="another model config: n_layers"):
        load_checkpoint(path, Llama(other), expect_config=other.to_dict())
    fresh = Llama(config)
    load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters()), expect_config=config.to_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path, fresh)
    with pytest.raises(CheckpointError, match="no meta.json"):
        load_checkpoint(tmp_path, fresh)
