"""The export stage: turn a checkpoint into files the ecosystem runs and measure every variant.

    crawl2model export [--checkpoint DIR] [--format hf,gguf,torch] [--quant f16,q8_0,q4_k_m,int8,int4]
    crawl2model run                               # ends with the exported variants
    from flows.export import run_export           # environment prepared first
    summary = run_export(cfg, checkpoint)          # default: the newest checkpoint

Writes `exports/<run>-<step>-<config>/`: `hf/` (transformers folder), `gguf/model-<type>.gguf`
each with an Ollama `.Modelfile`, `torch/int8|int4/` (crawl2model's own quantized inference),
and `variants.json` + `table.md`, written last, so an export folder holding them is complete and a
re-run is a no-op. The Prefect tasks `build-variants` and `measure-variants` do the work; the
MLflow nested run `quantize` gets metrics `quant/<variant>/<metric>` (size_mb, bits_per_weight,
val_loss, ppl, delta_ppl_pct, tokens_per_s), the table, the GGUF files and Modelfiles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import get_run_context

from crawl2model.config import Config, ExportConfig
from crawl2model.layout import DataRoot
from flows.tracking import Tracking, flatten
from model.variants import Variant, build_variants, measure_variants, val_windows, variant_table


@dataclass
class ExportSummary:
    out: Path
    checkpoint: Path
    variants: list[dict]
    table: str
    no_op: bool
    mlflow_run_id: str | None = None


def export_folder(root: Path, checkpoint: Path, cfg: ExportConfig) -> Path:
    return DataRoot(root).export(checkpoint, cfg.fingerprint())


@task(name="build-variants", cache_policy=NONE)
def build_task(checkpoint: Path, out: Path, cfg: ExportConfig) -> list[Variant]:
    logger = get_run_logger()
    return build_variants(checkpoint, out, cfg.formats, cfg.gguf_quants, cfg.torch_quants, cfg.group_size,
                          log=logger.info)


@task(name="measure-variants", cache_policy=NONE)
def measure_task(variants: list[Variant], checkpoint: Path, cfg: ExportConfig) -> list[Variant]:
    logger = get_run_logger()
    windows = val_windows(checkpoint, cfg.eval_windows)
    logger.info("measure: %d val windows of %d tokens", len(windows), len(windows[0]))
    return measure_variants(variants, checkpoint, windows, cfg.gen_tokens, cfg.threads, log=logger.info)


def variant_metrics(variants: list[dict]) -> dict[str, float]:
    ref = next((v["ppl"] for v in variants if v["name"] == "torch-fp32" and v["ppl"]), None)
    metrics = {}
    for v in variants:
        name = v["name"]
        metrics[f"quant/{name}/size_mb"] = v["size_bytes"] / 1e6
        metrics[f"quant/{name}/bits_per_weight"] = v["bits_per_weight"]
        for key in ("val_loss", "ppl", "tokens_per_s"):
            if v[key] is not None:
                metrics[f"quant/{name}/{key}"] = v[key]
        if ref and v["ppl"]:
            metrics[f"quant/{name}/delta_ppl_pct"] = 100 * (v["ppl"] / ref - 1)
    return metrics


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@flow(name="export", log_prints=False)
def export_flow(cfg: Config, checkpoint: Path | None = None, parent_run_id: str | None = None) -> ExportSummary:
    logger = get_run_logger()
    checkpoint = Path(checkpoint) if checkpoint else DataRoot(cfg.data_root).newest_checkpoint()
    out = export_folder(cfg.data_root, checkpoint, cfg.export)
    if (out / "variants.json").exists():
        variants = json.loads((out / "variants.json").read_text())
        table = (out / "table.md").read_text()
        logger.info("export: nothing new, %s is done\n%s", out, table)
        return ExportSummary(out, checkpoint, variants, table, True)

    tracking = Tracking(cfg.data_root, cfg.experiment)
    with tracking.run("quantize", parent_run_id, tags={"prefect.flow_run_id": str(get_run_context().flow_run.id),
                                                       "stage": "export", "checkpoint": str(checkpoint)}) as run_id:
        tracking.log_params(run_id, {**flatten(cfg.export.model_dump(mode="json"), "export."),
                                     "checkpoint": str(checkpoint), "out": str(out)})
        built = build_task(checkpoint, out, cfg.export)
        measured = measure_task(built, checkpoint, cfg.export)
        variants = [v.to_dict() for v in measured]
        table = variant_table(measured)
        logger.info("export: %d variants in %s\n%s", len(variants), out, table)
        tracking.log_metrics(run_id, variant_metrics(variants))
        _write_atomic(out / "table.md", table + "\n")
        _write_atomic(out / "variants.json", json.dumps(variants, indent=1))  # last: marks the folder complete
        tracking.log_files(run_id, [out / "table.md", out / "variants.json"], "quantize")
        tracking.log_files(run_id, sorted((out / "gguf").glob("*")) if (out / "gguf").exists() else [], "gguf")
        if (out / "hf").exists():
            tracking.log_files(run_id, sorted(p for p in (out / "hf").iterdir() if p.is_file()), "hf")
    return ExportSummary(out, checkpoint, variants, table, False, run_id)


def run_export(cfg: Config, checkpoint: Path | None = None, parent_run_id: str | None = None) -> ExportSummary:
    return export_flow(cfg, checkpoint, parent_run_id)
