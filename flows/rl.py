"""The rl stage: GRPO on problems a program can check (model.grpo, model.verifiable), starting
from the DPO model; the tuned model goes on to eval, export and register.

    crawl2model rl [--base CKPT] [rl.max_steps=40 rl.group_size=8 ...]
    crawl2model run                                  # ... -> dpo -> rl -> eval -> export -> register
    from flows.rl import run_rl                      # environment prepared first
    summary = run_rl(cfg)                            # base: the newest DPO checkpoint

Problems: `rl.families` (built in: category, the default, whose held-out problems are asked in
phrasings never trained on; arithmetic and word problems, split by a hash of each problem: never
overlapping) or `rl.data` (JSONL {"prompt", "answer"}, a hashed share
held out; flows.assistant_data). Checkpoints go to `checkpoints/rl-<id>/step-NNNNNN/` (id: the
base, the settings and the problems), `summary.json` last: a finished stage is a no-op on
re-run, a killed one resumes. MLflow nested run `rl`: `rl/reward_mean`, `rl/reward_std`, `rl/kl`,
`rl/completion_length`, `rl/clip_ratio` per step, `rl/accuracy_heldout` at step 0, every
`rl.eval_every` steps and at the end; its curve as `rl/accuracy_heldout.png`; replies to the
sample prompts before and after as `rl/samples.md`. `rl.max_steps=0` skips the stage.

Each GRPO step also replays `rl.replay_rows` packed rows of the SFT data of the base's lineage
(the files its SFT model was tuned on) at `rl.replay_coef` (model.grpo: PPO-ptx): measured on the
demo's model, GRPO alone lifted the category problems 30% -> 43% and dropped its identity rate
0.98 -> 0.35 and its "I don't know" with it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import get_run_context

from crawl2model.config import Config, stable_hash
from crawl2model.layout import SUMMARY_FILE, DataRoot
from flows.assistant_data import USER_PROBLEMS_HELD_OUT, problem_split
from flows.evaluate import lineage
from flows.posttrain import MetricStream, TuneSummary, _write_jsonl, samples_table
from flows.progress import progress_bar
from flows.tracking import Tracking, flatten
from model.checkpoint import step_folder
from model.grpo import RlConfig, run_rl as run_grpo  # run_rl here is the flow
from model.posttrain import data_files
from warehouse.files import file_sha256


def accuracy_curve(history: list[dict]):
    """Held-out accuracy by step (a matplotlib figure)."""
    import matplotlib  # deferred: ~1 s, and only where a figure is drawn (headless: Agg first)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(h["step"], h["rl/accuracy_heldout"]) for h in history if "rl/accuracy_heldout" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if points:
        ax.plot(*zip(*points), "o-")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("rl: held-out problems solved (greedy)")
    fig.tight_layout()
    return fig


def sft_data_of(checkpoint: Path) -> list[str]:
    """The data files the SFT model in `checkpoint`'s lineage was tuned on (its last pass); [] when none."""
    sft = lineage(checkpoint).get("sft")
    data = json.loads((sft / "meta.json").read_text()).get("posttrain", {}).get("data", []) if sft else []
    return [f for f in data_files(data) if Path(f).is_file()]


def rl_settings(cfg: Config, base: Path, out: Path):
    """The `rl` section whole, and what the stage sets: paths, the SFT data to replay, the eval
    stage's share of the user's problems, two held-out prompts answered before and after."""
    samples = [p.prompt for p in problem_split(cfg, "heldout", 2)]  # replies before and after, side by side
    return RlConfig.from_dict({**cfg.rl.trainer_values(), "base": str(base), "out": str(out),
                               "replay_data": sft_data_of(base), "held_out_fraction": USER_PROBLEMS_HELD_OUT,
                               "sample_prompts": samples})


@task(name="grpo", cache_policy=NONE)
def grpo(settings, stream: MetricStream) -> dict:
    """GRPO in this process, every metric line streamed to MLflow."""
    return run_grpo(settings, log=stream)


@flow(name="rl", log_prints=False)
def rl_flow(cfg: Config, base: Path | None = None, parent_run_id: str | None = None) -> TuneSummary:
    logger = get_run_logger()
    base = Path(base) if base else DataRoot(cfg.data_root).newest_of_stage("dpo")
    if cfg.rl.max_steps == 0:
        logger.info("rl: rl.max_steps=0, skipped; %s goes on", base)
        return TuneSummary("rl", base, base, Path(), True, {}, {}, {})
    data_sha = file_sha256(cfg.rl.data) if cfg.rl.data else None
    key = stable_hash([str(base.resolve()), cfg.rl.fingerprint(), data_sha])
    out = DataRoot(cfg.data_root).checkpoint_run("rl", key)
    done = DataRoot.done(out)
    if done:
        record = json.loads(done.read_text())
        summary = TuneSummary(**{**record, "no_op": True})
        for field in ("base", "checkpoint", "data"):
            setattr(summary, field, Path(getattr(summary, field)))
        logger.info("rl: nothing new, %s is done", summary.checkpoint)
        return summary

    settings = rl_settings(cfg, base, out)
    tracking = Tracking(cfg.data_root, cfg.experiment)
    with tracking.run("rl", parent_run_id, tags={"prefect.flow_run_id": str(get_run_context().flow_run.id),
                                                 "stage": "rl", "base": str(base)}) as run_id:
        tracking.log_params(run_id, {**flatten(cfg.rl.model_dump(mode="json"), "rl."), "base": str(base),
                                     "checkpoints": str(out)})
        started = time.perf_counter()
        with progress_bar("rl", total=cfg.rl.max_steps, unit="steps") as advance:
            stream = MetricStream("rl", tracking, run_id, cfg.rl.max_steps, out, advance)
            grpo(settings, stream)
        seconds = time.perf_counter() - started
        first, before = stream.step_zero()
        after = stream.replies.get(cfg.rl.max_steps, [])
        prompts = list(settings.sample_prompts)
        summary = TuneSummary("rl", base, step_folder(out, cfg.rl.max_steps), Path(cfg.rl.data or ""), False,
                              stream.counts, first, stream.after,
                              [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before, after)],
                              seconds, run_id)
        tracking.log_metrics(run_id, {"rl/seconds": seconds})
        tracking.log_figure(run_id, accuracy_curve(stream.history), "rl/accuracy_heldout.png")
        tracking.log_text(run_id, samples_table(prompts, before, after), "rl/samples.md")
        logger.info("rl: held-out accuracy %.3f -> %.3f in %.0fs", first.get("rl/accuracy_heldout", float("nan")),
                    stream.after.get("rl/accuracy_heldout", float("nan")), seconds)
        record = {k: str(v) if isinstance(v, Path) else v for k, v in summary.__dict__.items() if k != "no_op"}
        _write_jsonl(out, SUMMARY_FILE, [record])  # last: marks the stage done
    return summary


def run_rl(cfg: Config, base: Path | None = None, parent_run_id: str | None = None) -> TuneSummary:
    """GRPO of `base` (default: the newest DPO checkpoint) on verifiable problems."""
    return rl_flow(cfg, base, parent_run_id)
