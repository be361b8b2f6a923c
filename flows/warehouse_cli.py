"""`crawl2model warehouse ...`: the curated warehouse (DuckDB over Parquet) from the command line.

    crawl2model warehouse stats | funnel | rejections [--stage S --reason R] | sample [-n 3]
    crawl2model warehouse duplicates DOC_ID          # a document's dedup cluster, across snapshots
    crawl2model warehouse verify [--record] | rebuild [--mirror] [--force]   # checksums; DuckDB from Parquet
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from crawl2model.config import Config
from flows.cli_app import OPERATIONS, app, cli_config, fail, out, print_funnel, table

warehouse_app = typer.Typer(no_args_is_help=True, help="Look at the curated warehouse (DuckDB).")
app.add_typer(warehouse_app, name="warehouse", rich_help_panel=OPERATIONS)


def open_warehouse(cfg: Config):
    """The data root's warehouse, read-only, or a clear error."""
    from warehouse import Warehouse, WarehouseError  # deferred: DuckDB and pyarrow, not needed for --help

    try:
        return Warehouse.open(cfg.data_root, read_only=True)
    except WarehouseError as exc:
        fail(str(exc))


def _query(ctx: typer.Context, fn):
    from warehouse import WarehouseError  # deferred: as above

    with open_warehouse(cli_config(ctx, [])) as wh:
        try:
            return fn(wh)
        except WarehouseError as exc:
            fail(str(exc))


@warehouse_app.command("stats")
def warehouse_stats(ctx: typer.Context) -> None:
    """Snapshots with their document and rejection counts."""
    rows = _query(ctx, lambda wh: wh.snapshots())
    out.print(table(rows, "snapshots"))


@warehouse_app.command("funnel")
def warehouse_funnel(ctx: typer.Context, snapshot: Optional[str] = typer.Option(None, help="Default: the newest.")) -> None:
    """Documents in, out, dropped and quarantined per stage; the counts reconcile."""
    print_funnel(_query(ctx, lambda wh: wh.funnel(snapshot)))


@warehouse_app.command("rejections")
def warehouse_rejections(
    ctx: typer.Context,
    snapshot: Optional[str] = typer.Option(None, help="Default: the newest."),
    stage: Optional[str] = typer.Option(None, help="Show examples of this stage."),
    reason: Optional[str] = typer.Option(None, help="Show examples of this reason."),
    limit: int = typer.Option(20, help="Examples to show."),
) -> None:
    """Rejections counted by stage and reason; with --stage/--reason, examples."""
    counts, examples = _query(ctx, lambda wh: (wh.rejection_counts(snapshot),
                                               wh.rejections(snapshot, stage, reason, limit) if stage or reason else []))
    out.print(table(counts, "rejections by reason"))
    if examples:
        out.print(table(examples, "examples"))


@warehouse_app.command("sample")
def warehouse_sample(
    ctx: typer.Context,
    n: int = typer.Option(3, "-n", help="Documents to show."),
    snapshot: Optional[str] = typer.Option(None, help="Default: the newest."),
    seed: int = typer.Option(0, help="Another seed, other documents."),
    chars: int = typer.Option(400, help="Characters of text to show."),
) -> None:
    """A few kept documents with the start of their text."""
    for doc in _query(ctx, lambda wh: wh.sample(n, snapshot, seed)):
        out.rule(f"{doc['title'] or '(no title)'}", align="left")
        out.print(f"[dim]{doc['doc_id']}  {doc['url']}  {doc['lang']} {doc['lang_score']:.2f}  {doc['chars']} chars[/]",
                  highlight=False)
        out.print(doc["text"][:chars] + ("…" if len(doc["text"]) > chars else ""), highlight=False)


@warehouse_app.command("verify")
def warehouse_verify(
    ctx: typer.Context,
    record: bool = typer.Option(False, "--record", help="First record checksums of Parquet files that have none "
                                                         "(data roots from before checksums; trusts them as they are)."),
) -> None:
    """Check every Parquet file against its checksum and the DuckDB file against its Parquet mirror; exit 1 on a problem."""
    from warehouse import WarehouseError  # deferred: DuckDB and pyarrow, not needed for --help
    from warehouse.verify import record_missing, verify

    cfg = cli_config(ctx, [])
    if record:
        out.print(f"recorded the checksums of {len(record_missing(cfg.data_root))} file(s)")
    try:
        problems, checked = verify(cfg.data_root)
    except WarehouseError as exc:
        fail(str(exc))
    if not problems:
        out.print(f"[bold green]ok[/]: {checked} Parquet files match their checksums; warehouse.duckdb matches its mirror")
        return
    # not a table: the paths and commands stay whole, to copy and paste
    out.print(f"[bold red]{len(problems)} problem(s)[/] in {escape(str(cfg.data_root))}:")
    for p in problems:
        out.print(f"  {escape(p.path)}\n    what: {escape(p.what)}\n    fix:  {escape(p.fix)}", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


@warehouse_app.command("rebuild")
def warehouse_rebuild(
    ctx: typer.Context,
    mirror: bool = typer.Option(False, "--mirror", help="The other way: write the Parquet table mirror again from warehouse.duckdb."),
    force: bool = typer.Option(False, help="Replace a warehouse.duckdb that opens (it is renamed, not deleted)."),
) -> None:
    """Make warehouse.duckdb again from the Parquet table mirror (parquet/tables/), checksums checked first."""
    from warehouse import WarehouseError  # deferred: DuckDB and pyarrow, not needed for --help
    from warehouse.files import DiskFullError
    from warehouse.verify import rebuild, refresh_mirror

    cfg = cli_config(ctx, [])
    try:
        if mirror:
            manifest = refresh_mirror(cfg.data_root)
            out.print(f"[bold green]mirror written[/]: {cfg.data_root / 'parquet' / 'tables' / manifest['generation']}")
            return
        counts = rebuild(cfg.data_root, force)
    except (WarehouseError, DiskFullError) as exc:
        fail(str(exc), code=1)
    out.print(f"[bold green]rebuilt[/] {cfg.data_root / 'warehouse.duckdb'}: "
              + ", ".join(f"{t} {n}" for t, n in counts.items()))


@warehouse_app.command("duplicates")
def warehouse_duplicates(ctx: typer.Context, doc_id: str = typer.Argument(..., help="A document id.")) -> None:
    """A document's dedup cluster, across snapshots: the kept document first, then the removed ones."""
    rows = _query(ctx, lambda wh: wh.duplicates(doc_id))
    for row in rows:
        row["kept"] = "kept" if row["kept"] else f"removed ({row['reason']})"
    out.print(table(rows, f"cluster of {doc_id} ({len(rows)} documents)",
                     ["kept", "doc_id", "snapshot", "title", "url", "chars"]))
