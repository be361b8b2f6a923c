"""The pretrain stage as a user runs it: the pipeline up to `pretrain` (tiny preset, a few
steps) as real Prefect flow runs, the metrics by step and artifacts in MLflow, a re-run that is a
no-op, and generation from the checkpoint with the tokenizer it was trained with."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client

from crawl2model.config import load_config
from flows.pipeline import run_pipeline
from flows.pretrain import run_pretrain
from model.sampling import generate_text, newest_checkpoint
from tests.test_dedup_flow import neardup_docs, write_pages  # at import time: it imports tests.conftest

pytestmark = pytest.mark.slow


def test_pipeline_trains_tracks_and_generates(tmp_path, data_root, prefect_server):
    docs = [d for d in neardup_docs() if "-v" not in d["id"]]
    pages = write_pages(tmp_path / "pages", {f"nd-{d['id']}": d["text"] for d in docs})
    cfg = load_config(overrides=["curate.workers=2", "tokenizer.vocab_size=1024", "tokenizer.val_fraction=0.1",
                                 "pretrain.preset=tiny", "pretrain.max_steps=12", "pretrain.eval_every=6",
                                 "pretrain.checkpoint_every=6", "pretrain.tokens_per_step=2048",
                                 "pretrain.micro_batch=8", "pretrain.warmup_steps=2"], data_root=data_root)
    result = run_pipeline([str(pages)], cfg, until="pretrain", show_progress=False)
    summary = result.pretrain
    assert not summary.no_op and summary.checkpoint.name == "step-000012"
    assert summary.metrics["step"] == 12 and summary.metrics["val/loss"] < 7.0  # ln(1024) = 6.93 at the start
    assert 3.0 < summary.unigram_val_loss < 7.0

    client = MlflowClient(f"sqlite:///{data_root / 'mlflow.db'}")
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == result.mlflow_run_id and run.info.run_name == "pretrain"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(1, 13)) and losses[-1].value < losses[0].value
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/ppl")] == [6, 12]
    assert int(run.data.params["params"]) > 0 and "pretrain/unigram_val_loss" in run.data.metrics
    artifacts = {a.path for folder in ("pretrain", "checkpoint") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"pretrain/loss_curve.png", "pretrain/samples.txt", "checkpoint/model.safetensors"} <= artifacts

    with get_client(sync_client=True) as prefect:  # training ran as the Prefect task `train`
        task_runs = prefect.read_task_runs()
    assert [r.state_type.value for r in task_runs if r.task_key.startswith("train_task-")] == ["COMPLETED"]

    assert run_pretrain(cfg).no_op
    assert newest_checkpoint(data_root) == summary.checkpoint
    text = generate_text(summary.checkpoint, "The ", max_new_tokens=8, temperature=0.0)
    assert isinstance(text, str) and text == generate_text(summary.checkpoint, "The ", max_new_tokens=8, temperature=0.0)
