"""The end-to-end pipeline flow: one Prefect flow run and one MLflow parent run per pipeline run.

    crawl2model run                          # the bundled sample, as far as the pipeline goes
    crawl2model run --input crawl/ --until curate
    from flows.pipeline import run_pipeline  # environment prepared (crawl2model.runtime) first
    result = run_pipeline(["crawl/"], cfg, until="curate")

Stage names are the same everywhere (flow and task names, MLflow runs, metric prefixes,
`stage_stats`, `--until`). Stages run in order up to `until`; stages of later issues are named
here already so `--until` means the same thing in every version.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from prefect import flow
from prefect.context import get_run_context

from crawl2model.config import Config
from crawl2model.layout import DataRoot
from crawl2model.runtime import prefect_api
from flows.curate import CurateSummary, run_curate
from flows.dedup import DedupSummary, run_dedup
from flows.evaluate import EvalSummary, run_eval
from flows.export import ExportSummary, run_export
from flows.scrub import ScrubSummary, run_scrub
from flows.summary import publish_summary
from flows.posttrain import TuneSummary, run_dpo, run_sft
from flows.pretrain import PretrainSummary, run_pretrain
from flows.progress import heartbeat
from flows.register import RegisterSummary, run_register
from flows.rl import run_rl
from flows.sample import prepare_sample
from flows.tokenize_corpus import TokenizerSummary, run_tokenizer
from flows.tracking import Tracking
from tasks.canaries import make_canaries, plant_canaries
from warehouse import Warehouse

STAGES = ("curate", "dedup", "pii", "tokenizer", "pretrain", "sft", "dpo", "rl", "eval", "export", "register")
AVAILABLE = STAGES


class StageNotAvailable(ValueError):
    pass


@dataclass
class PipelineResult:
    mlflow_run_id: str
    prefect_flow_run_id: str
    inputs: list[str]
    curate: CurateSummary | None = None
    dedup: list[DedupSummary] = field(default_factory=list)  # one per snapshot processed
    pii: list[ScrubSummary] = field(default_factory=list)
    tokenizer: TokenizerSummary | None = None
    pretrain: PretrainSummary | None = None
    sft: TuneSummary | None = None
    dpo: TuneSummary | None = None
    rl: TuneSummary | None = None
    eval: EvalSummary | None = None
    export: ExportSummary | None = None
    register: RegisterSummary | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)


def check_until(until: str) -> str:
    if until not in STAGES:
        raise StageNotAvailable(f"unknown stage {until!r}; stages in order: {', '.join(STAGES)}")
    if until not in AVAILABLE:
        raise StageNotAvailable(f"stage {until!r} is not built yet in this version; available: {', '.join(AVAILABLE)}")
    return until


def pending(cfg: Config, stage: str, config_hash: str, newest: str) -> list[str]:
    """The snapshots `stage` still has to process, oldest first; at least `newest` (a no-op
    there when it is done, which the run then reports)."""
    with Warehouse.open(cfg.data_root, read_only=True) as wh:
        todo = wh.pending_snapshots(stage, config_hash)
    return todo if newest in todo else todo + [newest]


def reaches(until: str, stage: str) -> bool:
    """Whether a run `--until until` includes `stage`."""
    return STAGES.index(stage) <= STAGES.index(until)


@flow(name="crawl2model-pipeline", log_prints=False)
def pipeline_flow(inputs: list[str] | None, cfg: Config, until: str = AVAILABLE[-1],
                  show_progress: bool = True, report: Callable | None = None) -> PipelineResult:
    """`report(stage, None)` as a stage starts and `report(stage, summary)` as it ends (the CLI prints
    them then, so a log shows the run as it goes); stage "sample" is the bundled sample being made."""
    started = time.perf_counter()
    report = report or (lambda name, summary: None)
    flow_run_id = str(get_run_context().flow_run.id)
    tracking = Tracking(cfg.data_root, cfg.experiment)
    with tracking.run("pipeline", tags={"prefect.flow_run_id": flow_run_id, "until": until}) as parent:
        if not inputs:
            report("sample", None)
            with heartbeat("sample", enabled=show_progress):
                inputs = [str(prepare_sample(cfg, show_progress=show_progress))]
        if cfg.audit.canaries:  # planted in a copy of the input: the originals stay as they are
            inputs = plant_canaries(list(inputs), make_canaries(cfg.audit.canaries, cfg.audit.canary_seed),
                                    DataRoot(cfg.data_root).canaries)
        tracking.log_params(parent, {"inputs": inputs, "until": until})
        result = PipelineResult(parent, flow_run_id, list(inputs))

        def stage(name: str, run, *args, **kwargs):
            """run(*args) as stage `name`, its wall time added to result.stage_seconds, reported."""
            begun = time.perf_counter()
            report(name, None)
            try:
                with heartbeat(name, enabled=show_progress):
                    summary = run(*args, parent_run_id=parent, **kwargs)
            finally:
                result.stage_seconds[name] = result.stage_seconds.get(name, 0.0) + time.perf_counter() - begun
            report(name, summary)
            return summary

        result.curate = stage("curate", run_curate, list(inputs), cfg, show_progress=show_progress)
        # The snapshot stages catch up on every snapshot they have not processed with this config,
        # oldest first (each is deduplicated against the ones before it): a snapshot curated by an
        # earlier `--until curate` run is deduplicated and scrubbed now, not skipped.
        if reaches(until, "dedup"):
            result.dedup = [stage("dedup", run_dedup, cfg, snapshot, show_progress=show_progress)
                            for snapshot in pending(cfg, "dedup", cfg.dedup.fingerprint(), result.curate.snapshot)]
        if reaches(until, "pii"):
            result.pii = [stage("pii", run_scrub, cfg, snapshot, show_progress=show_progress)
                          for snapshot in pending(cfg, "pii", cfg.pii.fingerprint(), result.curate.snapshot)]
        if reaches(until, "tokenizer"):
            result.tokenizer = stage("tokenizer", run_tokenizer, cfg, result.curate.snapshot, show_progress=show_progress)
        if reaches(until, "pretrain"):
            result.pretrain = stage("pretrain", run_pretrain, cfg, result.tokenizer.manifest)
        if reaches(until, "sft"):
            result.sft = stage("sft", run_sft, cfg, result.pretrain.checkpoint)
        if reaches(until, "dpo"):
            result.dpo = stage("dpo", run_dpo, cfg, result.sft.checkpoint)
        if reaches(until, "rl"):
            result.rl = stage("rl", run_rl, cfg, result.dpo.checkpoint)
        tuned = result.rl.checkpoint if result.rl else None  # the model eval, export and register take
        if reaches(until, "eval"):
            result.eval = stage("eval", run_eval, cfg, tuned)
        if reaches(until, "export"):
            result.export = stage("export", run_export, cfg, tuned)
        if reaches(until, "register"):
            result.register = stage("register", run_register, cfg, tuned, result.eval.metrics,
                                    result.eval.eval_set, result.export.out)
        result.seconds = time.perf_counter() - started
        tracking.log_metrics(parent, {"pipeline/seconds": result.seconds,
                                      **{f"pipeline/seconds/{k}": v for k, v in result.stage_seconds.items()}})
        publish_summary(result, cfg, tracking)
        return result


def in_session(cfg: Config, fn, *args, **kwargs):
    """Call a flow against one shared Prefect API (see crawl2model.runtime), the MLflow store ready."""
    # Creating or migrating the MLflow store takes seconds; do it while Prefect's server starts.
    # Both import SQLAlchemy: import them here first, as concurrent first imports can deadlock.
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import prefect.server.api.server  # noqa: F401

    warm_up = threading.Thread(target=Tracking, args=(cfg.data_root, cfg.experiment), daemon=True)
    warm_up.start()
    with prefect_api():
        warm_up.join()
        return fn(*args, **kwargs)


def run_pipeline(inputs: list[str] | None, cfg: Config, until: str = AVAILABLE[-1],
                 show_progress: bool = True, report: Callable | None = None) -> PipelineResult:
    """The pipeline flow, up to `until`; `report` as in pipeline_flow."""
    check_until(until)
    return in_session(cfg, pipeline_flow, inputs, cfg, until, show_progress, report)
