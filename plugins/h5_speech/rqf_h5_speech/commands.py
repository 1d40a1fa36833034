"""``rqf speech ...``: migrate .npz caches, merge caches written in parallel, finalize one."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rqf_h5_speech.codecs import CODECS


@click.group("speech")
def speech() -> None:
    """Sharded MaskGCT feature caches."""


@speech.command("migrate")
@click.argument("source", type=click.Path(path_type=Path, file_okay=False))
@click.argument("target", type=click.Path(path_type=Path, file_okay=False))
@click.option("--samples-per-file", default=20000, show_default=True)
@click.option("--float32", "keep_float32", is_flag=True, help="Keep float32 (default: float16).")
@click.option("--compression", type=click.Choice(CODECS), default="none", show_default=True,
              help="none reads fastest; gzip (level 4) is what the original tools write.")
@click.option("--level", default=4, show_default=True, help="Compression level for gzip/zstd.")
@click.option("--workers", default=2, show_default=True, help="Compression worker threads.")
@click.option("--no-verify", is_flag=True, help="Skip the sample-by-sample check.")
@click.option("--rename", multiple=True, metavar="OLD=NEW",
              help="Store the .npz array OLD under the name NEW, e.g. mel=mel_spectrogram.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def migrate_cmd(source: Path, target: Path, samples_per_file: int, keep_float32: bool,
                compression: str, level: int, workers: int, no_verify: bool,
                rename: tuple[str, ...], debug: bool) -> None:
    """Convert a per-sample SOURCE/<key>.npz cache into a sharded cache in TARGET.

    Each .npz must hold hidden_states (T, dim) and may hold mel_spectrogram (T, 80) or
    (1, T, 80); other arrays are kept as they are.
    """
    from rqf import RqfError
    from rqf_h5_speech.migrate import migrate_npz

    names = {}
    for item in rename:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise RqfError(f"--rename {item!r}: expected OLD=NEW, e.g. mel=mel_spectrogram")
        names[old] = new
    report = migrate_npz(source, target, samples_per_file, not keep_float32, compression, level,
                         workers, verify=not no_verify, rename=names)
    click.echo(json.dumps(report))


@speech.command("merge")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.argument("parts", nargs=-1, required=True,
                type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def merge_cmd(out: Path, parts: tuple[Path, ...], debug: bool) -> None:
    """One cache OUT from caches PARTS written by separate processes (one per GPU or node).

    Shards are hard-linked into OUT under new numbers, not copied, so OUT must be on the same
    file system; the parts stay readable as they were. A key in two parts is refused.
    """
    from rqf_h5_speech.merge import merge_caches

    click.echo(json.dumps(merge_caches(out, parts)))


@speech.command("finalize")
@click.argument("cache", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def finalize_cmd(cache: Path, debug: bool) -> None:
    """Bring CACHE's hdf5_index.json up to date with every committed shard.

    A writer does this when it closes; run it on a cache whose writer was killed before the
    original tools (which read only hdf5_index.json) use it.
    """
    from rqf_h5_speech.merge import finalize_cache

    click.echo(json.dumps(finalize_cache(cache)))
