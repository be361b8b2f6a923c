"""The pretrain, sft, dpo and export stages as a user runs them: the pipeline up to `export` (tiny
preset, a few steps) as real Prefect flow runs, the metrics by step and artifacts in MLflow,
re-runs that are no-ops, generation from the checkpoint with the tokenizer it was trained with,
tuning data made from disjoint train documents, and the tuned model's exported variants measured
and logged (run `quantize`)."""

from __future__ import annotations

import ast
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client

from crawl2model.config import load_config
from flows.assistant_data import knowledge_facts
from flows.export import run_export
from flows.pipeline import run_pipeline
from flows.posttrain import SELF_PLAY_SHARE, run_dpo, run_sft
from flows.pretrain import run_pretrain
from flows.rl import run_rl
from model import llamacpp
from model.knowledge import REFUSAL, _reply_text
from crawl2model.layout import DataRoot
from model.sampling import generate_text
from tasks.token_shards import is_val
from tests.conftest import query
from tests.test_dedup_flow import neardup_docs, write_pages  # at import time: it imports tests.conftest

pytestmark = pytest.mark.slow


def test_pipeline_trains_tracks_and_generates(tmp_path, data_root, prefect_server):
    docs = [d for d in neardup_docs() if "-v" not in d["id"]]
    pages = write_pages(tmp_path / "pages", {f"nd-{d['id']}": d["text"] for d in docs})
    cfg = load_config(overrides=["curate.workers=2", "tokenizer.vocab_size=1024", "tokenizer.val_fraction=0.25",
                                 "pretrain.preset=tiny", "pretrain.max_steps=12", "pretrain.eval_every=6",
                                 "pretrain.checkpoint_every=6", "pretrain.tokens_per_step=2048",
                                 "pretrain.micro_batch=8", "pretrain.warmup_steps=2",
                                 "sft.max_steps=4", "sft.eval_every=2", "sft.micro_batch=4", "sft.eval_batches=2",
                                 "sft.max_examples=48", "sft.sample_prompts=[Hello]", "dpo.sample_prompts=[Hello]", "dpo.max_steps=3",
                                 "dpo.micro_batch=2", "dpo.eval_batches=2", "dpo.pair_samples=2",
                                 "sft.text_rows=24",
                                 "export.gguf_quants=[f16,q8_0]", "export.torch_quants=[int8]",
                                 "export.eval_windows=4", "export.gen_tokens=8", "eval.val_windows=4",
                                 "audit.canaries=3", "audit.regurgitation_prompts=4",
                                 "rl.warmup_rows=16", "knowledge.facts=16", "knowledge.second_pass_steps=2",
                                 "knowledge.probe_samples=2", "assistant.identity_rows=8", "rl.max_steps=2",
                                 "rl.prompts_per_step=2", "rl.group_size=2", "rl.max_new_tokens=16",
                                 "rl.heldout_problems=4", "rl.eval_every=2", "rl.min_lr_ratio=0.1", "eval.problems=4",
                                 "eval.identity_questions=4"], data_root=data_root)
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
    tuning = sorted(r.name.rsplit("-", 1)[0] for r in task_runs if r.task_key.split("-")[0] in (
        "_train", "corpus_sft_data", "knowledge_pair_data", "assistant_data", "refusal_data", "grpo")
        and r.state_type.value == "COMPLETED")
    # tuning ran as Prefect tasks too; sft and its assistant rows twice (again for the "I don't know" pass)
    assert tuning == ["assistant-data", "assistant-data", "dpo", "grpo", "idk-probe", "knowledge-pairs", "sft", "sft",
                      "sft-data"]

    assert run_pretrain(cfg).no_op
    assert DataRoot(data_root).newest_checkpoint() == result.rl.checkpoint  # the last one written
    text = generate_text(summary.checkpoint, "The ", max_new_tokens=8, temperature=0.0)
    assert isinstance(text, str) and text == generate_text(summary.checkpoint, "The ", max_new_tokens=8, temperature=0.0)

    check_tuning(cfg, result, client, data_root)
    check_rl(cfg, result, client)
    check_eval(result, client)
    export = result.export
    assert not export.no_op and export.checkpoint == result.rl.checkpoint  # the tuned model is exported
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


def check_tuning(cfg, result, client, data_root):
    """sft and dpo after pretrain: corpus-made data from disjoint train documents, metrics by step
    in nested runs, counts that reconcile, samples before/after, no-op re-runs."""
    sft, dpo = result.sft, result.dpo
    assert sft.base == result.pretrain.checkpoint and dpo.base == sft.checkpoint
    # SFT's result is its "I don't know" pass, tuned from its first pass's last step
    assert sft.checkpoint.parent.name == "idk" and sft.checkpoint.name == "step-000002"
    assert json.loads((sft.checkpoint / "meta.json").read_text())["base"].endswith("step-000004")
    assert dpo.checkpoint.name == "step-000003"
    for s in (sft, dpo):
        c = s.counts
        assert c["rows"] == c["examples"] + c["quarantined"] and c["examples"] == c["train"] + c["held_out"] > 1
        run = client.get_run(s.mlflow_run_id)
        assert run.info.run_name == s.stage and run.data.tags["mlflow.parentRunId"] == result.mlflow_run_id
        assert run.data.metrics[f"{s.stage}/data/examples"] == c["examples"] and "val/ppl" in run.data.metrics
        assert [a.path for a in client.list_artifacts(s.mlflow_run_id, s.stage)] == \
            [f"{s.stage}/quarantine.jsonl", f"{s.stage}/samples.md"]
        assert [x["prompt"] for x in s.samples] == ["Hello"] and s.before["val/loss"] > 0
    losses = client.get_metric_history(sft.mlflow_run_id, "sft/loss")
    assert [m.step for m in losses] == [1, 2, 3, 4, 5, 6]  # the second pass continues the curve
    assert [m.step for m in client.get_metric_history(sft.mlflow_run_id, "sft/eval_loss")][:3] == [0, 2, 4]
    sft_metrics = client.get_run(sft.mlflow_run_id).data.metrics
    assert sft_metrics["sft/probe/probed"] == sft_metrics["sft/probe/known"] + sft_metrics["sft/probe/refusals"] > 0
    for when in ("before", "after"):
        assert 0 <= sft_metrics[f"sft/knowledge/{when}/untaught_made_up_rate"] <= 1
    accuracies = client.get_metric_history(dpo.mlflow_run_id, "eval/rewards/accuracies")
    assert [m.step for m in accuracies] == [0, 3] and accuracies[0].value == 0.0  # policy == reference: all ties
    assert client.get_metric_history(dpo.mlflow_run_id, "train/loss")[0].value == pytest.approx(0.6931, abs=1e-3)

    # corpus-made data: SFT responses and DPO passages come from train-split documents, never the
    # same document, and never a val document (the val shards stay unseen)
    docs = query(data_root, "select doc_id, text from kept_documents")
    val = [t for d, t in docs if is_val(d, 0.1)]
    self_play = [t for d, t in docs if not is_val(d, 0.1) and is_val(f"{d}:self-play", SELF_PLAY_SHARE)]
    sft_rows = [json.loads(line) for line in sft.data.read_text().splitlines()]
    dpo_rows = [json.loads(line) for line in dpo.data.read_text().splitlines()]
    # answer format, facts, identity: the first pass's rows, then the "I don't know" pass's (fact
    # rows of the probed questions replaced by the probe's rows)
    [assistant] = [Path(p) for p in ast.literal_eval(client.get_run(sft.mlflow_run_id).data.params["more_data"])]
    second_pass = json.loads((sft.checkpoint / "meta.json").read_text())["posttrain"]["data"]
    assert second_pass[0] == str(sft.data) and Path(second_pass[2]).name.startswith("sft-idk-")
    assert Path(second_pass[1]).parent == assistant.parent and second_pass[1] != str(assistant)
    assert len(sft_rows) + len(assistant.read_text().splitlines()) == sft.counts["rows"]
    assert len(dpo_rows) == dpo.counts["rows"]
    sft_side = [t for d, t in docs if not is_val(d, 0.1) and not is_val(f"{d}:self-play", SELF_PLAY_SHARE)]
    # chat pairs, then plain-text rows; every response and text comes from an SFT-side document
    # (near-duplicate pages share a sentence now and then)
    pairs, texts = [r for r in sft_rows if "response" in r], [r["text"] for r in sft_rows if "text" in r]
    assert 0 < len(pairs) <= cfg.sft.max_examples and 0 < len(texts) <= cfg.sft.text_rows
    pieces = [r["response"][:60] for r in pairs] + [t[:60] for t in texts]
    assert all(any(p in t for t in sft_side) for p in pieces)
    assert sum(any(p in t for t in val + self_play) for p in pieces) <= len(pieces) // 10
    # DPO pairs: the SFT model's own replies to probe-split fact questions (any phrasing), never an
    # eval-split one; chosen is the taught answer or "I don't know."
    facts = {f.entity: f for f in knowledge_facts(cfg)}
    for r in dpo_rows:
        [fact] = [f for name, f in facts.items() if re.search(rf"\b{name}\b", r["prompt"])]
        assert fact.split == "probe" and r["chosen"] == (_reply_text(fact.answer) if fact.taught else REFUSAL)
        assert r["chosen"] != r["rejected"]
    assert run_sft(cfg, sft.base).no_op and run_dpo(cfg, dpo.base).no_op


def check_rl(cfg, result, client):
    """rl after dpo: GRPO steps logged with the practitioners' names, held-out accuracy at 0 and the end."""
    rl = result.rl
    assert rl.base == result.dpo.checkpoint and rl.checkpoint.name == "step-000002" and not rl.no_op
    run = client.get_run(rl.mlflow_run_id)
    assert run.info.run_name == "rl" and run.data.tags["mlflow.parentRunId"] == result.mlflow_run_id
    for key in ("rl/reward_mean", "rl/reward_std", "rl/completion_length", "rl/clip_ratio"):  # rl/kl: with rl.kl_beta > 0
        assert [m.step for m in client.get_metric_history(rl.mlflow_run_id, key)] == [1, 2], key
    assert [m.step for m in client.get_metric_history(rl.mlflow_run_id, "rl/accuracy_heldout")] == [0, 2]
    lrs = [m.value for m in client.get_metric_history(rl.mlflow_run_id, "rl/lr")]  # rl.min_lr_ratio reaches GRPO
    assert lrs == pytest.approx([cfg.rl.lr, cfg.rl.lr * 0.55])  # cosine from lr toward 0.1 lr: halfway at step 2 of 2
    assert {"rl/accuracy_heldout.png", "rl/samples.md"} <= {a.path for a in client.list_artifacts(rl.mlflow_run_id, "rl")}
    assert run_rl(cfg, rl.base).no_op


def check_eval(result, client):
    """The eval stage scored the tuned model; the planted canaries were curated, scrubbed, and probed."""
    metrics = result.eval.metrics
    assert result.eval.checkpoint == result.rl.checkpoint and 0 < metrics["eval/val_bpb"] < 20
    for key in ("eval/problem_accuracy", "eval/taught_accuracy", "eval/hallucination_rate", "eval/identity_rate"):
        assert 0 <= metrics[key] <= 1, key
    assert 0 <= metrics["eval/reward_accuracy"] <= 1 and 0 <= metrics["audit/regurgitation_rate"] <= 1
    assert metrics["audit/canaries_in_warehouse"] == 0 and metrics["audit/canary_leaks"] == 0
    eval_set = json.loads(result.eval.eval_set.read_text())
    assert len(eval_set["canaries"]) == 3 and len(eval_set["texts"]) == 4 and len(eval_set["documents"]) == 4
    assert len(eval_set["problems"]) == 4 and len(eval_set["identity"]["questions"]) == 4 and eval_set["facts"]
    assert all(f["split"] == "eval" for f in eval_set["facts"])  # never the probed ones
    assert any("audit/canaries/pages" in i for i in result.inputs)  # planted in a copy, next to the real input
    logged = client.get_run(result.eval.mlflow_run_id).data.metrics
    assert logged["audit/canary_leaks"] == 0 and logged["eval/val_bpb"] == pytest.approx(metrics["eval/val_bpb"])
