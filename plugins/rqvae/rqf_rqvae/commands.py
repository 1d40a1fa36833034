"""``rqf rqvae ...``: encode new data with a trained run, and look semantic IDs up."""

from __future__ import annotations

from pathlib import Path

import click

from rqf.errors import RqfError


@click.group("rqvae")
def rqvae() -> None:
    """Use a trained RQ-VAE run: encode data, look up semantic IDs."""


def encode_with_run(run_dir: Path, out: Path, overrides: tuple[str, ...] = (),
                    device: str = "auto") -> Path:
    """Encode the data named by the run's pipeline (after ``overrides``) with its model."""
    from rqf.config import apply_overrides
    from rqf.interfaces import ItemVectors
    from rqf.params import validate_params
    from rqf.pipeline import build_data
    from rqf.plugins import get_plugins
    from rqf.rundir import read_run_config
    from rqf_rqvae.model import RQVAEModel

    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise RqfError(f"{run_dir}: not an rqf run directory (no config.yaml)")
    config = apply_overrides(read_run_config(config_path), overrides)
    model = RQVAEModel.load(run_dir / "model.pt", device=device)
    registry = get_plugins().registry
    sections = {}
    for kind in ("storage", "dataset"):  # overrides may have changed them: validate again
        cls = registry.get(kind, config[kind]["type"], f"{kind}.type")
        sections[kind] = {"type": cls.name, **validate_params(
            cls.params, {k: v for k, v in config[kind].items() if k != "type"}, kind, Path.cwd())}
    storage, dataset = build_data(sections["storage"], sections["dataset"])
    with storage:
        dim = dataset.describe().get("input_dim")
        if dim != model.input_dim:
            raise RqfError(f"the data is {dim}-d but the model in {run_dir} expects "
                           f"{model.input_dim}-d input")
        source = dataset.export_source()
        if isinstance(source, ItemVectors):
            return model.export_items(source, out)
        return model.export_sequences(source, out)


@rqvae.command("encode")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="semantic_ids.h5 to write (a folder for utterance tokens).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Point the run's storage at new data, e.g. storage.items=new_items.h5.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def encode_cmd(run_dir: Path, out: Path, overrides: tuple[str, ...], device: str,
               debug: bool) -> None:
    """Encode data with the model trained in RUN_DIR."""
    path = encode_with_run(run_dir, out, overrides, device)
    click.echo(f"wrote {path}")


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
