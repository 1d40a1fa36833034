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


@speech.command("extract")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--model", required=True, metavar="NAME_OR_FOLDER",
              help="A speech model transformers loads, e.g. facebook/w2v-bert-2.0 (or its "
                   "folder).")
@click.option("--layer", default=17, show_default=True,
              help="Which hidden state: 0 is the input projection, N the N-th layer's output.")
@click.option("--batch-seconds", default=120.0, show_default=True,
              help="Padded audio per batch; utterances are batched by length.")
@click.option("--device", default="auto", show_default=True,
              help="auto: this rank's GPU when there is one, else cpu.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
              default="auto", show_default=True, help="auto: float16 on a GPU, float32 on cpu.")
@click.option("--workers", type=int, default=None,
              help="Processes reading and resampling audio while the model runs (0: none; "
                   "default: none on a CPU, where the model needs every core, else up to 4).")
@click.option("--save-workers", default=2, show_default=True,
              help="Threads compressing what is written (num_save_workers).")
@click.option("--samples-per-file", default=20000, show_default=True)
@click.option("--compression", type=click.Choice(CODECS), default="gzip", show_default=True,
              help="gzip (level 4) is what the original tools write; none reads fastest.")
@click.option("--stats", default="sample", show_default=True, metavar="sample|all|none|FILE",
              help="Normalisation statistics kept with the cache: from a sample of "
                   "utterances, from all of them, none, or copied from FILE (.npz, or "
                   "MaskGCT's .pt with mean and var).")
@click.option("--stats-utterances", default=2000, show_default=True,
              help="Utterances in the sample for --stats sample.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def extract_cmd(source: Path, out: Path, model: str, layer: int, batch_seconds: float,
                device: str, dtype: str, workers: int | None, save_workers: int,
                samples_per_file: int, compression: str, stats: str, stats_utterances: int,
                no_progress: bool, debug: bool) -> None:
    """Audio files in SOURCE (a folder, a list of paths, or a Lhotse manifest) to a feature
    cache in OUT: one layer's hidden states and an 80-bin mel per utterance, keyed by the
    path relative to SOURCE without extension.

    Started again, it extracts only the keys not yet committed. Under torchrun each rank
    writes a share into OUT.parts/ and rank 0 builds OUT from them.
    """
    from rqf import RqfError
    from rqf_h5_speech.extract import extract

    for name, value in (("--batch-seconds", batch_seconds), ("--samples-per-file",
                                                             samples_per_file),
                        ("--stats-utterances", stats_utterances)):
        if value <= 0:
            raise RqfError(f"{name}: expected a positive number, got {value}")
    report = extract(source, out, model, layer, batch_seconds=batch_seconds, device=device,
                     dtype=dtype, workers=workers, save_workers=save_workers,
                     samples_per_file=samples_per_file, compression=compression, stats=stats,
                     stats_utterances=stats_utterances, progress=not no_progress)
    if report is not None:  # rank 0 reports for every rank
        click.echo(json.dumps(report))
