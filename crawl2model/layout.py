"""The data-root layout, in one place: where each stage's files live, and how "latest" and
"done" are found. Everyone asks this module; nobody else joins names under the data root.

    from crawl2model.layout import DataRoot
    root = DataRoot(cfg.data_root)
    root.latest("shards")                  # the newest shard folder (shards/latest names it)
    root.checkpoint_run("sft", key)        # checkpoints/sft-<key[:12]>/
    root.newest_of_stage("dpo")            # the newest finished checkpoint a stage wrote
    root.done(out)                         # <out>/summary.json (written last): a finished tuning run, or None

    <data root>/
      warehouse.duckdb, parquet/           the warehouse (warehouse/ reads and writes these)
      sample/, crawl/                      the bundled sample site and the crawl cache
      tokenizer/<id>/, tokenizer/latest    tokenizers; `latest` holds the newest one's folder name
      shards/<id>/manifest.json, shards/latest
      checkpoints/<run>/step-NNNNNN/       one folder a training run: pretraining <hash>, sft-, dpo-,
                                           rl-<hash>, imported-<name>; the trainers name the step folders
                                           (model.checkpoint.step_folder), complete or absent
      posttrain/                           tuning data made from the corpus (JSONL)
      eval/<id>/                           eval sets
      exports/<checkpoint>-<hash>/         HF folder, GGUF files, torch int8/int4
      registry/<name>-v<version>/          registered versions downloaded for eval and chat
      audit/canaries/                      planted PII canaries (audit.canaries)
      prefect/, mlflow.db, mlartifacts/    the embedded Prefect and MLflow (crawl2model.runtime)
      logs/, mlflow-auth.db, mlflow-auth.ini   `crawl2model ui`: server logs, MLflow's basic-auth store
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SUMMARY_FILE = "summary.json"  # written last into a tuning run's folder: the run is finished
TUNED_STAGES = ("rl", "dpo", "sft")  # the last tuning stage first: the newest tuned model is its


def _meta(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "meta.json").read_text())


@dataclass(frozen=True)
class DataRoot:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # --- tokenizer and shards: folders named by their config, `latest` pointing at the newest
    def folder(self, kind: str, name: str) -> Path:
        """tokenizer/<name> or shards/<name>."""
        return self.path / kind / name

    def latest(self, kind: str) -> Path:
        """The newest tokenizer or shard folder (`kind`: tokenizer, shards)."""
        pointer = self.path / kind / "latest"
        if not pointer.exists():
            raise FileNotFoundError(f"no {kind} yet under {self.path}: run `crawl2model tokenizer train` "
                                    f"(or `crawl2model run --until tokenizer`) first")
        return self.path / kind / pointer.read_text().strip()

    def point_latest(self, kind: str, folder: Path) -> None:
        """Make `folder` the latest of its kind (atomically: readers see the old or the new one)."""
        pointer = self.path / kind / "latest"
        tmp = pointer.with_name("latest.tmp")
        tmp.write_text(Path(folder).name)
        tmp.replace(pointer)

    # --- checkpoints
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_run(self, stage: str, key: str) -> Path:
        """The folder of one training run: checkpoints/<stage>-<key[:12]> (pretraining: <key[:12]>)."""
        return self.checkpoints / (key[:12] if stage == "pretrain" else f"{stage}-{key[:12]}")

    def imported_run(self, name: str) -> Path:
        """The run folder a Hugging Face folder is imported into (as its step 0)."""
        return self.checkpoints / f"imported-{name}"

    def finished_checkpoints(self) -> list[Path]:
        return [p for p in self.checkpoints.glob("*/step-*") if ".tmp-" not in p.name and (p / "meta.json").exists()]

    def newest_checkpoint(self) -> Path:
        """The checkpoint written last, of any stage."""
        found = self.finished_checkpoints()
        if not found:
            raise FileNotFoundError(f"no checkpoint under {self.checkpoints}: run `crawl2model train` first")
        return max(found, key=lambda p: (p / "meta.json").stat().st_mtime)

    def newest_of_stage(self, stage: str) -> Path:
        """The newest finished checkpoint a stage wrote ("pretrain" checkpoints carry no "kind")."""
        found = [p for p in self.finished_checkpoints() if _meta(p).get("kind", "pretrain") == stage]
        if not found:
            raise FileNotFoundError(f"no {stage} checkpoint under {self.checkpoints}: run "
                                    f"`crawl2model {'train' if stage == 'pretrain' else stage}` first, or give --base")
        return max(found, key=lambda p: (p / "meta.json").stat().st_mtime)

    def newest_tuned(self, stages: tuple[str, ...] = TUNED_STAGES) -> Path:
        """The newest checkpoint of the last of `stages` that has one (default: rl, else dpo, else sft)."""
        for stage in stages:
            try:
                return self.newest_of_stage(stage)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"no {' or '.join(stages)} checkpoint under {self.checkpoints}: run "
                                "`crawl2model run` first")

    @staticmethod
    def done(run: Path) -> Path | None:
        """A tuning run's summary.json, written last: the run is finished (else None)."""
        summary = Path(run) / SUMMARY_FILE
        return summary if summary.exists() else None

    # --- everything else
    @property
    def posttrain_data(self) -> Path:
        return self.path / "posttrain"

    def eval_set(self, key: str) -> Path:
        return self.path / "eval" / key[:12]

    def export(self, checkpoint: Path, key: str) -> Path:
        return self.path / "exports" / f"{checkpoint.parent.name}-{checkpoint.name}-{key[:8]}"

    def registered(self, name: str, version: str) -> Path:
        """Where a registered version is downloaded for eval and chat."""
        return self.path / "registry" / f"{name}-v{version}"

    @property
    def canaries(self) -> Path:
        return self.path / "audit" / "canaries"

    @property
    def sample(self) -> Path:
        return self.path / "sample"

    @property
    def crawl_cache(self) -> Path:
        return self.path / "crawl"

    # --- the embedded Prefect and MLflow (crawl2model.runtime points them here)
    @property
    def prefect_home(self) -> Path:
        return self.path / "prefect"

    @property
    def mlflow_db(self) -> Path:
        return self.path / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.path / "mlartifacts"

    @property
    def server_logs(self) -> Path:
        """`crawl2model ui`: the servers' logs, and MLflow's basic-auth user store and config."""
        return self.path / "logs"

    @property
    def mlflow_auth_db(self) -> Path:
        return self.path / "mlflow-auth.db"

    @property
    def mlflow_auth_config(self) -> Path:
        return self.path / "mlflow-auth.ini"
