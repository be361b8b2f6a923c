"""The register stage: the tuned model into the MLflow model registry, with lineage tags, alias
`candidate`, and a promotion gate that moves `champion` only to a better model.

    crawl2model run                               # ... -> eval -> export -> register
    crawl2model models list | show | promote VERSION | generate "prompt" [--alias champion]
    from flows.register import run_register       # environment prepared first
    summary = run_register(cfg, checkpoint, eval_summary, export_summary)

The registered model (`registry.model_name`, default "crawl2model") is a pyfunc logged from code
(flows/pyfunc_model.py: prompts in, replies out; no pickle) with explicit pip requirements and
crawl2model's `model/` code, so `mlflow.pyfunc.load_model("models:/crawl2model@champion")` works in a fresh
Python. Artifacts: the checkpoint with its tokenizer, the eval set, and the exported files (GGUF
with Modelfiles, the variant table). Version tags: snapshot, tokenizer_sha256, config_hash,
code_version, prefect_flow_run_id, checkpoint, checkpoint_sha256, funnel, the eval metrics. Description:
the model card (flows/model_card.py: data, what each stage taught with this run's numbers, limits,
how to load, chat and serve), also the register run's artifact `model_card.md`.

The gate scores the current champion on the candidate's eval set (model.evaluation.suite: the
same texts, pairs, problems, facts, identity questions and canaries) and promotes when every rule
of `registry.gate` holds (defaults: no canary leak; bits per byte, reward accuracy, arithmetic
accuracy, hallucination and identity rates no worse than the champion's beyond a small
tolerance) and the candidate is better on at least one of them. With no champion yet the first
candidate that meets the limits becomes it. The decision and both sides' numbers are logged (metrics `gate/*`, tag `gate.decision`).
A checkpoint registered before (same weights) is not registered again: a no-op.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import get_run_context

from crawl2model.config import Config, stable_hash
from flows.evaluate import lineage as checkpoint_chain
from flows.model_card import CardFacts, fit, model_card
from flows.pyfunc_model import DEFAULT_PARAMS, silenced_warnings
from flows.tracking import Tracking
from model.config import ModelConfig
from model.evaluation import suite
from model.hf import tokenizer_folder
from warehouse import Warehouse
from warehouse.files import file_sha256

REPO = Path(__file__).resolve().parents[1]
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # logged as the model's code (no pickle)
SERVING_REQUIREMENTS = ("torch", "tokenizers", "safetensors", "numpy", "mlflow")


@dataclass
class RegisterSummary:
    name: str
    version: str
    promoted: bool
    decision: str
    candidate: dict = field(default_factory=dict)   # gate metrics of the candidate
    champion: dict = field(default_factory=dict)    # of the previous champion (empty if none)
    no_op: bool = False
    mlflow_run_id: str | None = None


def code_version() -> str:
    """The git commit of the code (+ "-dirty" with uncommitted changes), or the package version."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return version("crawl2model")


def training_data(cfg: Config, checkpoint: Path) -> tuple[dict, dict, list[dict]]:
    """The checkpoint's meta.json, its token shards' manifest and its snapshot's funnel (empty when unknown)."""
    meta = json.loads((checkpoint / "meta.json").read_text())
    manifest_path = meta.get("train", {}).get("manifest")
    manifest = json.loads(Path(manifest_path).read_text()) if manifest_path and Path(manifest_path).exists() else {}
    funnel = []
    if manifest.get("snapshot") and (cfg.data_root / "warehouse.duckdb").exists():
        with Warehouse.open(cfg.data_root, read_only=True) as wh:
            funnel = wh.funnel(manifest["snapshot"])
    return meta, manifest, funnel


def lineage(cfg: Config, checkpoint: Path, manifest: dict, funnel: list[dict]) -> dict[str, str]:
    """Where the model came from: data snapshot and funnel, tokenizer, config, code."""
    tags = {"snapshot": manifest.get("snapshot", ""), "tokenizer_sha256": manifest.get("tokenizer_sha256", ""),
            "config_hash": stable_hash(cfg.model_dump(mode="json", exclude={"data_root"}))[:16],
            "code_version": code_version(), "checkpoint": str(checkpoint),
            "checkpoint_sha256": file_sha256(checkpoint / "model.safetensors")}
    if funnel:
        tags["funnel"] = json.dumps({r["stage"]: [r["docs_in"], r["docs_out"]] for r in funnel})
    return tags


def card_facts(cfg: Config, checkpoint: Path, meta: dict, manifest: dict, funnel: list[dict], exports: Path | None,
               promoted: bool, verdict: str) -> CardFacts:
    """What the model card says besides the eval metrics (flows/model_card.py)."""
    model = ModelConfig.from_dict(meta["config"]) if "config" in meta else None
    splits = {split: manifest.get("metrics", {}).get(f"tokenizer/tokens_{split}") for split in ("train", "val")}
    files = (sorted(exports.glob("gguf/*.gguf")) + [exports / "hf"]) if exports is not None else []
    return CardFacts(stages=list(checkpoint_chain(checkpoint))[::-1], snapshot=manifest.get("snapshot", ""),
                     funnel=funnel, tokens={k: int(v) for k, v in splits.items() if v is not None},
                     vocab_size=manifest.get("vocab_size") or (model.vocab_size if model else None),
                     params=model.num_params() if model else None, context=model.max_seq_len if model else None,
                     assistant=cfg.assistant.name if cfg.assistant.identity_rows else "", maker=cfg.assistant.maker,
                     alias="champion" if promoted else "candidate", decision=verdict.split(":")[0],
                     exports=[str(p.resolve()) for p in files if p.exists()])


def gate_checks(candidate: dict, champion: dict, cfg: Config) -> list[tuple[str, bool | None, str]]:
    """Each rule of `registry.gate` judged: (metric, passed or None when it cannot be judged, why)."""
    checks = []
    for rule in cfg.registry.gate:
        mine, theirs = candidate.get(rule.metric), champion.get(rule.metric)
        sign = 1 if rule.better == "higher" else -1
        if mine is None:
            checks.append((rule.metric, None, "the candidate has no such metric: skipped"))
            continue
        if rule.limit is not None and sign * (mine - rule.limit) < 0:
            checks.append((rule.metric, False, f"{mine:.4g} is {'below' if sign > 0 else 'above'} the limit {rule.limit:g}"))
            continue
        if rule.min_gain is None or theirs is None:
            note = "" if rule.min_gain is None or not champion else "; the champion has no such metric"
            checks.append((rule.metric, True, f"{mine:.4g}{' within the limit' if rule.limit is not None else ''}{note}"))
            continue
        gain = sign * (mine - theirs)
        needed = f"needs a gain > {rule.min_gain:g}" if rule.min_gain >= 0 else f"allows a loss of {-rule.min_gain:g}"
        checks.append((rule.metric, gain > rule.min_gain, f"{theirs:.4g} -> {mine:.4g} ({rule.better} is better, {needed})"))
    return checks


def gate_table(candidate: dict, champion: dict, cfg: Config, verdict: str) -> str:
    """The decision as Markdown: every metric of both sides on the same eval set, each rule's verdict."""
    checks = {metric: (ok, why) for metric, ok, why in gate_checks(candidate, champion, cfg)}
    mark = {True: "pass", False: "FAIL", None: "skipped"}
    rows = ["| metric | candidate | champion | rule |", "|---|---:|---:|---|"]
    for metric in sorted(set(candidate) | set(champion)):
        cell = lambda d: f"{d[metric]:.4g}" if metric in d else "-"  # noqa: E731
        rule = f"{mark[checks[metric][0]]}: {checks[metric][1]}" if metric in checks else ""
        rows.append(f"| {metric} | {cell(candidate)} | {cell(champion)} | {rule} |")
    return f"**{verdict}**\n\n" + "\n".join(rows) + "\n"


def passes_gate(candidate: dict, champion: dict, cfg: Config) -> tuple[bool, str]:
    """(promote?, why): every rule of `registry.gate` holds and, when there is a champion, the
    candidate is better than it on at least one compared metric."""
    checks = gate_checks(candidate, champion, cfg)
    failed = [f"{metric}: {why}" for metric, ok, why in checks if ok is False]
    if failed:
        return False, "; ".join(failed)
    if not champion:
        return True, "no champion yet; " + "; ".join(f"{m}: {why}" for m, ok, why in checks if ok)
    sign = {rule.metric: 1 if rule.better == "higher" else -1 for rule in cfg.registry.gate}
    better = [m for m, ok, _ in checks if ok and m in champion and sign[m] * (candidate[m] - champion[m]) > 0]
    if not better:
        return False, "not better than the champion on any metric of the gate: " + "; ".join(
            f"{m}: {why}" for m, ok, why in checks if ok)
    return True, "better on " + ", ".join(better) + "; " + "; ".join(f"{m}: {why}" for m, ok, why in checks if ok)


def registered_version(client, name: str, checkpoint_sha: str):
    found = client.search_model_versions(f"name = '{name}' and tag.checkpoint_sha256 = '{checkpoint_sha}'")
    return found[0] if found else None


@contextmanager
def quiet_pyfunc():
    """MLflow warns at a pyfunc log that predict has no type hints (they would drop the params
    schema) and, for a pickled model (tests log some), that it is pickled."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with silenced_warnings():
            yield
    finally:
        logger.setLevel(level)


def package_checkpoint(checkpoint: Path, dest: Path) -> Path:
    """A self-contained copy of a checkpoint for serving: weights, meta.json (tokenizer made
    relative) and the tokenizer folder; no optimizer state."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint / "model.safetensors", dest / "model.safetensors")
    shutil.copytree(tokenizer_folder(checkpoint), dest / "tokenizer", dirs_exist_ok=True)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["tokenizer"] = "tokenizer"  # relative to the folder, wherever MLflow puts it
    meta["packaged_from"] = str(checkpoint.resolve())
    (dest / "meta.json").write_text(json.dumps(meta, indent=1))
    return dest


@task(name="log-model", cache_policy=NONE)
def log_model(cfg: Config, run_id: str, checkpoint: Path, eval_set: Path, exports: Path | None) -> str:
    """Log the pyfunc model and its files in run `run_id`, register it; returns the version."""
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id), quiet_pyfunc():
        folder = package_checkpoint(checkpoint, Path(tmp) / "checkpoint")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_CODE), artifacts={"checkpoint": str(folder), "eval_set": str(eval_set)},
            signature=infer_signature(["a prompt"], ["a reply"], params=DEFAULT_PARAMS),
            code_paths=[str(REPO / "model")],
            pip_requirements=[f"{p}=={version(p)}" for p in SERVING_REQUIREMENTS],
            registered_model_name=cfg.registry.model_name, await_registration_for=60)
        if exports is not None:
            for path in sorted(exports.glob("gguf/*")) + [exports / "table.md"]:
                if path.is_file():
                    mlflow.log_artifact(str(path), "exports")
    return str(info.registered_model_version)


def registered_checkpoint(name: str, version: str, dest: Path) -> Path:
    """The checkpoint folder (weights, meta.json, tokenizer) of a registered version, downloaded into dest."""
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(dest))
    return Path(local) / "artifacts" / "checkpoint"


@task(name="gate", cache_policy=NONE)
def score_champion(client, name: str, eval_set: dict) -> tuple[dict, str | None]:
    """The champion's metrics on the candidate's eval set, and its version (({}, None) if none)."""
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return {}, None
    with tempfile.TemporaryDirectory() as tmp:
        return suite(registered_checkpoint(name, champion.version, Path(tmp)), eval_set), champion.version


@flow(name="register", log_prints=False)
def register_flow(cfg: Config, checkpoint: Path, eval_metrics: dict, eval_set: Path, exports: Path | None = None,
                  parent_run_id: str | None = None) -> RegisterSummary:
    logger = get_run_logger()
    name = cfg.registry.model_name
    tracking = Tracking(cfg.data_root, cfg.experiment)
    client = tracking.client
    known = registered_version(client, name, file_sha256(checkpoint / "model.safetensors"))
    if known is not None:
        logger.info("register: nothing new, %s is %s version %s", checkpoint, name, known.version)
        return RegisterSummary(name, known.version, known.tags.get("gate.promoted") == "1",
                               known.tags.get("gate.decision", ""), no_op=True)

    flow_run_id = str(get_run_context().flow_run.id)
    with tracking.run("register", parent_run_id, tags={"prefect.flow_run_id": flow_run_id, "stage": "register",
                                                       "checkpoint": str(checkpoint)}) as run_id:
        model_version = log_model(cfg, run_id, checkpoint, eval_set, exports)
        meta, manifest, funnel = training_data(cfg, checkpoint)
        tags = {**lineage(cfg, checkpoint, manifest, funnel), "prefect_flow_run_id": flow_run_id,
                **{k: f"{v:.6g}" for k, v in eval_metrics.items()}}
        for key, value in tags.items():
            client.set_model_version_tag(name, model_version, key, value)
        client.set_registered_model_alias(name, "candidate", model_version)

        champion_metrics, champion_version = score_champion(client, name, json.loads(eval_set.read_text()))
        promoted, decision = passes_gate(eval_metrics, champion_metrics, cfg)
        if promoted:
            client.set_registered_model_alias(name, "champion", model_version)
        verdict = f"{'promoted' if promoted else 'kept champion ' + str(champion_version)}: {decision}"
        client.set_model_version_tag(name, model_version, "gate.decision", verdict)
        client.set_model_version_tag(name, model_version, "gate.promoted", "1" if promoted else "0")
        tracking.log_metrics(run_id, {"gate/promoted": float(promoted),
                                      **{f"gate/candidate/{k}": v for k, v in eval_metrics.items()},
                                      **{f"gate/champion/{k}": v for k, v in champion_metrics.items()}})
        tracking.set_tags(run_id, {"gate.decision": verdict, "model_version": model_version})
        tracking.log_text(run_id, gate_table(eval_metrics, champion_metrics, cfg, verdict), "gate/table.md")
        card = model_card(name, model_version, eval_metrics,
                          card_facts(cfg, checkpoint, meta, manifest, funnel, exports, promoted, verdict))
        tracking.log_text(run_id, card, "model_card.md")
        client.update_model_version(name, model_version, description=fit(card))
        logger.info("register: %s version %s, %s", name, model_version, verdict)
    return RegisterSummary(name, model_version, promoted, verdict, eval_metrics, champion_metrics, False, run_id)


def run_register(cfg: Config, checkpoint: Path, eval_metrics: dict, eval_set: Path, exports: Path | None = None,
                 parent_run_id: str | None = None) -> RegisterSummary:
    return register_flow(cfg, Path(checkpoint), eval_metrics, Path(eval_set), exports, parent_run_id)
