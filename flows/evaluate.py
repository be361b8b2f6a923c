"""The eval stage: build the held-out eval set of a tuned checkpoint and score it (model.evaluation).

    crawl2model run --until eval
    crawl2model eval [--checkpoint DIR | --alias champion]     # the suite alone
    from flows.evaluate import run_eval          # environment prepared first
    summary = run_eval(cfg, checkpoint)          # default: the newest tuned checkpoint (rl, dpo, sft)

The eval set (`eval/<id>/eval_set.json`) holds everything the suite needs, so the register
stage scores the current champion on exactly the same data:
  texts      `eval.val_windows` windows of the pretraining VAL shards, decoded (bits per byte)
  pairs      up to `eval.pref_pairs` of the DPO data's held-out pairs (the same split DPO used),
             with their log-probs under DPO's reference (the SFT model), for reward accuracy
  documents  `audit.regurgitation_prompts` TRAIN documents (verbatim-continuation audit)
  canaries   the planted PII canaries (`audit.canaries` > 0), their prefixes and secrets
  problems   `eval.problems` held-out verifiable problems (never in SFT warm-up or RL)
  facts      the eval split of the knowledge facts (never probed): taught and never-taught ones
  identity   the configured assistant name and `eval.identity_questions` held-out phrasings
  degeneracy_prompts  OPEN_PROMPTS, then the first DEGENERACY_ASKED identity and fact questions
             above: the prompts whose greedy replies give eval/distinct_2, eval/repetition_rate
             and eval/ended_rate (model.evaluation.degeneracy)
Metrics go to the MLflow nested run `eval`: the suite's (`eval/val_bpb`, `eval/val_loss`,
`eval/reward_accuracy`, `audit/regurgitation_rate`, `audit/canary_leaks`, the assistant scores,
`eval/distinct_2`, `eval/repetition_rate`, `eval/ended_rate`, all in EvalSummary.metrics),
`audit/canaries_in_warehouse` (canary secrets the scrubbed warehouse still holds), and the "no
collapse" numbers of every model the candidate descends from (EvalSummary.lineage, one log line):
`lineage/<stage>/{distinct_2,repetition_rate,ended_rate}` for stage pretrain (plain continuation),
sft (the model DPO started from: the "I don't know" pass when there is one), dpo and rl, found by
following meta.json "base" links from the candidate. A re-run on the same checkpoint and settings
is a no-op.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import get_run_context
from tokenizers import Tokenizer

from crawl2model.config import Config, stable_hash
from crawl2model.layout import DataRoot
from flows.assistant_data import knowledge_facts, problem_split
from flows.posttrain import corpus_documents
from flows.tracking import Tracking, flatten
from model.chat_data import load_preferences
from model.evaluation import checkpoint_degeneracy, completion_logps, suite
from model.hf import tokenizer_folder
from model.identity import identity_questions
from model.posttrain import data_files, held_out_split
from model.sampling import load_model_and_tokenizer
from model.variants import val_windows
from tasks.canaries import load_canaries, warehouse_leaks

USER_PROBLEMS_HELD_OUT = 0.2  # of the user's rl.data problems, by a hash of the prompt: eval only, never RL
EVAL_SET_VERSION = 2  # in the eval folder's key: 2 added degeneracy_prompts (an older folder is not reused)
STAGES = ("pretrain", "sft", "dpo", "rl")  # the lineage's stages, in pipeline order
DEGENERACY_METRICS = ("distinct_2", "repetition_rate", "ended_rate")  # model.evaluation.degeneracy's keys
OPEN_PROMPTS = ["What is this website about?", "Explain what a function is.", "Write two sentences about the internet.",
                "How do I make a cup of tea?", "Give me three tips for writing a clear email.",
                "What is the difference between weather and climate?", "Why do people read the news?",
                "Describe your favourite place in a few words."]
DEGENERACY_ASKED = 4  # held-out identity questions and eval fact questions added to OPEN_PROMPTS, each


def eval_table(metrics: dict) -> str:
    """The suite's numbers as Markdown."""
    return "\n".join(["| metric | value |", "|---|---:|", *[f"| {k} | {v:.4g} |" for k, v in metrics.items()]]) + "\n"


@dataclass
class EvalSummary:
    checkpoint: Path
    eval_set: Path
    metrics: dict
    no_op: bool
    mlflow_run_id: str | None = None
    lineage: dict = field(default_factory=dict)  # lineage/<stage>/<metric>: see the module docstring


def _meta(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / "meta.json").read_text())


def lineage(checkpoint: Path) -> dict[str, Path]:
    """Stage (meta.json "kind", "pretrain" without one) -> checkpoint, over `checkpoint` itself and
    its base, its base's base...; per stage the one nearest `checkpoint`, so "sft" is the model DPO
    started from (SFT's "I don't know" pass, whose base is the first pass)."""
    found: dict[str, Path] = {}
    seen, path = set(), Path(checkpoint)
    while path is not None and (path / "meta.json").exists() and path not in seen:
        seen.add(path)
        meta = _meta(path)
        found.setdefault(meta.get("kind", "pretrain"), path)
        path = Path(meta["base"]) if meta.get("base") else None
    return found


def dpo_ancestor(checkpoint: Path) -> Path | None:
    """The DPO checkpoint in `checkpoint`'s lineage (itself, or a base of a base...), if any."""
    return lineage(checkpoint).get("dpo")


def held_out_pairs(checkpoint: Path, limit: int) -> list[dict]:
    """The held-out pairs of the DPO run in `checkpoint`'s lineage (its data and held-out fraction),
    each with "reference": the log-probs of its replies under that run's reference (its base)."""

    dpo = dpo_ancestor(checkpoint)
    if dpo is None:
        return []
    meta = _meta(dpo)
    settings = meta["posttrain"]
    files = data_files(settings.get("data") or [])
    if not files or not all(Path(f).is_file() for f in files) or not Path(meta["base"]).exists():
        return []
    pairs = [pair for f in files for pair in load_preferences(f)[0]]
    _, held = held_out_split(pairs, [json.dumps(p, sort_keys=True) for p in pairs], settings["held_out_fraction"])
    held = held[:limit]
    reference, tokenizer = load_model_and_tokenizer(meta["base"])
    return [{**p._asdict(), "reference": ref} for p, ref in zip(held, completion_logps(reference, tokenizer, held))]


def planted_canaries(cfg: Config) -> list[dict]:
    path = DataRoot(cfg.data_root).canaries / "canaries.json"
    return json.loads(path.read_text()) if cfg.audit.canaries and path.exists() else []


def assistant_items(cfg: Config) -> dict:
    """The eval set's held-out problems, eval-split facts and identity questions."""


    return {"problems": [asdict(p) for p in problem_split(cfg, "heldout", cfg.eval.problems)],
            "problem_tokens": cfg.rl.max_new_tokens,
            "facts": [asdict(f) for f in knowledge_facts(cfg) if f.split == "eval"],
            "identity": {"name": cfg.assistant.name,
                         "questions": identity_questions(cfg.knowledge.seed)[:cfg.eval.identity_questions]}}


def degeneracy_prompts(items: dict) -> list[str]:
    """OPEN_PROMPTS and the first DEGENERACY_ASKED identity and fact questions of assistant_items."""
    return [*OPEN_PROMPTS, *items["identity"]["questions"][:DEGENERACY_ASKED],
            *[f["question"] for f in items["facts"][:DEGENERACY_ASKED]]]


@task(name="eval-set", cache_policy=NONE)
def build_eval_set(cfg: Config, checkpoint: Path, path: Path) -> dict:


    tokenizer = Tokenizer.from_file(str(tokenizer_folder(checkpoint) / "tokenizer.json"))
    has_corpus = (cfg.data_root / "warehouse.duckdb").exists()  # a model tuned from imported weights may have none
    documents = [text for _, text in corpus_documents(cfg, checkpoint, self_play=False)] if has_corpus else []
    items = assistant_items(cfg)
    eval_set = {"source": str(checkpoint), "texts": [tokenizer.decode(w) for w in val_windows(checkpoint, cfg.eval.val_windows)],
                "pairs": held_out_pairs(checkpoint, cfg.eval.pref_pairs),
                "documents": documents[:cfg.audit.regurgitation_prompts],
                "prefix_tokens": cfg.audit.prefix_tokens, "continuation_tokens": cfg.audit.continuation_tokens,
                "canaries": [{k: c[k] for k in ("id", "kind", "prefix", "secret")} for c in planted_canaries(cfg)],
                **items, "degeneracy_prompts": degeneracy_prompts(items)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(eval_set, ensure_ascii=False))
    os.replace(tmp, path)
    get_run_logger().info("eval set: %d texts, %d pairs, %d documents, %d canaries, %d problems, %d facts, %d identity "
                          "questions, %d degeneracy prompts -> %s", len(eval_set["texts"]), len(eval_set["pairs"]),
                          len(eval_set["documents"]), len(eval_set["canaries"]), len(eval_set["problems"]),
                          len(eval_set["facts"]), len(eval_set["identity"]["questions"]),
                          len(eval_set["degeneracy_prompts"]), path)
    return eval_set


@task(name="score", cache_policy=NONE)
def score(checkpoint: Path, eval_set: dict) -> dict:
    return suite(checkpoint, eval_set)


@task(name="lineage", cache_policy=NONE)
def lineage_scores(checkpoint: Path, eval_set: dict, candidate: dict) -> dict:
    """lineage/<stage>/{distinct_2,repetition_rate,ended_rate} of each model in the candidate's
    lineage on the eval set's degeneracy prompts (the candidate's own are its suite numbers)."""

    if not eval_set.get("degeneracy_prompts"):
        return {}
    models, scores = lineage(checkpoint), {}
    for stage in (s for s in STAGES if s in models):
        found = ({k: candidate[f"eval/{k}"] for k in DEGENERACY_METRICS} if models[stage] == Path(checkpoint)
                 else checkpoint_degeneracy(models[stage], eval_set["degeneracy_prompts"]))
        scores.update({f"lineage/{stage}/{k}": v for k, v in found.items()})
    return scores


def lineage_line(scores: dict) -> str:
    """One line: distinct_2 / repetition_rate / ended_rate per stage, in pipeline order."""
    return "no collapse (distinct_2 / repetition_rate / ended_rate): " + ", ".join(
        f"{stage} " + " / ".join(f"{scores[f'lineage/{stage}/{k}']:.3f}" for k in DEGENERACY_METRICS)
        for stage in STAGES if f"lineage/{stage}/ended_rate" in scores)


def warehouse_canaries(cfg: Config) -> int | None:
    """How many planted canary secrets (as written, or without separators) the scrubbed warehouse
    still holds (None: no canaries)."""
    if not planted_canaries(cfg):
        return None
    return len(warehouse_leaks(cfg.data_root, load_canaries(DataRoot(cfg.data_root).canaries)))


@flow(name="eval", log_prints=False)
def eval_flow(cfg: Config, checkpoint: Path | None = None, parent_run_id: str | None = None) -> EvalSummary:
    logger = get_run_logger()
    checkpoint = Path(checkpoint) if checkpoint else DataRoot(cfg.data_root).newest_tuned()
    sections = ("eval", "audit", "rl", "knowledge", "assistant")
    key = stable_hash([str(checkpoint.resolve()), EVAL_SET_VERSION,
                       *(getattr(cfg, section).model_dump(mode="json") for section in sections)])
    folder = DataRoot(cfg.data_root).eval_set(key)
    if (folder / "metrics.json").exists():
        metrics = json.loads((folder / "metrics.json").read_text())
        scores = json.loads((folder / "lineage.json").read_text()) if (folder / "lineage.json").exists() else {}
        logger.info("eval: nothing new, %s was scored: %s", checkpoint, metrics)
        return EvalSummary(checkpoint, folder / "eval_set.json", metrics, True, lineage=scores)

    tracking = Tracking(cfg.data_root, cfg.experiment)
    with tracking.run("eval", parent_run_id, tags={"prefect.flow_run_id": str(get_run_context().flow_run.id),
                                                   "stage": "eval", "checkpoint": str(checkpoint)}) as run_id:
        tracking.log_params(run_id, {**flatten(cfg.eval.model_dump(mode="json"), "eval."),
                                     **flatten(cfg.audit.model_dump(mode="json"), "audit."), "checkpoint": str(checkpoint)})
        eval_set = build_eval_set(cfg, checkpoint, folder / "eval_set.json")
        metrics = score(checkpoint, eval_set)
        in_warehouse = warehouse_canaries(cfg)
        if in_warehouse is not None:
            metrics["audit/canaries_in_warehouse"] = in_warehouse
        scores = lineage_scores(checkpoint, eval_set, metrics)
        logger.info("eval %s: %s", checkpoint, {k: round(v, 4) for k, v in metrics.items()})
        if scores:
            logger.info("eval: %s", lineage_line(scores))
        tracking.log_metrics(run_id, {**metrics, **scores})
        tracking.log_files(run_id, [folder / "eval_set.json"], "eval")
        tracking.log_text(run_id, eval_table({**metrics, **scores}), "eval/table.md")
        (folder / "lineage.json").write_text(json.dumps(scores, indent=1))
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))  # last: marks it done
    return EvalSummary(checkpoint, folder / "eval_set.json", metrics, False, run_id, scores)


def run_eval(cfg: Config, checkpoint: Path | None = None, parent_run_id: str | None = None) -> EvalSummary:
    """The suite on `checkpoint` (default: the newest tuned one)."""
    return eval_flow(cfg, checkpoint, parent_run_id)
