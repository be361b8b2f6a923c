"""model/ stands alone (DESIGN.md): `python -m model.train` and `python -m model.generate` run with
every other part of crawl2model, Prefect and MLflow made unimportable, and the registered pyfunc
ships `model/` only."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from model.sampling import generate_text
from tests.test_posttrain import world  # noqa: F401  (a fixture: tokenizer, shards with their manifest)

REPO = Path(__file__).resolve().parents[1]
# Runs a module as `python -m` would, after an import hook that refuses the pipeline's parts.
ALONE = textwrap.dedent("""
    import runpy, sys
    BLOCKED = {"flows", "tasks", "warehouse", "crawl2model", "prefect", "mlflow"}
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"model/ imported {name}")
    sys.meta_path.insert(0, Refuse())
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")


def alone(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ALONE, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_model_trains_and_generates_without_the_pipeline(world, tmp_path):  # noqa: F811
    config = {"preset": "tiny", "model_overrides": {"n_layers": 1}, "micro_batch": 2, "tokens_per_step": 128, "seq_len": 32,
              "warmup_steps": 1, "eval_every": 3, "eval_batches": 1, "checkpoint_every": 3}
    trained = alone("model.train", "--manifest", str(world["manifest"]), "--out", str(tmp_path / "ckpt"),
                    "--max-steps", "3", "--config-json", json.dumps(config))
    assert trained.returncode == 0, trained.stderr[-3000:]
    losses = [json.loads(line) for line in trained.stdout.splitlines() if line.startswith("{")]
    assert [m["step"] for m in losses if "train/loss" in m] == [1, 2, 3]
    checkpoint = tmp_path / "ckpt" / "step-000003"
    assert (checkpoint / "model.safetensors").exists()

    generated = alone("model.generate", str(checkpoint), "The ", "--max-new-tokens", "8", "--temperature", "0")
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert generated.stdout.rstrip("\n") == generate_text(checkpoint, "The ", 8, temperature=0.0)


def test_a_pipeline_import_in_model_is_refused_by_the_hook():
    """The hook above really refuses (else the test before would prove nothing)."""
    refused = alone("tasks.bpe")
    assert refused.returncode != 0 and "model/ imported tasks" in refused.stderr
