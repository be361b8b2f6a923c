"""What the default `crawl2model run` teaches, on 3 seeds: the issue-23 table of every tuning
stage's held-out numbers, each checked against its goal, with the RL gain's mean and spread.

    .venv/bin/python bench/demo_quality.py                       # ~25 min on 2 cores
    .venv/bin/python bench/demo_quality.py --seeds 0             # the default run alone (~11 min)
    .venv/bin/python bench/demo_quality.py --data-root DIR key=value ...   # overrides pass through

Seed 0 is exactly `crawl2model run` on a fresh data root (bench/out/demo-quality/, removed first):
the bundled sample through register, its wall time per stage measured. Seeds 1 and 2 re-run the
tuning stages (sft, dpo, rl) and eval with `sft.seed`, `dpo.seed` and `rl.seed` set to the seed, on
the same pretrained model and the same held-out items (knowledge.seed stays 0, so the facts, the
identity questions and the problems are the same): the spread is the tuning's, not the data's.

Every number comes from the pipeline's own MLflow runs and summaries:
  identity      eval/identity_rate (goal >= 0.9), eval/other_name_rate (goal 0)
  I don't know  sft/knowledge/{before,after}/untaught_made_up_rate (after <= 0.5 x before),
                .../taught_accuracy (after >= 0.6 and at most 5 points below before)
  RL            rl/accuracy_heldout at step 0 and at the end (gain >= +10 points, >= 256 problems)
  no collapse   val/ppl before and after sft and dpo (each <= +10%); distinct_2 and repetition_rate
                of the base (as a continuation), sft, dpo and rl models on the eval prompts
                (lineage/*: no stage worse than the one before by more than 10% relative)
  DPO           held-out reward accuracy at step 0 and at the end
                (TRL: ties are not accurate, so 0 at step 0) and the SFT model's own preference for the
                chosen side, eval/ref_chosen_preferred: near 0.5 when the pairs are not trivially separable
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("pretrain", "sft", "dpo", "rl")


def tuning_numbers(result, client) -> dict:
    """The issue's numbers of one pipeline result (its nested MLflow runs)."""
    sft = client.get_run(result.sft.mlflow_run_id).data.metrics
    dpo_history = lambda key: [m.value for m in sorted(client.get_metric_history(result.dpo.mlflow_run_id, key),  # noqa: E731
                                                        key=lambda m: m.step)]
    ev = {**result.eval.metrics, **result.eval.lineage}
    numbers = {
        "identity_rate": ev.get("eval/identity_rate"), "other_name_rate": ev.get("eval/other_name_rate"),
        "made_up_before": sft.get("sft/knowledge/before/untaught_made_up_rate"),
        "made_up_after": sft.get("sft/knowledge/after/untaught_made_up_rate"),
        "taught_before": sft.get("sft/knowledge/before/taught_accuracy"),
        "taught_after": sft.get("sft/knowledge/after/taught_accuracy"),
        "eval_hallucination_rate": ev.get("eval/hallucination_rate"), "eval_taught_accuracy": ev.get("eval/taught_accuracy"),
        "rl_before": result.rl.before.get("rl/accuracy_heldout"), "rl_after": result.rl.after.get("rl/accuracy_heldout"),
        "rl_problems": result.rl.counts.get("held_out"),
        "ppl_pretrain": result.sft.before.get("val/ppl"), "ppl_sft": result.sft.after.get("val/ppl"),
        "ppl_dpo": result.dpo.after.get("val/ppl"),
        "dpo_acc": dpo_history("eval/rewards/accuracies"), "dpo_ref_pref": result.dpo.before.get("eval/ref_chosen_preferred"),
        "dpo_pairs": result.dpo.counts.get("examples"), "problem_accuracy": ev.get("eval/problem_accuracy"),
    }
    for stage in STAGES:
        for key in ("distinct_2", "repetition_rate", "ended_rate"):
            numbers[f"{stage}/{key}"] = ev.get(f"lineage/{stage}/{key}")
    return numbers


def checks(n: dict) -> list[tuple[str, str, bool]]:
    """(what, measured, goal met) for the issue's goals."""
    pct = lambda a, b: (b / a - 1) * 100 if a and b else float("nan")  # noqa: E731
    gain = (n["rl_after"] - n["rl_before"]) * 100
    rows = [("identity_rate >= 0.9, other names 0", f"{n['identity_rate']:.3f}, {n['other_name_rate']:.3f}",
             n["identity_rate"] >= 0.9 and n["other_name_rate"] == 0),
            ("made up (never taught) after <= 0.5 x before", f"{n['made_up_before']:.3f} -> {n['made_up_after']:.3f}",
             n["made_up_after"] <= 0.5 * n["made_up_before"]),
            ("taught accuracy >= 0.6, <= 5 points below", f"{n['taught_before']:.3f} -> {n['taught_after']:.3f}",
             n["taught_after"] >= 0.6 and n["taught_after"] >= n["taught_before"] - 0.05),
            (f"rl held-out (+10 points, {n['rl_problems']} problems)",
             f"{n['rl_before']:.3f} -> {n['rl_after']:.3f} ({gain:+.1f})", gain >= 10 and n["rl_problems"] >= 256),
            ("sft val/ppl <= +10%", f"{n['ppl_pretrain']:.0f} -> {n['ppl_sft']:.0f} ({pct(n['ppl_pretrain'], n['ppl_sft']):+.1f}%)",
             pct(n["ppl_pretrain"], n["ppl_sft"]) <= 10),
            ("dpo val/ppl <= +10%", f"{n['ppl_sft']:.0f} -> {n['ppl_dpo']:.0f} ({pct(n['ppl_sft'], n['ppl_dpo']):+.1f}%)",
             pct(n["ppl_sft"], n["ppl_dpo"]) <= 10),
            ("dpo pairs not trivially separable (SFT model prefers chosen ~0.5), reward accuracy rising",
             f"prefers chosen {n['dpo_ref_pref']:.2f}; accuracy " + " -> ".join(f"{a:.2f}" for a in n["dpo_acc"])
             + f" ({n['dpo_pairs']} pairs)", 0.25 <= n["dpo_ref_pref"] <= 0.75 and n["dpo_acc"][-1] > n["dpo_acc"][0])]
    for key, better in (("distinct_2", "higher"), ("repetition_rate", "lower")):
        values = [n[f"{s}/{key}"] for s in STAGES]
        worse = [values[i] < values[i - 1] * 0.9 if better == "higher" else values[i] > max(values[i - 1] * 1.1, 0.05)
                 for i in range(1, len(values))]
        rows.append((f"{key} ({better} is better) pretrain/sft/dpo/rl", " / ".join(f"{v:.3f}" for v in values),
                     not any(worse)))
    return rows


def run_seed(root: Path, seed: int, overrides: list[str], until: str):
    from mlflow import MlflowClient

    from crawl2model.config import load_config
    from flows.pipeline import run_pipeline

    tuning = [f"sft.seed={seed}", f"dpo.seed={seed}", f"rl.seed={seed}"] if seed else []
    cfg = load_config(overrides=[*overrides, *tuning], data_root=root)
    started = time.perf_counter()
    result = run_pipeline(None, cfg, until=until, show_progress=False)
    seconds = time.perf_counter() - started
    return tuning_numbers(result, MlflowClient(f"sqlite:///{root / 'mlflow.db'}")), result.stage_seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data-root", type=Path, default=Path(__file__).parent / "out" / "demo-quality")
    parser.add_argument("--keep", action="store_true", help="reuse the data root (its finished stages are no-ops)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    if not args.keep:
        shutil.rmtree(args.data_root, ignore_errors=True)
    from crawl2model.runtime import prepare_environment

    prepare_environment(args.data_root)  # before prefect and mlflow are imported
    table, gains = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        numbers, stage_seconds, seconds = run_seed(args.data_root, seed, args.overrides, "register" if seed == 0 else "eval")
        if seed == 0:
            print(f"\ndefault run, sample .. register: {seconds / 60:.1f} min; per stage (s): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in stage_seconds.items()), flush=True)
        print(f"\nseed {seed}", flush=True)
        for what, measured, ok in checks(numbers):
            print(f"  {'ok  ' if ok else 'MISS'} {what:55s} {measured}", flush=True)
        table.append((seed, numbers))
        gains.append((numbers["rl_after"] - numbers["rl_before"]) * 100)
    if len(gains) > 1:
        print(f"\nRL gain over {len(gains)} seeds: mean {statistics.mean(gains):+.1f} points, "
              f"min {min(gains):+.1f}, max {max(gains):+.1f} (stdev {statistics.stdev(gains):.1f})")
    met = sum(ok for _, n in table for _, _, ok in checks(n))
    print(f"{met} of {sum(len(checks(n)) for _, n in table)} goals met")


if __name__ == "__main__":
    main()
