"""`crawl2model models ...`: the MLflow model registry from the command line.

    crawl2model models list                                  # versions with aliases, eval numbers, gate decision
    crawl2model models show [VERSION] [--alias champion]     # lineage tags and metrics of one version
    crawl2model models promote VERSION                       # move `champion` by hand (recorded in a tag)
    crawl2model models generate "prompt" [--alias champion | --version N]   # through mlflow.pyfunc
    crawl2model models --name other-model list               # another registered model

Works against the embedded store of the data root or the server in MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import getpass
import time
from typing import Optional

import typer

from flows.cli_app import MODEL, app, cli_config, fail, out, table

models_app = typer.Typer(no_args_is_help=True, help="The MLflow model registry: list, show, promote, generate.")
app.add_typer(models_app, name="models", rich_help_panel=MODEL)

SHOWN_TAGS = {"eval/val_bpb": "bits/byte", "eval/reward_accuracy": "reward acc", "audit/canary_leaks": "leaks",
              "gate.decision": "gate"}


@models_app.callback()
def models_options(ctx: typer.Context, name: Optional[str] = typer.Option(
        None, "--name", help="Registered model name (default: registry.model_name, 'crawl2model').")) -> None:
    ctx.obj["model_name"] = name


def _session(ctx: typer.Context):
    """(client, registered model name) after the environment is prepared."""
    cfg = cli_config(ctx, [])
    from mlflow import MlflowClient  # deferred: after cli_config prepared MLflow's environment

    return MlflowClient(), ctx.obj.get("model_name") or cfg.registry.model_name


def _version(client, name: str, version: Optional[str], alias: Optional[str]):
    from mlflow.exceptions import MlflowException  # deferred: as in _session

    try:
        if version:
            return client.get_model_version(name, version)
        return client.get_model_version_by_alias(name, alias or "champion")
    except MlflowException:
        fail(f"no version {version} of model {name!r}" if version else
             f"model {name!r} has no version with alias {alias or 'champion'!r}: run `crawl2model run` first")


def _aliases(client, name: str) -> dict[str, list[str]]:
    by_version: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    return by_version


@models_app.command("list")
def list_versions(ctx: typer.Context) -> None:
    """Every registered version, newest first: aliases, eval numbers, gate decision."""
    client, name = _session(ctx)
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        fail(f"no registered model {name!r} yet: `crawl2model run` registers one")
    aliases = _aliases(client, name)
    rows = [{"version": v.version, "aliases": ",".join(aliases.get(str(v.version), [])),
             "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.creation_timestamp / 1000)),
             **{column: v.tags.get(tag, "") for tag, column in SHOWN_TAGS.items()}}
            for v in sorted(versions, key=lambda v: -int(v.version))]
    out.print(table(rows, f"registered model {name}"), soft_wrap=True)


@models_app.command()
def show(ctx: typer.Context, version: Optional[str] = typer.Argument(None, help="Version (default: the alias)."),
         alias: Optional[str] = typer.Option(None, help="Alias to show (default: champion).")) -> None:
    """One version's lineage (snapshot, tokenizer, config, code, Prefect flow run), metrics and source."""
    client, name = _session(ctx)
    v = _version(client, name, version, alias)
    out.print(f"[bold]{name} version {v.version}[/]  aliases: {', '.join(_aliases(client, name).get(str(v.version), [])) or '-'}"
              f"\n  source: {v.source}\n  run: {v.run_id}", highlight=False, soft_wrap=True)
    for key in sorted(v.tags):
        out.print(f"  {key}: {v.tags[key]}", highlight=False, soft_wrap=True)


@models_app.command()
def promote(ctx: typer.Context, version: str = typer.Argument(..., help="Version to make champion.")) -> None:
    """Make VERSION the champion by hand (bypassing the gate; who and when go into a tag)."""
    client, name = _session(ctx)
    v = _version(client, name, version, None)
    client.set_registered_model_alias(name, "champion", v.version)
    client.set_model_version_tag(name, v.version, "gate.manual_promotion",
                                 f"{getpass.getuser()} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    out.print(f"[bold green]{name} version {v.version} is now champion[/] (by hand)", highlight=False)


@models_app.command()
def generate(ctx: typer.Context, prompt: str = typer.Argument(..., help="A user message."),
             alias: Optional[str] = typer.Option(None, help="Alias (default: champion)."),
             version: Optional[str] = typer.Option(None, help="A version instead of an alias."),
             max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
             temperature: float = typer.Option(0.0, help="0 = greedy."),
             seed: int = typer.Option(0, help="Sampling seed.")) -> None:
    """Answer a prompt with a registered model, loaded through mlflow.pyfunc as any user would."""
    client, name = _session(ctx)
    import mlflow.pyfunc  # deferred: after _session prepared MLflow's environment

    from flows.register import quiet_pyfunc
    v = _version(client, name, version, alias)
    with quiet_pyfunc():
        model = mlflow.pyfunc.load_model(f"models:/{name}/{v.version}")
    reply = model.predict([prompt], params={"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed})
    out.print(reply[0] or "(an empty reply: the model ended its turn at once)", highlight=False)
