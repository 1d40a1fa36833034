"""``rqf rqvae ...``: the core's ``rqf encode`` and ``rqf ids lookup`` under their former
names (they serve every tokenizer)."""

from __future__ import annotations

import click


@click.group("rqvae")
def rqvae() -> None:
    """Use a trained RQ-VAE run: encode data, look up semantic IDs."""
