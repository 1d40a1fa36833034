"""``rqf rqvae ...``: look semantic IDs up; ``rqf rqvae encode`` is the core's ``rqf encode``."""

from __future__ import annotations

from pathlib import Path

import click

from rqf import RqfError


@click.group("rqvae")
def rqvae() -> None:
    """Use a trained RQ-VAE run: encode data, look up semantic IDs."""


@rqvae.command("lookup")
@click.argument("semantic_ids", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--item", "item_id", type=int, help="Print the semantic ID of this item id.")
@click.option("--code", help="Print the item with this semantic ID, e.g. 12,7,201,0.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def lookup_cmd(semantic_ids: Path, item_id: int | None, code: str | None, debug: bool) -> None:
    """Map an item id to its semantic ID, or a semantic ID back to its item."""
    from rqf.codes import SemanticIds

    ids = SemanticIds(semantic_ids)
    if item_id is None and code is None:
        raise RqfError("lookup: give --item ID or --code C1,C2,...")
    if item_id is not None:
        click.echo(",".join(str(int(c)) for c in ids.of_item(item_id)))
    if code is not None:
        try:
            parts = [int(c) for c in code.split(",")]
        except ValueError:
            raise RqfError(f"--code: expected comma-separated integers, got {code!r}") from None
        click.echo(ids.item_of(parts))
