"""What every `crawl2model` command module shares: the Typer app (its commands listed in pipeline
order), the consoles, config loading, errors, tables, and running a flow in a session.

    from flows.cli_app import PIPELINE, app, cli_config, fail, out
    @app.command(rich_help_panel=PIPELINE)
    def dedup(ctx: typer.Context, ...): cfg = cli_config(ctx, overrides); ...

The command modules (cli.py: the pipeline and its stages; chat_cli.py, models_cli.py: using the
model; warehouse_cli.py, config_cli.py, doctor.py, and `ui` in cli.py: operations) import `app`
from here and register their commands on it; flows/cli.py imports them all and is the entry point.
Commands import their flow modules inside the function body: those import Prefect and MLflow,
which read their settings at import, so they must come after `cli_config` has prepared the
environment for the data root (crawl2model.runtime), and `--help` need not wait for them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from crawl2model.config import Config, ConfigError, load_config
from crawl2model.runtime import prepare_environment

PIPELINE, MODEL, OPERATIONS = "The pipeline and its stages", "Using the model", "Operations"
PANELS = (PIPELINE, MODEL, OPERATIONS)
# Within the pipeline's panel, the commands in the order the pipeline runs them (a sub-app such as
# `tokenizer` would otherwise come after every plain command).
PIPELINE_ORDER = ("run", "curate", "dedup", "scrub", "tokenizer", "train", "generate", "sft", "dpo", "rl", "eval",
                  "export")


class PanelOrder(TyperGroup):
    """`--help` lists the pipeline's commands first, then using the model, then operations,
    whatever order the modules registered them in (within a panel: registration order)."""

    def list_commands(self, ctx) -> list[str]:
        def rank(name: str) -> tuple[int, int]:
            panel = getattr(self.commands[name], "rich_help_panel", None)
            in_pipeline = PIPELINE_ORDER.index(name) if name in PIPELINE_ORDER else len(PIPELINE_ORDER)
            return (PANELS.index(panel) if panel in PANELS else len(PANELS)), in_pipeline

        return sorted(super().list_commands(ctx), key=rank)


app = typer.Typer(cls=PanelOrder, add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Turn a web crawl into a trained, aligned, quantized language model.")
out = Console()
err = Console(stderr=True)
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


@app.callback()
def main_options(
    ctx: typer.Context,
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where all state lives (default: $C2M_HOME or ./c2m-data)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file; key=value items override it."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs."),
) -> None:
    ctx.obj = {"data_root": data_root, "config": config}
    if verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO")


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Separate `key=value` config overrides from inputs (an existing path is always an input)."""
    inputs, overrides = [], []
    for item in items:
        (overrides if _OVERRIDE.match(item) and not os.path.exists(item) else inputs).append(item)
    return inputs, overrides


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def cli_config(ctx: typer.Context, overrides: list[str]) -> Config:
    """The config of this command (file, data root, overrides), its environment prepared."""
    try:
        cfg = load_config(ctx.obj["config"], overrides, ctx.obj["data_root"])
    except ConfigError as exc:
        fail(str(exc))
    prepare_environment(cfg.data_root)  # before prefect or mlflow is imported
    return cfg


def run_in_session(cfg: Config, user_errors: tuple, fn, *args):
    """Run a flow function in a Prefect/MLflow session: a user error exits 2 with its message,
    anything else exits 1 with the exception."""
    from flows.pipeline import in_session  # deferred: imports Prefect and MLflow (after cli_config)

    try:
        return in_session(cfg, fn, *args)
    except user_errors as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"{type(exc).__name__}: {exc}", code=1)


def table(rows: list[dict], title: str, columns: list[str] | None = None) -> Table:
    shown = Table(title=title, title_justify="left")
    columns = columns or (list(rows[0]) if rows else [])
    for col in columns:
        numeric = rows and isinstance(rows[0].get(col), (int, float))
        shown.add_column(col, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        shown.add_row(*[f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns])
    return shown


def print_funnel(funnel: list[dict]) -> None:
    rows = [{**r, "MB": r["bytes"] / 1e6} for r in funnel]
    out.print(table(rows, "funnel", ["stage", "docs_in", "docs_out", "docs_dropped", "docs_quarantined", "MB", "seconds"]))
