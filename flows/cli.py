"""The `crawl2model` command line.

    crawl2model run                                   # whole pipeline on the bundled sample
    crawl2model run --input crawl/ --until curate curate.language.min_score=0.5
    crawl2model curate crawl/*.warc.gz pages/ urls.txt
    crawl2model dedup | scrub                         # re-run one stage on the newest snapshot
    crawl2model tokenizer train | encode | show "some text"
    crawl2model train [--preset small] | generate "prompt"
    crawl2model sft [--data chat.jsonl] | dpo [--data prefs.jsonl] | rl   # tune; default data from the corpus
    crawl2model eval [--checkpoint DIR | --alias champion]                # the eval suite alone
    crawl2model export [--format hf,gguf,torch] [--quant q8_0,q4_k_m,int4] | import-hf FOLDER
    crawl2model models list | show [VERSION] | promote VERSION | generate "prompt" [--alias champion]
    crawl2model chat [--checkpoint DIR | --alias champion | --gguf FILE] | serve [--alias champion | --gguf FILE]
    crawl2model ui [--prefect-port 4200 --mlflow-port 5000] [--auth]   # both UIs over the data root; Ctrl-C stops both
    crawl2model warehouse stats | funnel | rejections | sample | duplicates DOC_ID
    crawl2model warehouse verify [--record] | rebuild [--mirror] [--force]   # checksums; DuckDB from Parquet
    crawl2model config show [KEY=VALUE]... [PREFIX]...   # every key, its value and meaning
    crawl2model doctor [KEY=VALUE]...                # versions, data root, Prefect/MLflow, torch devices; exit 1 if not ready
    crawl2model --data-root /data/c2m --config my.yaml ...

Options that apply everywhere come before the command (`--data-root`, `--config`); `key=value`
items anywhere after it override the config (e.g. `curate.workers=4`). All state goes to the data
root (`./c2m-data`, or `--data-root`, or `C2M_HOME`). Exit status: 0 done, 1 the run failed,
2 a usage, input or config error (reported before any work starts).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

# Each of these registers its commands on the app (flows/cli_app.py) when imported.
import flows.chat_cli  # noqa: F401  chat, serve
import flows.config_cli  # noqa: F401  config show
import flows.doctor  # noqa: F401  doctor
import flows.models_cli  # noqa: F401  models list | show | promote | generate
from crawl2model.config import Config
from crawl2model.layout import DataRoot
from flows.cli_app import (MODEL, OPERATIONS, PIPELINE, app, cli_config, fail, out, print_funnel, run_in_session,
                           split_overrides, table)
from flows.servers import ServerError, resolve_auth, serve_uis
from flows.warehouse_cli import open_warehouse
from model.shards import ShardError
from model.tokenizer import load_tokenizer

# The commands import their flows (Prefect, MLflow), torch and DuckDB inside the function: after
# cli_config has prepared the environment for the data root, and never for --help (flows/cli_app.py).

tokenizer_app = typer.Typer(no_args_is_help=True, help="Train the BPE tokenizer, encode token shards, look at a text's tokens.")
app.add_typer(tokenizer_app, name="tokenizer", rich_help_panel=PIPELINE)


def _run(inputs: list[str] | None, cfg: Config, until: str | None) -> None:
    # first thing, as importing and starting Prefect and MLflow take a while (minutes on a busy machine)
    out.print(f"crawl2model: data root {cfg.data_root}; starting Prefect and MLflow ...", highlight=False)
    from flows.pipeline import AVAILABLE, StageNotAvailable, check_until, run_pipeline
    from tasks.ingest import InputError, resolve_inputs

    until = until or AVAILABLE[-1]
    try:
        check_until(until)
        if inputs:
            resolve_inputs(inputs)
    except (StageNotAvailable, InputError) as exc:
        fail(str(exc))
    try:
        result = run_pipeline(inputs, cfg, until=until, show_progress=True, report=_reporter(until))
    except Exception as exc:
        fail(f"{type(exc).__name__}: {exc}", code=1)
    with open_warehouse(cfg) as wh:
        print_funnel(wh.funnel(result.curate.snapshot))
    out.print(f"warehouse: {cfg.data_root / 'warehouse.duckdb'}   (crawl2model warehouse funnel | rejections | sample)")
    out.print(f"MLflow run {result.mlflow_run_id}: mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}")


def _reporter(until: str):
    """The pipeline's report callback: a line as each stage starts, its summary as it ends."""
    from flows.pipeline import STAGES

    printers = {"curate": _print_curate, "dedup": _print_dedup, "pii": _print_scrub, "tokenizer": _print_tokenizer,
                "pretrain": _print_pretrain, "sft": _print_tune, "dpo": _print_tune, "rl": _print_tune,
                "eval": _print_eval, "export": _print_export, "register": _print_register}
    last = STAGES.index(until) + 1

    def report(stage: str, summary) -> None:
        if stage == "sample":
            out.print("[bold]== bundled sample[/]: built and crawled on 127.0.0.1 the first time, then cached", highlight=False)
        elif summary is None:
            out.print(f"[bold]== {stage}[/] (stage {STAGES.index(stage) + 1} of {last})", highlight=False)
        else:
            printers[stage](summary)

    return report


def _print_curate(s) -> None:
    what = "nothing new: every shard was already in the warehouse" if s.no_op else f"{s.shards_processed} shard(s) curated"
    out.print(f"[bold green]snapshot {s.snapshot}[/]: {s.documents} documents curated ({s.text_chars / 1e6:.1f} MB of text), "
              f"{s.rejections} rejections; {what} in {s.seconds:.1f}s")


def _print_dedup(summary) -> None:
    r = summary.result
    note = "  (nothing new: done before with this config)" if summary.no_op else ""
    out.print(f"[bold green]dedup[/] {summary.snapshot}: {r['docs_in']} documents in, {r['exact_duplicates']} exact and "
              f"{r['near_duplicates']} near duplicates removed, {r['docs_out']} kept; {r['candidate_pairs']} LSH "
              f"candidate pairs, {r['merged_pairs']} merged, against {r['docs_earlier']} earlier documents{note}")


def _print_scrub(summary) -> None:
    t = summary.totals
    note = "  (nothing new: done before with this config)" if summary.no_op else ""
    kinds = ", ".join(f"{k.removeprefix('pii_')} {v}" for k, v in t.items() if k.startswith("pii_"))
    out.print(f"[bold green]pii[/] {summary.snapshot}: {t['docs_with_pii']} of {t['docs']} documents held PII; "
              f"replaced: {kinds}{note}")


def _print_tokenizer(summary) -> None:
    m = summary.metrics
    what = "nothing new" if summary.no_op else ("trained and encoded" if summary.trained else "encoded")
    out.print(f"[bold green]tokenizer[/] {summary.snapshot}: {what}; {summary.tokenizer_dir}")
    if summary.manifest:
        out.print(f"  shards: {summary.manifest}  train {m.get('tokenizer/tokens_train', 0):,} tokens, "
                  f"val {m.get('tokenizer/tokens_val', 0):,}; {m.get('tokenizer/bytes_per_token_val', 0):.2f} bytes/token "
                  f"on val, {m.get('tokenizer/vocab_used', 0):,} ids used")


def _print_pretrain(summary) -> None:
    m = summary.metrics
    what = "nothing new" if summary.no_op else f"trained to step {m.get('step', '?')}"
    val = m.get("val/loss")
    verdict = "" if val is None else (f"; val loss {val:.3f} vs unigram baseline {summary.unigram_val_loss:.3f}"
                                      f" ({'below' if val < summary.unigram_val_loss else 'NOT below'})")
    out.print(f"[bold green]pretrain[/]: {what}{verdict}; checkpoint {summary.checkpoint}")
    out.print(f'  crawl2model generate --checkpoint {summary.checkpoint} "The "')


def _stage(ctx: typer.Context, overrides: list[str], snapshot: str | None, force: bool, runner, printer) -> None:
    from warehouse import WarehouseError

    cfg = cli_config(ctx, overrides)
    if not (cfg.data_root / "warehouse.duckdb").exists():
        fail(f"no warehouse at {cfg.data_root}: run `crawl2model curate PATH` or `crawl2model run` first")
    printer(run_in_session(cfg, (WarehouseError,), runner, cfg, snapshot, None, True, force))


@app.command(context_settings={"allow_extra_args": False}, rich_help_panel=PIPELINE)
def curate(
    ctx: typer.Context,
    items: list[str] = typer.Argument(..., metavar="INPUT... [KEY=VALUE]...",
                                      help="WARC files, folders of HTML or WARC files, URL lists (.txt, one URL a line) or URLs."),
) -> None:
    """Curate inputs into the warehouse: URL filter, extraction, language and quality filters."""
    inputs, overrides = split_overrides(items)
    if not inputs:
        fail("no input given: name WARC files, folders, URL lists or URLs")
    _run(inputs, cli_config(ctx, overrides), until="curate")


@app.command(rich_help_panel=PIPELINE)
def run(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides."),
    inputs: Optional[list[str]] = typer.Option(None, "--input", "-i", help="Input (repeatable); default: the bundled sample."),
    until: Optional[str] = typer.Option(None, "--until", help="Last stage to run: curate, dedup, pii, tokenizer, pretrain, sft, dpo, rl, eval, export, register (default: the last one built)."),
) -> None:
    """Run the pipeline up to a stage, on the given inputs or the bundled sample."""
    _, bad = split_overrides(overrides or [])
    if len(bad) != len(overrides or []):
        fail("positional items must be key=value overrides; give inputs with --input")
    _run(inputs, cli_config(ctx, overrides or []), until)  # cli_config prepares the environment: before Prefect is imported


@app.command(rich_help_panel=PIPELINE)
def dedup(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (dedup.*)."),
    snapshot: Optional[str] = typer.Option(None, help="Snapshot to deduplicate (default: the newest)."),
    force: bool = typer.Option(False, help="Run even when done before with the same config."),
) -> None:
    """Remove exact and MinHash near duplicates from a snapshot (against earlier snapshots too)."""
    from flows.dedup import run_dedup

    _stage(ctx, overrides or [], snapshot, force, run_dedup, _print_dedup)


@app.command(rich_help_panel=PIPELINE)
def scrub(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (pii.*)."),
    snapshot: Optional[str] = typer.Option(None, help="Snapshot to scrub (default: the newest)."),
    force: bool = typer.Option(False, help="Run even when done before with the same config."),
) -> None:
    """Replace e-mails, public IPs, phone, card and IBAN numbers in a snapshot's text (stage pii)."""
    from flows.scrub import run_scrub

    _stage(ctx, overrides or [], snapshot, force, run_scrub, _print_scrub)


@tokenizer_app.command("train")
def tokenizer_train(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (tokenizer.*)."),
    snapshot: Optional[str] = typer.Option(None, help="Corpus as of this snapshot (default: the newest)."),
) -> None:
    """Train the byte-level BPE tokenizer on the warehouse corpus (no-op when done with this config)."""
    _tokenizer_stage(ctx, overrides or [], snapshot, encode=False)


@tokenizer_app.command("encode")
def tokenizer_encode(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (tokenizer.*)."),
    snapshot: Optional[str] = typer.Option(None, help="Corpus as of this snapshot (default: the newest)."),
) -> None:
    """Encode the corpus into token shards with a manifest (trains the tokenizer first if needed)."""
    _tokenizer_stage(ctx, overrides or [], snapshot, encode=True)


def _tokenizer_stage(ctx: typer.Context, overrides: list[str], snapshot: str | None, encode: bool) -> None:
    from flows.tokenize_corpus import run_tokenizer
    from warehouse import WarehouseError

    cfg = cli_config(ctx, overrides)
    if not (cfg.data_root / "warehouse.duckdb").exists():
        fail(f"no warehouse at {cfg.data_root}: run `crawl2model run --until pii` first")
    _print_tokenizer(run_in_session(cfg, (WarehouseError, ValueError), run_tokenizer, cfg, snapshot, None, True, encode))


@tokenizer_app.command("show")
def tokenizer_show(ctx: typer.Context, text: str = typer.Argument(..., help="Text to encode.")) -> None:
    """Encode a text with the newest tokenizer: ids and pieces."""

    cfg = cli_config(ctx, [])
    try:
        folder = DataRoot(cfg.data_root).latest("tokenizer")
    except FileNotFoundError as exc:
        fail(str(exc))
    tokenizer = load_tokenizer(folder)
    ids = tokenizer.encode(text).ids
    pieces = [tokenizer.decode([i]) for i in ids]
    out.print(f"{len(ids)} tokens, {len(text.encode())} bytes ({len(text.encode()) / max(1, len(ids)):.2f} bytes/token), "
              f"tokenizer {folder}", highlight=False)
    out.print(table([{"id": i, "piece": repr(p)} for i, p in zip(ids, pieces)], "tokens"))


@app.command(rich_help_panel=PIPELINE)
def train(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (pretrain.*)."),
    preset: Optional[str] = typer.Option(None, help="Model preset: tiny, small, 124m, 350m (default: pretrain.preset)."),
    manifest: Optional[Path] = typer.Option(None, help="Token shard manifest (default: the newest shards)."),
) -> None:
    """Pretrain a model on the token shards (resumes a killed run; a finished one is a no-op)."""
    from flows.pretrain import run_pretrain

    cfg = cli_config(ctx, (overrides or []) + ([f"pretrain.preset={preset}"] if preset else []))
    _print_pretrain(run_in_session(cfg, (FileNotFoundError, ShardError), run_pretrain, cfg, manifest))


@app.command(rich_help_panel=PIPELINE)
def generate(
    ctx: typer.Context,
    prompt: str = typer.Argument(..., help="Text to continue."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint folder (default: the newest under checkpoints/)."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
    temperature: float = typer.Option(0.8, help="0 = greedy."),
    top_k: Optional[int] = typer.Option(50, help="Sample from the k most likely tokens."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Continue a prompt with a pretrained checkpoint (its tokenizer is the one it was trained with)."""
    from model.sampling import CheckpointError, generate_text

    cfg = cli_config(ctx, [])
    try:
        path = checkpoint or DataRoot(cfg.data_root).newest_checkpoint()
        text = generate_text(path, prompt, max_new_tokens, temperature, top_k, top_p, seed)
    except (CheckpointError, FileNotFoundError) as exc:
        fail(str(exc))
    out.print(prompt + text, highlight=False)


def _tune(ctx: typer.Context, stage: str, overrides: list[str], base: Path | None, data: Path | None) -> None:
    if data is not None and not data.is_file():
        fail(f"--data {data}: no such file")
    if base is not None and not (base / "meta.json").exists():
        fail(f"--base {base} is not a checkpoint folder (no meta.json): give a step-NNNNNN folder under checkpoints/")
    cfg = cli_config(ctx, overrides + ([f"{stage}.data={data.resolve()}"] if data else []))
    from flows.posttrain import run_dpo, run_sft
    from flows.rl import run_rl
    from model.sampling import CheckpointError
    from warehouse import WarehouseError

    try:
        base = base or DataRoot(cfg.data_root).newest_of_stage({"sft": "pretrain", "dpo": "sft", "rl": "dpo"}[stage])
    except FileNotFoundError as exc:
        fail(str(exc))
    runner = {"sft": run_sft, "dpo": run_dpo, "rl": run_rl}[stage]
    _print_tune(run_in_session(cfg, (CheckpointError, FileNotFoundError, ValueError, WarehouseError), runner, cfg, base))


@app.command(rich_help_panel=PIPELINE)
def sft(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (sft.*)."),
    base: Optional[Path] = typer.Option(None, help="Checkpoint to tune (default: the newest pretraining checkpoint)."),
    data: Optional[Path] = typer.Option(None, help='JSONL/Parquet of {"messages": [...]} or {"prompt", "response"} '
                                                   "rows (default: pairs made from the corpus)."),
) -> None:
    """Supervised fine-tuning into a chat model: loss on assistant tokens, full or LoRA (sft.lora_rank=8)."""
    _tune(ctx, "sft", overrides or [], base, data)


@app.command(rich_help_panel=PIPELINE)
def dpo(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (dpo.*)."),
    base: Optional[Path] = typer.Option(None, help="Checkpoint to tune (default: the newest SFT checkpoint)."),
    data: Optional[Path] = typer.Option(None, help='JSONL/Parquet of {"prompt", "chosen", "rejected"} or HH '
                                                   '{"chosen", "rejected"} rows (default: self-play pairs).'),
) -> None:
    """DPO preference tuning against the base frozen: TRL's reward metrics on held-out pairs, val perplexity."""
    _tune(ctx, "dpo", overrides or [], base, data)


@app.command(rich_help_panel=PIPELINE)
def rl(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (rl.*)."),
    base: Optional[Path] = typer.Option(None, help="Checkpoint to tune (default: the newest DPO checkpoint)."),
    data: Optional[Path] = typer.Option(None, help='JSONL of {"prompt", "answer"} problems (default: the built-in '
                                                   "families of rl.families)."),
) -> None:
    """RL on verifiable rewards: GRPO on problems whose final answer a program checks; held-out accuracy."""
    _tune(ctx, "rl", overrides or [], base, data)


@app.command("eval", rich_help_panel=PIPELINE)
def eval_command(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (eval.*, audit.*)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint to score (default: the newest tuned one)."),
    alias: Optional[str] = typer.Option(None, help="Score a registered version instead, by alias (e.g. champion)."),
) -> None:
    """The eval suite alone: held-out bits/byte, verifiable problems, facts and "I don't know", identity, audits."""
    if checkpoint is not None and not (checkpoint / "meta.json").exists():
        fail(f"--checkpoint {checkpoint} is not a checkpoint folder (no meta.json)")
    cfg = cli_config(ctx, overrides or [])
    from flows.evaluate import run_eval
    from model.sampling import CheckpointError
    from warehouse import WarehouseError

    if alias:
        checkpoint = _registered(cfg, alias)
    summary = run_in_session(cfg, (CheckpointError, FileNotFoundError, ValueError, WarehouseError), run_eval, cfg,
                          checkpoint)
    _print_eval(summary)


def _registered(cfg: Config, alias: str) -> Path:
    """The checkpoint of `registry.model_name`@alias, downloaded once into the data root."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from flows.register import registered_checkpoint

    name = cfg.registry.model_name
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias).version
    except MlflowException:
        fail(f"model {name!r} has no version with alias {alias!r}: run `crawl2model run` first")
    dest = DataRoot(cfg.data_root).registered(name, version)
    found = dest / "artifacts" / "checkpoint"
    return found if (found / "meta.json").exists() else registered_checkpoint(name, version, dest)


TUNE_KEYS = {"sft": ["sft/eval_loss"], "dpo": ["eval/loss", "eval/rewards/accuracies", "eval/rewards/margins"],
             "rl": ["rl/accuracy_heldout"]}


def _print_tune(s) -> None:
    c, b, a = s.counts, s.before, s.after
    what = "nothing new" if s.no_op else f"tuned in {s.seconds:.0f}s"
    if s.stage == "rl":
        out.print(f"[bold green]rl[/]: {what}; {c.get('train', 0):,} train and {c.get('held_out', 0):,} held-out "
                  f"problems", highlight=False, soft_wrap=True)
    else:
        out.print(f"[bold green]{s.stage}[/]: {what}; {c.get('examples', 0):,} examples from {s.data} "
                  f"({c.get('train', 0):,} train, {c.get('held_out', 0):,} held out, {c.get('quarantined', 0):,} "
                  f"quarantined{' ' + str(c['reasons']) if c.get('reasons') else ''})", highlight=False, soft_wrap=True)
    keys = TUNE_KEYS[s.stage]
    moves = [f"{k} {b[k]:.3f} -> {a[k]:.3f}" for k in keys + ["val/ppl"] if k in b and k in a]
    if moves:
        out.print("  " + "; ".join(moves) + "   (held out; val/ppl on the pretraining val shards)", highlight=False,
                  soft_wrap=True)
    for sample in s.samples:
        out.print(f"  {sample['prompt']!r}\n    before: {sample['before'][:120]!r}\n    after:  {sample['after'][:120]!r}",
                  highlight=False, soft_wrap=True)
    out.print(f"  checkpoint {s.checkpoint}", highlight=False)


def _print_eval(summary) -> None:
    what = "nothing new, scored before" if summary.no_op else "scored"
    out.print(f"[bold green]eval[/]: {what}: {summary.checkpoint}   (eval set {summary.eval_set})", highlight=False,
              soft_wrap=True)
    out.print(table([{"metric": k, "value": f"{v:.4g}"} for k, v in summary.metrics.items()], "eval suite"))


def _print_register(s) -> None:
    what = "nothing new: already" if s.no_op else "registered as"
    out.print(f"[bold green]register[/]: {what} {s.name} version {s.version}; {s.decision}", highlight=False,
              soft_wrap=True)
    out.print('  crawl2model models list   |   crawl2model models generate "What is this website about?" --alias champion',
              highlight=False)


GGUF_TYPES_HELP = "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1; k-quants q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k"


@app.command(rich_help_panel=PIPELINE)
def export(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (export.*)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint folder (default: the newest under checkpoints/)."),
    format: Optional[str] = typer.Option(None, "--format", help="Comma-separated: hf, gguf, torch (default: all three)."),
    quant: Optional[str] = typer.Option(None, help=f"Comma-separated GGUF types ({GGUF_TYPES_HELP}) and torch int8, int4."),
) -> None:
    """Export a checkpoint (Hugging Face folder, GGUF files with Ollama Modelfiles, torch int8/int4) and
    print each variant's size, bits per weight, val perplexity and generation speed."""
    extra = list(overrides or [])
    if format:
        extra.append(f"export.formats=[{format}]")
    if quant:
        quants = [q.strip().lower() for q in quant.split(",") if q.strip()]
        torch_quants = [q for q in quants if q in ("int8", "int4")]
        extra += [f"export.gguf_quants=[{','.join(q for q in quants if q not in torch_quants)}]",
                  f"export.torch_quants=[{','.join(torch_quants)}]"]
    cfg = cli_config(ctx, extra)  # before importing Prefect (crawl2model.runtime prepares its environment)
    from flows.export import run_export
    from model.sampling import CheckpointError

    try:
        checkpoint = checkpoint or DataRoot(cfg.data_root).newest_checkpoint()
    except FileNotFoundError as exc:
        fail(str(exc))
    if not (checkpoint / "meta.json").exists():
        fail(f"{checkpoint} is not a checkpoint folder (no meta.json): give a step-NNNNNN folder under checkpoints/")
    _print_export(run_in_session(cfg, (CheckpointError, FileNotFoundError, ValueError), run_export, cfg, checkpoint))


@app.command(rich_help_panel=OPERATIONS)
def ui(
    ctx: typer.Context,
    prefect_port: int = typer.Option(4200, "--prefect-port", help="Port of the Prefect UI and API on 127.0.0.1."),
    mlflow_port: int = typer.Option(5000, "--mlflow-port", help="Port of the MLflow UI on 127.0.0.1."),
    auth: Optional[bool] = typer.Option(
        None, "--auth/--no-auth", show_default="on when MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD and "
        "PREFECT_API_AUTH_STRING are set", help="Both servers refuse requests without those credentials."),
) -> None:
    """Prefect and MLflow UIs over the data root (every run made so far); Ctrl-C stops both."""
    cfg = cli_config(ctx, [])
    try:
        serve_uis(cfg.data_root, prefect_port, mlflow_port, auth=resolve_auth(auth))
    except ServerError as exc:
        fail(str(exc), code=1)


@app.command("import-hf", rich_help_panel=MODEL)
def import_hf_command(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help="A Hugging Face LlamaForCausalLM folder (config.json, model.safetensors)."),
) -> None:
    """Import a Hugging Face Llama folder as a crawl2model checkpoint (then `generate` or `export` it)."""
    from model.checkpoint import step_folder
    from model.hf import HFExportError, import_hf
    from model.sampling import CheckpointError

    cfg = cli_config(ctx, [])
    target = step_folder(DataRoot(cfg.data_root).imported_run(folder.resolve().name), 0)
    try:
        path = import_hf(folder, target)
    except (HFExportError, CheckpointError, FileNotFoundError) as exc:
        fail(str(exc))
    out.print(f"[bold green]imported[/] {folder} -> {path}")
    out.print(f'  crawl2model generate --checkpoint {path} "The "   |   crawl2model export --checkpoint {path}')


def _print_export(summary) -> None:
    what = "nothing new" if summary.no_op else f"{len(summary.variants)} variants"
    out.print(f"[bold green]export[/] {summary.checkpoint}: {what} in {summary.out}")
    out.print(summary.table, highlight=False, soft_wrap=True)
    gguf = [v for v in summary.variants if v["format"] == "gguf"]
    if gguf:
        out.print(f"  ollama create crawl2model -f {gguf[0]['path'].removesuffix('.gguf')}.Modelfile")


def main() -> None:
    # Piped to a file or a CI log, stdout is block-buffered: without this a run's lines would
    # arrive minutes late, all at once at exit.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    app()


if __name__ == "__main__":
    main()
