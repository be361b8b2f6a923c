"""The `crawl2model` command as a user runs it: real processes, a real data root.

`crawl2model run` end to end on a small bundled sample (built, served on 127.0.0.1, crawled,
curated), a re-run that changes nothing, the warehouse commands, and the errors a user can fix
reported before any work (exit code 2, naming what is wrong).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from tests.test_dedup_flow import neardup_docs, write_pages  # at import time: it imports tests.conftest

pytestmark = pytest.mark.slow


def c2m(*args, root, env_extra=None, timeout=600):
    env = dict(os.environ, C2M_HOME=str(root), COLUMNS="200", **(env_extra or {}))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


# a small sample and a tiny model keep the test short; the defaults take minutes
SMALL = ("sample.max_mb=0.4", "sample.packages=[sklearn,scipy]", "pretrain.preset=tiny", "pretrain.max_steps=4",
         "pretrain.eval_every=2", "pretrain.micro_batch=4", "pretrain.tokens_per_step=512",
         "sft.max_steps=3", "sft.max_examples=64", "sft.eval_batches=2", "dpo.max_steps=2", "dpo.self_play_pairs=8",
         "dpo.self_play_tokens=8", "dpo.eval_batches=2", "eval.val_windows=4", "audit.regurgitation_prompts=4",
         "export.gguf_quants=[f16,q8_0]", "export.torch_quants=[int8]", "export.eval_windows=4", "export.gen_tokens=8",
         "rl.warmup_rows=16", "knowledge.facts=16", "knowledge.second_pass_steps=2", "knowledge.probe_samples=2",
         "assistant.identity_rows=8", "rl.max_steps=2", "rl.prompts_per_step=2", "rl.group_size=2",
         "rl.max_new_tokens=16", "rl.heldout_problems=4", "rl.eval_every=2", "rl.checkpoint_every=1",
         "eval.problems=4", "eval.identity_questions=4")


def test_run_on_the_bundled_sample_then_rerun_is_a_no_op(tmp_path, prefect_server):
    root = tmp_path / "root"
    first = c2m("run", *SMALL, root=root,
                env_extra={"PREFECT_API_URL": prefect_server})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "snapshot snap-" in first.stdout and "documents curated" in first.stdout
    assert "dedup snap-" in first.stdout and "pii snap-" in first.stdout  # the default runs every stage built
    assert "tokenizer snap-" in first.stdout and "manifest.json" in first.stdout
    assert "pretrain: trained to step 4" in first.stdout and "crawl2model generate" in first.stdout
    assert "sft: tuned" in first.stdout and "dpo: tuned" in first.stdout and "before:" in first.stdout
    assert "rl: tuned" in first.stdout and "rl/accuracy_heldout" in first.stdout
    assert "export" in first.stdout and "| gguf-q8_0 |" in first.stdout and "| torch-int8 |" in first.stdout
    assert "ollama create" in first.stdout
    assert "eval: scored" in first.stdout and "eval/problem_accuracy" in first.stdout
    assert "registered as crawl2model version 1; promoted: no champion yet" in first.stdout
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    docs = con.execute("select count(*), count(distinct doc_id), min(url) from documents").fetchone()
    robots = con.execute("select url from rejections where reason = 'robots-disallowed'").fetchall()
    unprocessed = con.execute("select count(*) from documents where dup_cluster is null or pii_email is null").fetchone()
    some_doc = con.execute("select min(doc_id) from kept_documents").fetchone()[0]
    con.close()
    assert unprocessed == (0,)
    assert docs[0] >= 20 and docs[0] == docs[1] and docs[2].startswith("http://127.0.0.1:")
    assert [u for (u,) in robots] and robots[0][0].endswith("/private/drafts.html")
    assert (root / "mlflow.db").is_file() and list((root / "crawl").glob("*/*.warc.gz"))

    again = c2m("run", *SMALL, root=root,
                env_extra={"PREFECT_API_URL": prefect_server})
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("nothing new") == 11  # curate, dedup, pii, tokenizer, pretrain, sft, dpo, rl, eval, export, register

    funnel = c2m("warehouse", "funnel", root=root)
    assert funnel.returncode == 0 and "extract" in funnel.stdout and "quality" in funnel.stdout
    stats = c2m("warehouse", "stats", root=root)
    assert stats.returncode == 0 and "snap-" in stats.stdout
    rejections = c2m("warehouse", "rejections", "--reason", "robots-disallowed", root=root)
    assert rejections.returncode == 0 and "drafts.html" in rejections.stdout
    sample = c2m("warehouse", "sample", "-n", "2", root=root)
    assert sample.returncode == 0 and "chars" in sample.stdout
    cluster = c2m("warehouse", "duplicates", some_doc, root=root)
    assert cluster.returncode == 0 and some_doc in cluster.stdout and "kept" in cluster.stdout
    generated = c2m("generate", "The ", "--max-new-tokens", "5", root=root)
    assert generated.returncode == 0 and generated.stdout.startswith("The "), generated.stderr[-2000:]
    exported = c2m("export", "--format", "gguf,torch", "--quant", "q4_0,int4", "export.eval_windows=2",
                   "export.gen_tokens=4", root=root)
    assert exported.returncode == 0, exported.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in exported.stdout.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["torch-fp32", "torch-int4", "gguf-q4_0"], exported.stdout  # rows[0] is the header
    trained = next((root / "checkpoints").glob("rl-*/step-000002"))  # the tuned model: what `run` exported
    imported = c2m("import-hf", str(next((root / "exports").glob("*/hf"))), root=root)  # the export, back in
    assert imported.returncode == 0 and "imported" in imported.stdout, imported.stderr[-2000:]
    greedy = ("generate", "The ", "--max-new-tokens", "5", "--temperature", "0", "--checkpoint")
    from_import = c2m(*greedy, str(root / "checkpoints" / "imported-hf" / "step-000000"), root=root)
    from_training = c2m(*greedy, str(trained), root=root)
    assert from_import.returncode == 0 and from_import.stdout == from_training.stdout, from_import.stderr[-2000:]
    listed = c2m("models", "list", root=root)
    assert listed.returncode == 0 and "candidate,champion" in listed.stdout.replace(" ", ""), listed.stderr[-2000:]
    answered = c2m("models", "generate", "Hello?", "--max-new-tokens", "4", root=root)
    assert answered.returncode == 0 and answered.stdout.strip(), answered.stderr[-2000:]
    show = c2m("tokenizer", "show", "The quick brown fox", root=root)
    assert show.returncode == 0 and "bytes/token" in show.stdout and "'The'" in show.stdout, show.stdout


def test_a_run_killed_mid_stage_resumes_to_the_same_result(tmp_path, prefect_server):
    """SIGKILL the whole `crawl2model run` (its process group) once SFT has checkpointed, run it
    again: the finished stages are no-ops, SFT resumes, and the result equals an undisturbed run."""
    # one input folder for both runs (the bundled sample is served on a random port, so its URLs
    # and with them the doc ids and the train/val split differ from run to run)
    docs = [d for d in neardup_docs() if "-v" not in d["id"]][:40]
    pages = write_pages(tmp_path / "pages", {f"nd-{d['id']}": d["text"] for d in docs})
    args = ("run", "--input", str(pages), *SMALL, "tokenizer.val_fraction=0.25", "sft.max_steps=6", "sft.checkpoint_every=2",
            "--until", "sft")
    env = {"PREFECT_API_URL": prefect_server}
    straight = c2m(*args, root=tmp_path / "straight", env_extra=env)
    assert straight.returncode == 0, straight.stderr[-3000:]

    root = tmp_path / "killed"
    full_env = dict(os.environ, C2M_HOME=str(root), COLUMNS="200", **env)
    full_env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list(root.glob("checkpoints/sft-*/step-000002")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(root.glob("checkpoints/sft-*/summary.json"))  # killed before SFT finished

    again = c2m(*args, root=root, env_extra=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("nothing new") == 5 and "sft: tuned" in again.stdout  # curate .. pretrain done before

    def result(base):
        summary = json.loads(next(base.glob("checkpoints/sft-*/summary.json")).read_text())
        con = duckdb.connect(str(base / "warehouse.duckdb"), read_only=True)
        counts = con.execute("select count(*), count(distinct text) from kept_documents").fetchone()
        con.close()
        return counts, summary["after"]["sft/loss"], summary["after"]["val/loss"]

    assert result(root) == result(tmp_path / "straight")


@pytest.mark.parametrize("args, message", [
    (["curate", "/no/such/file.warc.gz"], "does not exist"),
    (["curate", "x.warc.gz", "curate.langauge.min_score=0.5"], "curate.langauge: unknown config key (did you mean curate.language?)"),
    (["run", "sft.max_step=3"], "sft.max_step: unknown config key (did you mean sft.max_steps?)"),
    (["curate", "x.warc.gz", "curate.language.min_score=lots"], "curate.language.min_score"),
    (["sft", "--data", "/no/such.jsonl"], "no such file"),
    (["dpo"], "no sft checkpoint"),
    (["run", "--until", "fly"], "unknown stage"),
    (["--config", "/no/such.yaml", "run"], "does not exist"),
    (["warehouse", "funnel"], "no warehouse"),
    (["tokenizer", "show", "hi"], "no tokenizer yet"),
    (["tokenizer", "encode"], "no warehouse"),
    (["export", "--checkpoint", "/no/such/step-000001"], "not a checkpoint folder"),
    (["export", "--quant", "q9_9"], "export.gguf_quants"),
    (["export"], "no checkpoint"),
    (["models", "list"], "no registered model"),
])
def test_user_errors_are_clear_and_early(tmp_path, args, message):
    result = c2m(*args, root=tmp_path / "root", timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "root" / "warehouse.duckdb").exists()


def test_help_lists_the_pipeline_then_using_the_model_then_operations(tmp_path):
    result = c2m("--help", root=tmp_path)
    assert result.returncode == 0
    listed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ") and line.split()[1].isascii()
              and not line.split()[1].startswith("-")]
    panels = [line for line in result.stdout.splitlines() if line.startswith("╭─ ")]
    assert [p.split("─ ")[1].split(" ─")[0] for p in panels] == ["Options", "The pipeline and its stages",
                                                                "Using the model", "Operations"]
    stages = ["run", "curate", "dedup", "scrub", "tokenizer", "train", "generate", "sft", "dpo", "rl", "eval", "export"]
    assert [c for c in listed if c in stages] == stages and listed.index("export") < listed.index("chat")
    assert listed.index("models") < listed.index("doctor") and {"ui", "config", "warehouse"} <= set(listed)


def test_config_show_lists_every_key_with_its_value_and_meaning(tmp_path):
    result = c2m("config", "show", "rl.lr=0.0001", "rl.", "pretrain.max_steps", root=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.stdout.splitlines()
            if line.startswith("│ ") and line.split("│")[1].strip()}
    assert rows["rl.lr"] == "0.0001" and rows["rl.max_steps"] == "40" and "pretrain.max_steps" in rows
    assert not [k for k in rows if not k.startswith(("rl.", "pretrain.max_steps"))]
    assert "completions sampled per prompt" in result.stdout  # rl.group_size's meaning
