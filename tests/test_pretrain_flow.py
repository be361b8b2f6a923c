"""The pretrain and export stages as a user runs them: the pipeline up to `export` (tiny preset, a
few steps) as real Prefect flow runs, the metrics by step and artifacts in MLflow, re-runs that are
no-ops, generation from the checkpoint with the tokenizer it was trained with, and the exported
variants measured and logged (run `quantize`)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client

from crawl2model.config import load_config
from flows.export import run_export
from flows.pipeline import run_pipeline
from flows.pretrain import run_pretrain
from model import llamacpp
from model.sampling import generate_text, newest_checkpoint
from tests.test_dedup_flow import neardup_docs, write_pages  # at import time: it imports tests.conftest

pytestmark = pytest.mark.slow


def test_pipeline_trains_tracks_and_generates(tmp_path, data_root, prefect_server):
    docs = [d for d in neardup_docs() if "-v" not in d["id"]]
    pages = write_pages(tmp_path / "pages", {f"nd-{d['id']}": d["text"] for d in docs})
    cfg = load_config(overrides=["curate.workers=2", "tokenizer.vocab_size=1024", "tokenizer.val_fraction=0.1",
                                 "pretrain.preset=tiny", "pretrain.max_steps=12", "pretrain.eval_every=6",
                                 "pretrain.checkpoint_every=6", "pretrain.tokens_per_step=2048",
                                 "pretrain.micro_batch=8", "pretrain.warmup_steps=2",
                                 "export.gguf_quants=[f16,q8_0]", "export.torch_quants=[int8]",
                                 "export.eval_windows=4", "export.gen_tokens=8"], data_root=data_root)
    started = datetime.now(timezone.utc)
    result = run_pipeline([str(pages)], cfg, until="export", show_progress=False)
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
        task_runs = [r for r in prefect.read_task_runs() if r.start_time and r.start_time >= started]  # this run's
    for key in ("train_task-", "build_task-", "measure_task-"):
        assert [r.state_type.value for r in task_runs if r.task_key.startswith(key)] == ["COMPLETED"], key

    assert run_pretrain(cfg).no_op
    assert newest_checkpoint(data_root) == summary.checkpoint
    text = generate_text(summary.checkpoint, "The ", max_new_tokens=8, temperature=0.0)
    assert isinstance(text, str) and text == generate_text(summary.checkpoint, "The ", max_new_tokens=8, temperature=0.0)

    export = result.export
    assert not export.no_op and export.checkpoint == summary.checkpoint
    variants = {v["name"]: v for v in export.variants}
    assert list(variants) == ["torch-fp32", "hf", "torch-int8", "gguf-f16", "gguf-q8_0"]
    assert variants["gguf-q8_0"]["size_bytes"] < variants["gguf-f16"]["size_bytes"] < variants["torch-fp32"]["size_bytes"]
    if llamacpp.available():  # the same windows scored by crawl2model (fp32) and llama.cpp (f16): nearly the same loss
        assert abs(variants["gguf-f16"]["val_loss"] - variants["torch-fp32"]["val_loss"]) < 0.01
        assert abs(client.get_run(export.mlflow_run_id).data.metrics["quant/gguf-q8_0/delta_ppl_pct"]) < 1.0
    else:  # written, not scored, and the table says so
        assert variants["gguf-f16"]["engine"] == "" and variants["gguf-f16"]["val_loss"] is None
    assert variants["torch-int8"]["val_loss"] == pytest.approx(variants["torch-fp32"]["val_loss"], abs=0.01)
    assert (export.out / "gguf" / "model-q8_0.Modelfile").read_text().startswith("FROM ./model-q8_0.gguf")
    quantize = client.get_run(export.mlflow_run_id)
    assert quantize.info.run_name == "quantize" and quantize.data.tags["mlflow.parentRunId"] == result.mlflow_run_id
    assert quantize.data.metrics["quant/torch-int8/val_loss"] == pytest.approx(variants["torch-int8"]["val_loss"])
    assert quantize.data.metrics["quant/gguf-q8_0/size_mb"] == pytest.approx(variants["gguf-q8_0"]["size_bytes"] / 1e6)
    logged = {a.path for folder in ("quantize", "gguf") for a in client.list_artifacts(export.mlflow_run_id, folder)}
    assert {"quantize/table.md", "gguf/model-q8_0.gguf", "gguf/model-q8_0.Modelfile"} <= logged
    assert run_export(cfg).no_op
