"""The eval and register stages against a REAL MLflow server (and the session's Prefect server):
a tuned model registered with lineage tags and alias `candidate`, the promotion gate both ways
(a better candidate moves `champion`, a worse one does not, a leaking one never), a re-run that
is a no-op, and `models:/crawl2model@champion` loaded with mlflow.pyfunc in a fresh Python that
answers like the checkpoint does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from crawl2model.config import load_config
from flows.evaluate import run_eval
from flows.register import passes_gate, run_register
from flows.servers import start_servers
from model.checkpoint import latest_checkpoint, save_checkpoint
from model.posttrain import PosttrainConfig, reply, run_dpo, run_sft
from model.sampling import load_model
from tests.test_posttrain import dpo_rows, world, write_jsonl  # noqa: F401  (world: a fixture)

pytestmark = pytest.mark.slow
QUICK = {"micro_batch": 8, "warmup_steps": 2, "eval_batches": 2, "sample_prompts": [], "eval_every": 100}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with start_servers(tmp_path_factory.mktemp("servers"), free_port(), free_port()) as (_, mlflow_url):
        yield mlflow_url


@pytest.fixture(scope="module")
def tuned(world) -> dict:
    """An SFT then DPO checkpoint of the tiny world model, and two degraded copies of it."""
    root = world["root"] / "registry"
    sft = run_sft(PosttrainConfig.from_dict({**QUICK, "kind": "sft", "base": str(world["base"]), "out": str(root / "sft"),
                                             "data": str(world["sft_data"]), "lr": 1e-2, "max_steps": 12}), log=lambda m: None)
    assert sft["step"] == 12
    prefs = write_jsonl(root / "prefs.jsonl", dpo_rows(20))
    run_dpo(PosttrainConfig.from_dict({**QUICK, "kind": "dpo", "base": str(latest_checkpoint(root / "sft")),
                                       "out": str(root / "dpo"), "data": str(prefs), "lr": 2e-3, "max_steps": 6,
                                       "held_out_fraction": 0.3}), log=lambda m: None)
    good = latest_checkpoint(root / "dpo")
    copies = {}
    for name, scale in (("sharp", 3.0), ("sharper", 6.0)):  # the same model overconfident: logits x scale
        model, meta = load_model(good)
        with torch.no_grad():
            model.norm.weight.mul_(scale)
        copies[name] = save_checkpoint(root / name / "step-000006", model, None, meta)
    return {"good": good, **copies}


def test_gate_follows_the_configured_rules():
    cfg = load_config()
    better = {"eval/val_bpb": 1.0, "eval/reward_accuracy": 1.0}
    leaks = passes_gate({**better, "audit/canary_leaks": 1}, {}, cfg)
    assert not leaks[0] and "audit/canary_leaks" in leaks[1] and "limit 0" in leaks[1]
    assert passes_gate(better, {"eval/val_bpb": 2.0, "eval/reward_accuracy": 1.0}, cfg)[0]
    assert not passes_gate(better, {"eval/val_bpb": 2.0, "eval/reward_accuracy": 1.2}, cfg)[0]  # reward accuracy fell
    assert not passes_gate(better, better, cfg)[0]  # equal everywhere: not better on anything
    # A rule the user configures: arithmetic must improve by more than 5 points.
    strict = load_config(overrides=['registry.gate=[{"metric": "eval/problem_accuracy", "better": "higher", '
                                    '"min_gain": 0.05}]'])
    champion = {"eval/problem_accuracy": 0.30}
    assert not passes_gate({"eval/problem_accuracy": 0.33}, champion, strict)[0]
    assert passes_gate({"eval/problem_accuracy": 0.40}, champion, strict)[0]
    # Lower-is-better with a tolerance: a hallucination rate may rise by 0.05, not more.
    assert passes_gate({"eval/val_bpb": 1.9, "eval/hallucination_rate": 0.24}, {"eval/val_bpb": 2.0,
                       "eval/hallucination_rate": 0.20}, cfg)[0]
    assert not passes_gate({"eval/val_bpb": 1.9, "eval/hallucination_rate": 0.30}, {"eval/val_bpb": 2.0,
                           "eval/hallucination_rate": 0.20}, cfg)[0]


def test_register_and_promote_against_a_real_mlflow_server(tuned, data_root, prefect_server, mlflow_server,
                                                          monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    # bits/byte and reward accuracy decide here; the assistant metrics have tests of their own
    cfg = load_config(overrides=["eval.val_windows=4", "registry.model_name=c2m-test", "eval.problems=0",
                                 "eval.identity_questions=0", "knowledge.facts=0"], data_root=data_root)
    client = MlflowClient(mlflow_server)

    def register(name: str):
        evaluated = run_eval(cfg, tuned[name])
        return evaluated, run_register(cfg, tuned[name], evaluated.metrics, evaluated.eval_set)

    sharp_eval, first = register("sharp")  # no champion yet: the first clean candidate becomes it
    assert first.promoted and first.version == "1" and first.decision.startswith("promoted: no champion yet")
    eval_set = json.loads(sharp_eval.eval_set.read_text())
    assert len(eval_set["texts"]) == 4 and eval_set["pairs"] and all(len(p["reference"]) == 2 for p in eval_set["pairs"])

    good_eval, second = register("good")  # better bits/byte on the same eval set: promoted
    assert good_eval.metrics["eval/val_bpb"] < sharp_eval.metrics["eval/val_bpb"]
    assert second.promoted and second.version == "2", second.decision
    assert second.champion["eval/val_bpb"] == pytest.approx(sharp_eval.metrics["eval/val_bpb"])  # scored again, same set

    _, third = register("sharper")  # worse: champion stays
    assert not third.promoted and "kept champion 2" in third.decision and "eval/val_bpb" in third.decision
    assert client.get_model_version_by_alias("c2m-test", "champion").version == "2"
    assert client.get_model_version_by_alias("c2m-test", "candidate").version == "3"

    version = client.get_model_version("c2m-test", "2")
    for tag in ("tokenizer_sha256", "config_hash", "code_version", "prefect_flow_run_id", "checkpoint_sha256",
                "eval/val_bpb", "eval/reward_accuracy", "gate.decision"):
        assert version.tags[tag], tag
    assert version.tags["checkpoint"] == str(tuned["good"]) and version.tags["gate.promoted"] == "1"
    card = version.description  # the model card: this run's numbers, limits, how to load it
    assert f"| `eval/val_bpb` | {good_eval.metrics['eval/val_bpb']:,.4g} |" in card
    assert f"| `eval/reward_accuracy` | {good_eval.metrics['eval/reward_accuracy']:,.4g} |" in card
    assert "`eval/identity_rate`" not in card and "`eval/problem_accuracy`" not in card  # not measured here
    assert "then SFT, then DPO" in card and "answer as Crawly" in card and "I don't know" in card
    assert 'mlflow.pyfunc.load_model("models:/c2m-test/2")' in card and "crawl2model chat --alias champion" in card
    assert "models --name c2m-test generate" in card and "At registration: promoted (alias `champion`" in card
    assert client.get_model_version("c2m-test", "3").description.count("crawl2model chat --alias candidate") == 1
    assert mlflow.artifacts.load_text(f"runs:/{second.mlflow_run_id}/model_card.md") == card
    gate_run = client.get_run(second.mlflow_run_id)
    assert gate_run.data.metrics["gate/promoted"] == 1.0 and "gate/champion/eval/val_bpb" in gate_run.data.metrics

    assert run_register(cfg, tuned["good"], good_eval.metrics, good_eval.eval_set).no_op  # same weights: nothing new
    assert run_eval(cfg, tuned["good"]).no_op

    # a fresh Python, as a user would: the champion answers exactly like the checkpoint (greedy)
    script = ("import json, mlflow.pyfunc; m = mlflow.pyfunc.load_model('models:/c2m-test@champion'); "
              "print(json.dumps(m.predict(['Tell me something about cats?'], params={'max_new_tokens': 8})))")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    from tokenizers import Tokenizer

    from model.hf import tokenizer_folder

    model, _ = load_model(tuned["good"])
    tokenizer = Tokenizer.from_file(str(tokenizer_folder(tuned["good"]) / "tokenizer.json"))
    assert json.loads(done.stdout.strip().splitlines()[-1]) == reply(model, tokenizer, ["Tell me something about cats?"], 8)

    # what the registry holds: code (model/ and the pyfunc file), safetensors weights and JSON; no pickle
    local = Path(mlflow.artifacts.download_artifacts("models:/c2m-test/2", dst_path=str(tmp_path / "registered")))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert "model_code_path" in (local / "MLmodel").read_text() and "pyfunc_model.py" in files
    assert {f.split("/")[1] for f in files if f.startswith("code/")} == {"model"}
    assert "artifacts/checkpoint/model.safetensors" in files
