"""The pretrain stage: train a model preset on the token shards. The Prefect task `train` runs
`model.train` as a subprocess (`torchrun` when `pretrain.nproc` > 1) and streams its metric lines
into Prefect's log and MLflow.

    crawl2model train [--preset small] [pretrain.max_steps=400 ...]
    crawl2model run --until pretrain
    from flows.pretrain import run_pretrain       # environment prepared first
    summary = run_pretrain(cfg)                   # the newest shards (shards/latest)

Checkpoints go to `checkpoints/<id>/step-NNNNNN/` (id: the manifest and the training config), so
re-running a finished training is a no-op and re-running a killed one resumes from its latest
complete checkpoint. MLflow run `pretrain`: params (model and train config, parameters, tokens
target), metrics by step (`train/loss`, `train/lr`, `train/grad_norm`, `train/tokens_per_s`,
`train/mfu` on a known GPU, `val/loss`, `val/ppl`), the unigram baseline the val loss should
beat (`pretrain/unigram_val_loss`), and artifacts: the loss curve PNG, samples per evaluation,
the final checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import get_run_context

from crawl2model.config import Config, stable_hash
from crawl2model.layout import DataRoot
from flows.progress import progress_bar
from flows.tracking import Tracking, flatten
from model.checkpoint import step_folder
from model.shards import ShardSet
from model.tokenizer import load_tokenizer
from warehouse.files import file_sha256

REPO = Path(__file__).resolve().parents[1]


@dataclass
class PretrainSummary:
    checkpoint: Path
    no_op: bool
    metrics: dict
    unigram_val_loss: float
    mlflow_run_id: str | None = None


def unigram_val_loss(shard_set: ShardSet, vocab_size: int) -> float:
    """Cross-entropy (nats) of the val tokens under the train split's token frequencies (add-one):
    what a model that ignores context scores; training must go clearly below it."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for tokens in shard_set.tokens("train"):
        counts += np.bincount(tokens, minlength=vocab_size)
    log_p = np.log(counts / counts.sum())
    val = [np.bincount(t, minlength=vocab_size) for t in shard_set.tokens("val")]
    val_counts = np.sum(val, axis=0) if val else np.zeros(vocab_size)
    return float(-(val_counts * log_p).sum() / max(1, val_counts.sum()))


def cached_unigram_val_loss(out: Path, shard_set: ShardSet) -> float:
    """unigram_val_loss, computed once per checkpoint folder (a no-op re-run does not re-read the shards)."""
    path = out / "unigram_val_loss.json"
    if path.exists():
        return json.loads(path.read_text())["unigram_val_loss"]
    value = unigram_val_loss(shard_set, shard_set.manifest["vocab_size"])
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"unigram_val_loss": value}))
    return value


def _train_settings(cfg: Config, manifest: Path, out: Path) -> dict:
    """The `pretrain` section whole, and where to read and write (model.settings.TrainConfig)."""
    return {**cfg.pretrain.trainer_values(), "manifest": str(manifest), "out": str(out)}


def _command(settings: dict, nproc: int) -> list[str]:
    train = ["-m", "model.train", "--manifest", settings["manifest"], "--out", settings["out"],
             "--config-json", json.dumps({k: v for k, v in settings.items() if k not in ("manifest", "out")})]
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *train]
    return [sys.executable, *train]


def loss_curve(history: list[dict], baseline: float):
    """Train and val loss per step against the unigram baseline (a matplotlib figure)."""
    import matplotlib  # deferred: ~1 s, and only where a figure is drawn (headless: Agg first)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(m["step"], m["train/loss"]) for m in history if "train/loss" in m]
    val = [(m["step"], m["val/loss"]) for m in history if "val/loss" in m]
    ax.plot(*zip(*train), label="train loss", lw=1) if train else None
    ax.plot(*zip(*val), "o-", label="val loss") if val else None
    ax.axhline(baseline, color="grey", ls="--", label=f"unigram baseline {baseline:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend()
    fig.tight_layout()
    return fig


@task(name="train", cache_policy=NONE)
def train_task(settings: dict, nproc: int, max_steps: int, tracking: Tracking, run_id: str, baseline: float,
               tokenizer) -> tuple[list[dict], list[str]]:
    """Run model.train (torchrun when nproc > 1) and stream its JSON metric lines to MLflow and the
    Prefect log; returns the metric history and the decoded samples. stderr goes to a file, not a pipe,
    so a chatty trainer cannot fill the pipe and stall while we read stdout. Progress: a bar on a
    terminal, else a plain line every ~30 s (flows.progress)."""
    logger = get_run_logger()
    # unbuffered: each metric line reaches us (and the log) as the step ends, under torchrun too
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    history: list[dict] = []
    samples: list[str] = []
    shown = 0  # steps the progress shows (a resumed run starts past 0)
    with tempfile.TemporaryFile("w+") as stderr, progress_bar("pretrain", total=max_steps, unit="steps") as advance:
        proc = subprocess.Popen(_command(settings, nproc), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=stderr, text=True, bufsize=1)
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            metrics = json.loads(line)
            if metrics.get("event") == "start":
                tracking.log_params(run_id, {"params": metrics["params"], "params_non_embedding":
                                             metrics["params_non_embedding"], "tokens_per_step": metrics["tokens_per_step"],
                                             "tokens_target": metrics["tokens_per_step"] * max_steps,
                                             "model": metrics["config"], "device": metrics["device"]})
                logger.info("pretrain: %s parameters on %s, %d tokens per step", f"{metrics['params']:,}",
                            metrics["device"], metrics["tokens_per_step"])
                continue
            if "step" not in metrics or "train/loss" not in metrics:
                logger.info("pretrain: %s", metrics)
                continue
            history.append(metrics)
            step = metrics["step"]
            advance(step - shown)
            shown = step
            tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"},
                                 step=step)
            if "samples" in metrics:
                samples.append(f"step {step}: " + " | ".join(repr(tokenizer.decode(ids)) for ids in metrics["samples"]))
            if "val/loss" in metrics or step % 50 == 0:
                logger.info("pretrain step %d: loss %.3f%s, %.0f tokens/s", step, metrics["train/loss"],
                            f", val {metrics['val/loss']:.3f} (unigram {baseline:.3f})" if "val/loss" in metrics else "",
                            metrics["train/tokens_per_s"])
        proc.wait()
        if proc.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"training failed (exit {proc.returncode}): {stderr.read()[-2000:]}")
    return history, samples


@flow(name="pretrain", log_prints=False)
def pretrain_flow(cfg: Config, manifest: Path | None = None, parent_run_id: str | None = None) -> PretrainSummary:
    logger = get_run_logger()
    root = cfg.data_root
    manifest = Path(manifest) if manifest else DataRoot(root).latest("shards") / "manifest.json"
    shard_set = ShardSet.open(manifest)
    tokenizer_path = Path(shard_set.manifest["tokenizer"])
    tokenizer = load_tokenizer(tokenizer_path.parent)
    out = DataRoot(root).checkpoint_run("pretrain", stable_hash([file_sha256(manifest), cfg.pretrain.fingerprint()]))
    baseline = cached_unigram_val_loss(out, shard_set)
    final = step_folder(out, cfg.pretrain.max_steps)
    if (final / "meta.json").exists():
        meta = json.loads((final / "meta.json").read_text())
        logger.info("pretrain: nothing new, %s is done", final)
        return PretrainSummary(final, True, meta.get("metrics", {}), baseline)

    settings = _train_settings(cfg, manifest, out)
    tracking = Tracking(root, cfg.experiment)
    with tracking.run("pretrain", parent_run_id, tags={
            "prefect.flow_run_id": str(get_run_context().flow_run.id), "stage": "pretrain",
            "snapshot": shard_set.manifest.get("snapshot", ""), "tokenizer_sha256": shard_set.manifest["tokenizer_sha256"]}
            ) as run_id:
        tracking.log_params(run_id, {**flatten(cfg.pretrain.model_dump(mode="json"), "pretrain."),
                                     "manifest": str(manifest), "checkpoints": str(out)})
        tracking.log_metrics(run_id, {"pretrain/unigram_val_loss": baseline})
        started = time.perf_counter()
        history, samples = train_task(settings, cfg.pretrain.nproc, cfg.pretrain.max_steps, tracking, run_id, baseline,
                                      tokenizer)
        seconds = time.perf_counter() - started
        last = history[-1] if history else {}
        tracking.log_metrics(run_id, {"pretrain/seconds": seconds, "pretrain/val_loss_vs_unigram":
                                      last.get("val/loss", math.nan) - baseline})
        tracking.log_figure(run_id, loss_curve(history, baseline), "pretrain/loss_curve.png")
        tracking.log_text(run_id, "\n".join(samples) + "\n", "pretrain/samples.txt")
        tracking.log_files(run_id, [final / "model.safetensors", final / "meta.json"], "checkpoint")
    return PretrainSummary(final, False, history[-1] if history else {}, baseline, run_id)


def run_pretrain(cfg: Config, manifest: Path | None = None, parent_run_id: str | None = None) -> PretrainSummary:
    return pretrain_flow(cfg, manifest, parent_run_id)
