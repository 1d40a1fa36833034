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
@click.option("--embeddings", type=click.Path(path_type=Path),
              help="(n, d) float .npy of item embeddings; writes item_data.h5.")
@click.option("--item-ids", type=click.Path(path_type=Path),
              help="(n,) integer .npy: the item id of each embedding row (default: row number).")
@click.option("--delimiter", default=None, help="Column separator (default: detected).")
@click.option("--time-column", default=2, show_default=True,
              help="0-based column of the timestamp (user and item are columns 0 and 1).")
@click.option("--no-timestamps", is_flag=True, help="The file has no timestamp column.")
@click.option("--drop-unknown-items", is_flag=True,
              help="Drop interactions whose item has no embedding instead of failing.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def from_interactions_cmd(interactions: Path, out_dir: Path, embeddings: Path | None,
                          item_ids: Path | None, delimiter: str | None, time_column: int, no_timestamps: bool,
                          drop_unknown_items: bool, debug: bool) -> None:
    """Build sequence.h5 (and item_data.h5) from a CSV/TSV of user, item[, timestamp]."""
    from rqf_h5_recsys.writer import from_interactions

    written = from_interactions(interactions, out_dir, embeddings, item_ids, delimiter,
                                time_col=None if no_timestamps else time_column,
                                drop_unknown_items=drop_unknown_items)
    for kind, path in written.items():
        click.echo(f"wrote {kind}: {path}")
