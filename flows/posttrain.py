"""The post-training stages: `sft` tunes the pretrained model into a chat model, `dpo` then
preference-tunes the SFT model (model.posttrain does the training; this module finds the data,
tracks and caches).

    crawl2model sft [--base CKPT] [--data sft.jsonl] [sft.lora_rank=8 ...]
    crawl2model dpo [--base CKPT] [--data prefs.jsonl] [dpo.beta=0.2 ...]
    crawl2model run                                 # ... pretrain -> sft -> dpo -> export
    from flows.posttrain import run_sft, run_dpo    # environment prepared first
    summary = run_sft(cfg)                          # base: the newest pretraining checkpoint

Data: `sft.data` / `dpo.data` (JSONL, JSONL.gz or Parquet in the formats of model.chat_data), or,
when none is given, made for the user:
  SFT  from the corpus the base was pretrained on: `sft.max_examples` chat pairs (title ->
       opening, passage -> its continuation; model.chat_data.pairs_from_warehouse_texts) and
       `sft.text_rows` plain-text pieces learned like pretraining text (so tuning keeps the
       language model: val/ppl), plus flows.assistant_data's rows (answer format, facts, identity)
  DPO  `dpo.pairs=knowledge` (default): the SFT model's own sampled replies to the probe split of
       the facts; chosen is what it should have said (the taught answer, or "I don't know." for a
       never-taught fact), rejected a reply that graded otherwise (model.knowledge.preference_pairs)
       so both sides are the model's kind of reply and not trivially separable. `self-play`: the
       real continuation of a passage vs the SFT model's own sample (model.posttrain.self_play_pairs).
Corpus data comes from the pretraining TRAIN split only (the val shards stay unseen, so `val/loss`
stays honest), SFT and self-play never share a document (SELF_PLAY_SHARE is kept for self-play),
and the facts' eval split is never asked. Made data is written to `posttrain/`, named by content.

Checkpoints go to `checkpoints/<sft|dpo>-<id>/step-NNNNNN/` (id: the base, the data's sha256 and
the stage config), with `summary.json` written last: a finished stage is a no-op on re-run, a
killed one resumes from its latest checkpoint. MLflow nested run `sft` or `dpo`: data counts and
quarantine reasons (`<stage>/data/*`, the quarantined rows as `<stage>/quarantine.jsonl`), the
metrics by step (SFT: `sft/loss`, `sft/eval_loss`; DPO with TRL's names: `train/rewards/margins`,
`eval/rewards/accuracies`, ...; both: `val/loss`, `val/ppl` on the pretraining val shards), and
`<stage>/samples.md`: replies to fixed prompts before and after, side by side.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import get_run_context

from crawl2model.config import Config, TuneConfig, stable_hash
from crawl2model.layout import SUMMARY_FILE, DataRoot
from flows.assistant_data import assistant_sft_rows, knowledge_facts
from flows.progress import progress_bar
from flows.tracking import Tracking, flatten
from model.chat_data import pairs_from_warehouse_texts, text_rows
from model.checkpoint import step_folder
from model.knowledge import knowledge_scores, preference_pairs, probe, refusal_rows
from model.posttrain import PosttrainConfig, self_play_pairs
from model.posttrain import run_dpo as train_dpo, run_sft as train_sft  # run_sft and run_dpo here are the flows
from model.sampling import load_model_and_tokenizer
from tasks.token_shards import is_val
from warehouse import Warehouse
from warehouse.corpus_queries import corpus_shards, shard_texts
from warehouse.files import file_sha256

SELF_PLAY_SHARE = 0.2  # of the corpus's train documents: DPO self-play prompts, never SFT pairs


@dataclass
class TuneSummary:
    stage: str                 # "sft" or "dpo"
    base: Path
    checkpoint: Path
    data: Path
    no_op: bool
    counts: dict               # model.posttrain's "data" event: rows, examples, quarantined, reasons, ...
    before: dict               # metrics at step 0, before any update
    after: dict                # metrics at the last step
    samples: list[dict] = field(default_factory=list)  # {"prompt", "before", "after"}
    seconds: float = 0.0
    mlflow_run_id: str | None = None


def _meta(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / "meta.json").read_text())


def corpus_documents(cfg: Config, base: Path, self_play: bool) -> list[tuple[str, str]]:
    """(title, text) of the base's pretraining corpus, train split only: the SFT part, or the
    SELF_PLAY_SHARE kept for self-play."""

    manifest = _meta(base).get("train", {}).get("manifest")
    snapshot = json.loads(Path(manifest).read_text()).get("snapshot") if manifest and Path(manifest).exists() else None
    with Warehouse.open(cfg.data_root, read_only=True) as wh:
        snapshot = snapshot or wh.latest_snapshot()
        if snapshot is None:
            raise FileNotFoundError(f"no corpus in {cfg.data_root} to make tuning data from: give the data file")
        return [(title, text) for shard in corpus_shards(wh.con, snapshot)
                for doc_id, title, text in shard_texts(wh.con, snapshot, shard, with_title=True)
                if not is_val(doc_id, cfg.tokenizer.val_fraction) and is_val(f"{doc_id}:self-play", SELF_PLAY_SHARE) == self_play]


def _write_jsonl(folder: Path, name: str, rows: list[dict]) -> Path:
    """Rows as JSONL at folder/name, written under a temporary name and renamed (complete or absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path


@task(name="sft-data", cache_policy=NONE)
def corpus_sft_data(cfg: Config, base: Path) -> Path:
    """SFT rows made from the corpus, as posttrain/sft-corpus-<sha>.jsonl (same corpus, same file):
    `sft.max_examples` chat pairs, then `sft.text_rows` plain-text pieces of other documents (replay
    of the pretraining text, so tuning does not wear the language model down)."""

    documents = corpus_documents(cfg, base, self_play=False)
    rows = pairs_from_warehouse_texts(documents, seed=cfg.sft.seed, limit=cfg.sft.max_examples)
    if cfg.sft.text_rows:  # pieces drawn from the whole corpus (a few long documents would skew it)
        pieces = text_rows(documents)
        random.Random(cfg.sft.seed).shuffle(pieces)
        rows += pieces[:cfg.sft.text_rows]
    if not rows:
        raise ValueError("the corpus has no document long enough to make SFT pairs from: give sft.data")
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]
    path = DataRoot(cfg.data_root).posttrain_data / f"sft-corpus-{digest}.jsonl"
    get_run_logger().info("sft: %d pairs made from the corpus -> %s", len(rows), path)
    return path if path.exists() else _write_jsonl(path.parent, path.name, rows)


@task(name="assistant-data", cache_policy=NONE)
def assistant_data(cfg: Config, refusal_pass: bool = False) -> Path | None:
    """flows.assistant_data's SFT rows (of the first pass, or of the "I don't know" pass) as
    posttrain/sft-assistant-<sha>.jsonl (None when all are off)."""

    rows = assistant_sft_rows(cfg, refusal_pass)
    if not rows:
        return None
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]
    path = DataRoot(cfg.data_root).posttrain_data / f"sft-assistant-{digest}.jsonl"
    get_run_logger().info("sft: %d assistant rows (answer format, facts, identity) -> %s", len(rows), path)
    return path if path.exists() else _write_jsonl(path.parent, path.name, rows)


@task(name="idk-probe", cache_policy=NONE)
def refusal_data(cfg: Config, checkpoint: Path) -> tuple[Path, dict]:
    """Probe the SFT model on the probe split of the facts (several samples each); wrong or
    inconsistent answers become "I don't know" rows, right ones keep their answer. Returns the rows'
    file (posttrain/sft-idk-<id>.jsonl) and the counts."""

    k = cfg.knowledge
    model, tokenizer = load_model_and_tokenizer(checkpoint)
    probed = probe(model, tokenizer, [f for f in knowledge_facts(cfg) if f.split == "probe"], samples=k.probe_samples,
                   temperature=k.probe_temperature, seed=k.seed)
    rows = refusal_rows(probed, k.refusal_repeats, k.seed)
    key = stable_hash([str(Path(checkpoint).resolve()), k.model_dump(mode="json")])[:12]
    counts = {"probed": len(probed), "known": sum(p["known"] for p in probed),
              "refusals": sum(not p["known"] for p in probed)}
    get_run_logger().info("sft: probed %d questions, %d known, %d taught to refuse", counts["probed"], counts["known"],
                          counts["refusals"])
    return _write_jsonl(DataRoot(cfg.data_root).posttrain_data, f"sft-idk-{key}.jsonl", rows), counts


def knowledge_metrics(cfg: Config, checkpoint: Path) -> dict:
    """model.knowledge's scores of a checkpoint on the eval split of the facts (never probed)."""
    model, tokenizer = load_model_and_tokenizer(checkpoint)
    return knowledge_scores(model, tokenizer, [f for f in knowledge_facts(cfg) if f.split == "eval"])


@task(name="knowledge-pairs", cache_policy=NONE)
def knowledge_pair_data(cfg: Config, base: Path) -> Path:
    """DPO rows from the SFT model's own replies to the probe split of the facts (model.knowledge.
    preference_pairs), made once per (SFT checkpoint, settings) as posttrain/dpo-knowledge-<id>.jsonl.
    The eval split is never asked, so the eval stage's fact scores stay held out."""

    d, k = cfg.dpo, cfg.knowledge
    key = stable_hash([str(Path(base).resolve()), d.pair_samples, d.pair_temperature, d.seed,
                       k.model_dump(mode="json")])[:12]
    path = DataRoot(cfg.data_root).posttrain_data / f"dpo-knowledge-{key}.jsonl"
    if path.exists():
        return path
    model, tokenizer = load_model_and_tokenizer(base)
    started = time.perf_counter()
    probe_split = [f for f in knowledge_facts(cfg) if f.split == "probe"]
    rows = preference_pairs(model, tokenizer, probe_split, d.pair_samples, d.pair_temperature, d.seed)
    if not rows:
        raise ValueError(f"the SFT model answered all {len(probe_split)} probe questions as taught in every sample: "
                         "no knowledge pair to learn from; give dpo.data or set dpo.pairs=self-play")
    get_run_logger().info("dpo: %d pairs from the SFT model's replies to %d probe questions in %.1fs -> %s", len(rows),
                          len(probe_split), time.perf_counter() - started, path)
    return _write_jsonl(path.parent, path.name, rows)


@task(name="self-play", cache_policy=NONE)
def self_play_data(cfg: Config, base: Path) -> Path:
    """DPO rows from held-out corpus documents, rejected = the SFT model's samples; made once per
    (SFT checkpoint, settings) as posttrain/dpo-self-play-<id>.jsonl."""
    d = cfg.dpo
    key = stable_hash([str(Path(base).resolve()), d.self_play_pairs, d.self_play_tokens, d.seed,
                       cfg.tokenizer.val_fraction, SELF_PLAY_SHARE])[:12]
    path = DataRoot(cfg.data_root).posttrain_data / f"dpo-self-play-{key}.jsonl"
    if path.exists():
        return path

    logger = get_run_logger()
    model, tokenizer = load_model_and_tokenizer(base)
    texts = [text for _, text in corpus_documents(cfg, base, self_play=True)]
    started = time.perf_counter()
    rows = self_play_pairs(model, tokenizer, texts, d.self_play_pairs, max_new_tokens=d.self_play_tokens, seed=d.seed)
    if not rows:
        raise ValueError(f"no self-play pair could be made from {len(texts)} held-out documents: give dpo.data")
    logger.info("dpo: %d self-play pairs from %d held-out documents in %.1fs -> %s", len(rows), len(texts),
                time.perf_counter() - started, path)
    return _write_jsonl(path.parent, path.name, rows)


class MetricStream:
    """model.posttrain's log callback: each line to MLflow (metrics by step, params, data counts)
    and to the Prefect log; keeps what the summary needs."""

    def __init__(self, stage: str, tracking: Tracking, run_id: str, max_steps: int, out: Path,
                 advance: Callable[[int], None] = lambda n=1: None):
        self.stage, self.tracking, self.run_id, self.max_steps = stage, tracking, run_id, max_steps
        self.advance = advance  # flows.progress: a step line is one step of the stage's progress
        self.offset = 0  # added to the steps of a later pass (SFT's "I don't know" pass) so its curve continues
        self.history: list[dict] = []  # the numbers of every step line, in order
        self.before_file = out / "before.json"  # step 0 happens once: a resumed run reads it back
        self.logger = get_run_logger()
        self.counts: dict = {}
        self.quarantine: list[dict] = []
        self.after: dict = {}
        self.replies: dict[int, list[str]] = {}  # step -> replies to the sample prompts

    def step_zero(self) -> tuple[dict, list[str]]:
        """The metrics and replies before any update (of this run, or of the run that was resumed)."""
        if not self.before_file.exists():
            return {}, []
        line = json.loads(self.before_file.read_text())
        return {k: v for k, v in line.items() if isinstance(v, (int, float)) and k != "step"}, line.get("samples", [])

    def __call__(self, line: dict) -> None:
        event, stage = line.get("event"), self.stage
        if event in ("data", "start") and self.offset:  # a later pass: same model, its data is the first's + more
            self.logger.info("%s (pass from step %d): %s", stage, self.offset, {k: v for k, v in line.items()
                                                                              if k != "quarantine"})
        elif event == "data":
            self.quarantine = line.pop("quarantine", [])
            self.counts = line
            self.tracking.log_metrics(self.run_id, {
                **{f"{stage}/data/{k}": line[k] for k in ("rows", "examples", "quarantined", "truncated", "train",
                                                          "held_out")},
                **{f"{stage}/data/quarantined/{reason}": n for reason, n in line["reasons"].items()}})
            self.logger.info("%s data %s: %d rows, %d examples (%d train, %d held out), %d quarantined %s",
                             stage, line["source"], line["rows"], line["examples"], line["train"], line["held_out"],
                             line["quarantined"], line["reasons"] or "")
        elif event == "start":
            self.tracking.log_params(self.run_id, {k: line[k] for k in ("params", "trainable", "lora", "seq_len", "lr",
                                                                        "device")})
            self.logger.info("%s: %s of %s parameters trained on %s", stage, f"{line['trainable']:,}",
                             f"{line['params']:,}", line["device"])
        elif event is not None:
            self.logger.info("%s: %s", stage, line)
        elif "step" in line:
            step = line["step"] + self.offset
            if line["step"]:
                self.advance(1)
            numbers = {k: v for k, v in line.items() if isinstance(v, (int, float)) and k != "step"}
            self.tracking.log_metrics(self.run_id, numbers, step=step)
            self.history.append({"step": step, **numbers})
            if step == 0:
                _write_jsonl(self.before_file.parent, self.before_file.name, [line])
            self.after = numbers
            if "samples" in line:
                self.replies[step] = line["samples"]
            if step == 0 or step == self.max_steps or step % 10 == 0:
                shown = {k: round(v, 4) for k, v in numbers.items() if "loss" in k or "accuracies" in k or "margins" in k}
                self.logger.info("%s step %d/%d: %s", stage, step, self.max_steps, shown)


def samples_table(prompts: list[str], before: list[str], after: list[str]) -> str:
    """Replies before and after tuning, side by side (Markdown)."""
    cell = lambda text: text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"  # noqa: E731
    rows = [f"| {cell(p)} | {cell(b)} | {cell(a)} |" for p, b, a in zip(prompts, before, after)]
    return "\n".join(["| prompt | before | after |", "|---|---|---|", *rows]) + "\n"


def posttrain_config(stage: str, tune: TuneConfig, base: Path, data: Path | list[Path], out: Path):
    """The stage's section whole (its data-making keys stay here), and what the stage sets."""
    return PosttrainConfig.from_dict({**tune.trainer_values(), "kind": stage, "base": str(base),
                                       "data": [str(d) for d in data] if isinstance(data, list) else str(data), "out": str(out)})


def _train(stage: str, settings, stream: MetricStream) -> dict:
    """Train in this process (model.posttrain), every metric line streamed to MLflow."""
    return (train_sft if stage == "sft" else train_dpo)(settings, log=stream)


TRAIN_TASKS = {stage: task(name=stage, cache_policy=NONE)(_train) for stage in ("sft", "dpo")}  # Prefect tasks sft, dpo


def _tune(cfg: Config, stage: str, base: Path | None, parent_run_id: str | None) -> TuneSummary:
    logger = get_run_logger()
    tune: TuneConfig = getattr(cfg, stage)
    base = Path(base) if base else DataRoot(cfg.data_root).newest_of_stage("pretrain" if stage == "sft" else "sft")
    if tune.data is not None:
        data = Path(tune.data)
        if not data.is_file():
            raise FileNotFoundError(f"{stage}.data: {data} is not a file")
    else:
        data = (corpus_sft_data if stage == "sft" else dpo_pair_maker(cfg))(cfg, base)
    files = [data]
    if stage == "sft":
        files += [path for path in [assistant_data(cfg)] if path is not None]
    settings = posttrain_config(stage, tune, base, files, Path())
    # the effective learning rate too: a changed code default must not reuse a folder tuned at the old one
    probing = stage == "sft" and refusal_pass(cfg)
    key = stable_hash([str(base.resolve()), [file_sha256(f) for f in files], tune.fingerprint(), settings.lr,
                       [cfg.knowledge.model_dump(mode="json"), REFUSAL_PASS_DATA] if probing else None])
    out = DataRoot(cfg.data_root).checkpoint_run(stage, key)
    settings.out = str(out)
    done = DataRoot.done(out)
    if done:
        summary = TuneSummary(**{**json.loads(done.read_text()), "no_op": True})
        for key in ("base", "checkpoint", "data"):
            setattr(summary, key, Path(getattr(summary, key)))
        logger.info("%s: nothing new, %s is done", stage, summary.checkpoint)
        return summary

    tracking = Tracking(cfg.data_root, cfg.experiment)
    with tracking.run(stage, parent_run_id, tags={"prefect.flow_run_id": str(get_run_context().flow_run.id),
                                                  "stage": stage, "base": str(base), "data": str(data)}) as run_id:
        tracking.log_params(run_id, {**flatten(tune.model_dump(mode="json"), f"{stage}."), "base": str(base),
                                     "data": str(data), "data_sha256": file_sha256(data), "checkpoints": str(out),
                                     "more_data": [str(f) for f in files[1:]]})
        steps = tune.max_steps + (cfg.knowledge.second_pass_steps if probing else 0)
        with progress_bar(stage, total=steps, unit="steps") as advance:
            stream = MetricStream(stage, tracking, run_id, tune.max_steps, out, advance)
            started = time.perf_counter()
            TRAIN_TASKS[stage](stage, settings, stream)
            final = step_folder(out, tune.max_steps)
            if probing:
                final = teach_refusals(cfg, settings, final, stream, tracking, run_id)
        seconds = time.perf_counter() - started
        prompts = list(tune.sample_prompts)
        first, before = stream.step_zero()
        after = stream.replies.get(stream.offset + (cfg.knowledge.second_pass_steps if probing else tune.max_steps), [])
        summary = TuneSummary(stage, base, final, data, False, stream.counts,
                              first, stream.after,
                              [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before, after)],
                              seconds, run_id)
        tracking.log_metrics(run_id, {f"{stage}/seconds": seconds})
        tracking.log_text(run_id, samples_table(prompts, before, after), f"{stage}/samples.md")
        tracking.log_text(run_id, "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in stream.quarantine),
                          f"{stage}/quarantine.jsonl")
        record = {k: str(v) if isinstance(v, Path) else v for k, v in summary.__dict__.items() if k != "no_op"}
        _write_jsonl(out, SUMMARY_FILE, [record])  # last: marks the stage done
    return summary


def dpo_pair_maker(cfg: Config):
    """The task that makes DPO pairs when no data is given: knowledge pairs when there are facts."""
    has_facts = cfg.knowledge.facts or cfg.knowledge.data
    return knowledge_pair_data if cfg.dpo.pairs == "knowledge" and has_facts else self_play_data


REFUSAL_PASS_DATA = 2  # how the second pass's rows are made: 2 = probed facts' rows replaced (a new folder)


def refusal_pass(cfg: Config) -> bool:
    return bool(cfg.knowledge.second_pass_steps and (cfg.knowledge.facts or cfg.knowledge.data))


def teach_refusals(cfg: Config, settings, first: Path, stream: MetricStream, tracking: Tracking, run_id: str) -> Path:
    """SFT's second pass: probe the first pass's model, then tune it on the same data plus the
    probe's rows ("I don't know" where it was wrong or unsure), the probed questions' fact rows
    replaced by those (flows.assistant_data.assistant_sft_rows). Its steps continue the first
    pass's curves; `sft/knowledge/{before,after}/*` score both models on the eval split of the facts."""
    probe_file, counts = refusal_data(cfg, first)
    second = copy.copy(settings)
    first_data = settings.data[0]  # the corpus pairs or sft.data; [1] is the first pass's assistant rows
    assistant = assistant_data(cfg, refusal_pass=True)  # None when nothing is left (every taught fact probed)
    second.base = str(first)
    second.data = [first_data, *([str(assistant)] if assistant else []), str(probe_file)]
    second.max_steps, second.out = cfg.knowledge.second_pass_steps, str(Path(settings.out) / "idk")
    second.lr = cfg.knowledge.second_pass_lr or settings.lr
    stream.offset = settings.max_steps
    TRAIN_TASKS["sft"]("sft", second, stream)
    final = step_folder(Path(second.out), second.max_steps)
    scores = {f"sft/knowledge/{when}/{k}": v for when, checkpoint in (("before", first), ("after", final))
              for k, v in knowledge_metrics(cfg, checkpoint).items()}
    tracking.log_metrics(run_id, {**{f"sft/probe/{k}": v for k, v in counts.items()}, **scores})
    get_run_logger().info("sft: \"I don't know\" pass: %s", {k: round(v, 3) for k, v in scores.items()})
    return final


@flow(name="sft", log_prints=False)
def sft_flow(cfg: Config, base: Path | None = None, parent_run_id: str | None = None) -> TuneSummary:
    return _tune(cfg, "sft", base, parent_run_id)


@flow(name="dpo", log_prints=False)
def dpo_flow(cfg: Config, base: Path | None = None, parent_run_id: str | None = None) -> TuneSummary:
    return _tune(cfg, "dpo", base, parent_run_id)


def run_sft(cfg: Config, base: Path | None = None, parent_run_id: str | None = None) -> TuneSummary:
    """SFT of `base` (default: the newest pretraining checkpoint)."""
    return sft_flow(cfg, base, parent_run_id)


def run_dpo(cfg: Config, base: Path | None = None, parent_run_id: str | None = None) -> TuneSummary:
    """DPO of `base` (default: the newest SFT checkpoint) against itself frozen."""
    return dpo_flow(cfg, base, parent_run_id)
