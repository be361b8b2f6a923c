"""`crawl2model config show`: every config key with the value this run would get and its meaning.

    crawl2model config show                          # defaults, the data root and C2M_HOME applied
    crawl2model --config my.yaml config show sft.    # a YAML file and overrides applied; keys starting with sft.
    crawl2model config show rl.lr=1e-4 rl.           # what an override changes

A key that does not exist fails with the nearest valid one (`sft.max_step` -> `sft.max_steps`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from crawl2model.config import ConfigError, described_keys, load_config
from flows.cli_app import OPERATIONS, app, fail, out, split_overrides, table

config_app = typer.Typer(no_args_is_help=True, help="The configuration: every key, its value and its meaning.")
app.add_typer(config_app, name="config", rich_help_panel=OPERATIONS)


@config_app.command("show")
def show(
    ctx: typer.Context,
    items: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]... [PREFIX]...",
                                                help="Overrides to apply; other items keep only keys starting with them."),
) -> None:
    """Every key (dotted, as `key=value` sets it), its value and what it means."""
    prefixes, overrides = split_overrides(items or [])
    try:
        cfg = load_config(ctx.obj["config"], overrides, ctx.obj["data_root"])
    except ConfigError as exc:
        fail(str(exc))
    rows = [{"key": key, "value": str(value) if isinstance(value, Path) else json.dumps(value), "meaning": meaning}
            for key, value, meaning in described_keys(cfg) if not prefixes or key.startswith(tuple(prefixes))]
    if not rows:
        fail(f"no config key starts with {', '.join(prefixes)}")
    out.print(table(rows, f"config ({len(rows)} keys)"), soft_wrap=True)
