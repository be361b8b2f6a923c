"""The pipeline run's summary: one Markdown page with what every stage did and where its output
is (seconds per stage, the data funnel, training curves' end points, tuning before/after, eval
and audit numbers, the variant table, the registry decision). Logged as `summary.md` on the
MLflow parent run and as the Prefect artifact `crawl2model-summary` of the flow run.

    from flows.summary import summary_markdown, publish_summary
    publish_summary(result, cfg, tracking)      # at the end of flows.pipeline.pipeline_flow
"""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact

from flows.report import funnel_markdown
from warehouse import Warehouse


def _stage_rows(result) -> list[str]:
    rows = ["| stage | seconds | result |", "|---|---:|---|"]
    done = lambda s: "nothing new" if s.no_op else "ran"  # noqa: E731
    facts = {"curate": result.curate and f"{done(result.curate)}: {result.curate.documents} documents in snapshot "
                                          f"{result.curate.snapshot}",
             "tokenizer": result.tokenizer and f"{done(result.tokenizer)}: {result.tokenizer.manifest}",
             "pretrain": result.pretrain and f"{done(result.pretrain)}: {result.pretrain.checkpoint}",
             "sft": result.sft and f"{done(result.sft)}: {result.sft.checkpoint}",
             "dpo": result.dpo and f"{done(result.dpo)}: {result.dpo.checkpoint}",
             "rl": result.rl and f"{done(result.rl)}: {result.rl.checkpoint}",
             "eval": result.eval and f"{done(result.eval)}: {result.eval.eval_set}",
             "export": result.export and f"{done(result.export)}: {result.export.out}",
             "register": result.register and f"{result.register.name} version {result.register.version}: "
                                             f"{result.register.decision}"}
    for stage, seconds in result.stage_seconds.items():
        rows.append(f"| {stage} | {seconds:.1f} | {facts.get(stage) or ''} |")
    rows.append(f"| **total** | {result.seconds:.1f} | |")
    return rows


def _moves(summary, keys: list[str]) -> str:
    b, a = summary.before, summary.after
    return "; ".join(f"{k} {b[k]:.4g} -> {a[k]:.4g}" for k in keys if k in b and k in a)


def summary_markdown(result, funnel: list[dict]) -> str:
    parts = [f"# crawl2model run {result.prefect_flow_run_id}", "", *_stage_rows(result), ""]
    if funnel:
        parts += ["## Data funnel", "", funnel_markdown(funnel)]
    if result.pretrain:
        m = result.pretrain.metrics
        parts += ["## Pretraining", "", f"val loss {m.get('val/loss', float('nan')):.4f} vs unigram baseline "
                  f"{result.pretrain.unigram_val_loss:.4f} at step {m.get('step', '?')}", ""]
    for tuned, keys in ((result.sft, ["sft/eval_loss", "val/ppl"]),
                        (result.dpo, ["eval/rewards/accuracies", "eval/rewards/margins", "val/ppl"]),
                        (result.rl, ["rl/accuracy_heldout", "rl/reward_mean"])):
        if tuned and tuned.counts:
            parts += [f"## {tuned.stage.upper()}", "", f"{tuned.counts.get('examples', tuned.counts.get('train', 0))} "
                      f"examples ({tuned.counts.get('quarantined', 0)} quarantined); {_moves(tuned, keys)}", ""]
    if result.eval:
        parts += ["## Eval and audits", "", *[f"- {k}: {v:.4g}" for k, v in result.eval.metrics.items()], ""]
    if result.export:
        parts += ["## Exported variants", "", result.export.table, ""]
    if result.register:
        parts += ["## Registry", "", f"{result.register.name} version {result.register.version}: {result.register.decision}", ""]
    return "\n".join(parts)


def publish_summary(result, cfg, tracking) -> str:
    funnel = []
    if result.curate and (cfg.data_root / "warehouse.duckdb").exists():
        with Warehouse.open(cfg.data_root, read_only=True) as wh:
            funnel = wh.funnel(result.curate.snapshot)
    text = summary_markdown(result, funnel)
    tracking.log_text(result.mlflow_run_id, text, "summary.md")
    create_markdown_artifact(text, key="crawl2model-summary", description="what each stage did, and where to look")
    return text
