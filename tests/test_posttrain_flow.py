"""The sft and dpo stages with the user's data, as real Prefect flow runs tracked in MLflow: bad
rows quarantined with reasons (counted in metrics, listed in an artifact), LoRA adapters merged
into the saved weights, a killed stage resumed with its "before" kept, a finished one a no-op,
and DPO on the real Anthropic HH sample with counts that reconcile."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow import MlflowClient

from crawl2model.config import load_config
from flows.posttrain import run_dpo, run_sft
from tests.conftest import shared
from tests.test_posttrain import ANSWER, questions, world, write_jsonl  # noqa: F401  (world: a fixture)

pytestmark = pytest.mark.slow
# pack=false, warmup_steps=5: the settings of the LoRA and resume checks below (the defaults pack and warm up 10 steps)
FAST = ["sft.micro_batch=4", "sft.pack=false", "sft.warmup_steps=5", "sft.eval_batches=2", "sft.eval_every=2", "sft.checkpoint_every=2", "sft.max_steps=4",
        'sft.sample_prompts=["Tell me something about cats?"]', "dpo.micro_batch=4", "dpo.eval_batches=2",
        "dpo.max_steps=2", "dpo.sample_prompts=[]",
        # the user's data alone: no answer-format, fact or identity rows, no "I don't know" pass
        "rl.warmup_rows=0", "knowledge.facts=0", "assistant.identity_rows=0"]
BAD_ROWS = ["{not json", {"prompt": "Hi"}, {"messages": [{"role": "robot", "content": "beep"}]},
            {"messages": [{"role": "user", "content": "Hi"}]}]


def test_sft_with_bad_rows_and_lora_then_resume_and_no_op(world, data_root, prefect_server, tmp_path):
    good = [{"prompt": q, "response": ANSWER} for q in questions()]
    data = write_jsonl(tmp_path / "chat.jsonl", good[:10] + BAD_ROWS + good[10:])
    cfg = load_config(overrides=FAST + [f"sft.data={data}", "sft.lora_rank=4", "sft.lr=1e-2"], data_root=data_root)
    first = run_sft(cfg, world["base"])

    c = first.counts
    assert (c["rows"], c["examples"], c["quarantined"]) == (24, 20, 4)
    assert c["reasons"] == {"invalid-json": 1, "missing-field": 1, "unknown-role": 1, "no-assistant-turn": 1}
    client = MlflowClient(f"sqlite:///{data_root / 'mlflow.db'}")
    metrics = client.get_run(first.mlflow_run_id).data.metrics
    assert {k.rsplit("/", 1)[1]: v for k, v in metrics.items() if k.startswith("sft/data/quarantined/")} == c["reasons"]
    listed = client.download_artifacts(first.mlflow_run_id, "sft/quarantine.jsonl", str(tmp_path))
    rows = [json.loads(line) for line in open(listed)]
    assert [(r["line"], r["reason"]) for r in rows] == [(11, "invalid-json"), (12, "missing-field"),
                                                       (13, "unknown-role"), (14, "no-assistant-turn")]
    assert (first.checkpoint / "lora.safetensors").exists()  # adapters, next to the merged weights
    assert first.after["sft/eval_loss"] < first.before["sft/eval_loss"]
    assert first.samples[0]["before"] != first.samples[0]["after"]

    assert run_sft(cfg, world["base"]).no_op  # finished: nothing to do
    out = first.checkpoint.parent  # as if killed after step 2: the stage resumes and keeps its "before"
    (out / "summary.json").unlink()
    shutil.rmtree(first.checkpoint)
    resumed = run_sft(cfg, world["base"])
    assert not resumed.no_op and resumed.checkpoint == first.checkpoint
    assert resumed.before == first.before and resumed.samples[0]["before"] == first.samples[0]["before"]
    assert resumed.after["sft/loss"] == pytest.approx(first.after["sft/loss"], rel=1e-5)
    assert [m.step for m in client.get_metric_history(resumed.mlflow_run_id, "sft/loss")] == [3, 4]


def test_dpo_on_the_hh_sample_reconciles_its_counts(world, data_root, prefect_server):
    hh = shared("preference", "hh-harmless-test-1000.jsonl")
    cfg = load_config(overrides=FAST + [f"dpo.data={hh}", "dpo.seq_len=64"], data_root=data_root)
    summary = run_dpo(cfg, world["base"])
    c = summary.counts
    assert c["rows"] == 1000 and c["examples"] + c["quarantined"] == 1000 and c["examples"] > 900
    assert c["train"] + c["held_out"] == c["examples"] and c["held_out"] >= 50
    assert summary.before["eval/loss"] == pytest.approx(0.6931, abs=1e-4)  # policy == reference
    run = MlflowClient(f"sqlite:///{data_root / 'mlflow.db'}").get_run(summary.mlflow_run_id)
    assert run.data.metrics["dpo/data/rows"] == 1000 and run.data.tags["data"] == str(hh)
    assert summary.checkpoint.name == "step-000002" and (summary.checkpoint / "meta.json").exists()
