"""``rqf ids export | import | lookup``: semantic IDs out to the next tool, in from another
tokenizer, and looked up; for the ``semantic_ids.h5`` of every tokenizer."""

from __future__ import annotations

from pathlib import Path

import click

from rqf.codes.interchange import FORMATS
from rqf.errors import RqfError


@click.group("ids")
def ids() -> None:
    """Semantic IDs: export them for another tool, import another tool's, look one up."""


@ids.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True,
              type=click.Choice(FORMATS),
              help="index-json: LC-Rec / LETTER / MiniOneRec's .index.json; recbole: an atomic "
                   "file; parquet needs pyarrow.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--numbering", type=click.Choice(["id", "row", "key"]), default="id",
              show_default=True,
              help="Key each ID by item id, by 0-based row of the item file, or by the items' "
                   "own keys (ASINs). An .index.json of items with keys gets X.item2id beside "
                   "it (KEY<TAB>number lines).")
@click.option("--token", default="<{letter}_{code}>", show_default=True,
              help="Token template of index-json and recbole: {letter} (a, b, c… by level), "
                   "{level}, {code}.")
@click.option("--skip-constant-levels", is_flag=True,
              help="Leave out levels at the end that are the same for every item (the extra "
                   "level when no two items share a tuple).")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def export(run: Path, fmt: str, out: Path, numbering: str, token: str,
           skip_constant_levels: bool, force: bool, debug: bool) -> None:
    """Write the semantic IDs of RUN (a run folder or a semantic_ids.h5) for another tool."""
    from rqf.codes import SemanticIds
    from rqf.codes.interchange import check_template, export_ids, item2id_path
    from rqf.io import check_output

    check_template(token)
    path = _ids_file(run)
    ids = SemanticIds(path)  # checked whole before anything is written
    check_output(out, force, [("is the file this command reads", path)])
    if fmt == "index-json" and ids.keys.has_keys:
        check_output(item2id_path(out), force, [("is the file this command reads", path),
                                                ("is the --out file", out)])
    click.echo(f"wrote {export_ids(ids, fmt, out, numbering, token, skip_constant_levels)}")


@ids.command("import")
@click.argument("index", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--items", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The item file the IDs are for (any installed storage that recognises it, "
                   "e.g. item_data.h5): every item must have one.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="semantic_ids.h5 to write (what tiger's model.semantic_ids reads).")
@click.option("--numbering", type=click.Choice(["id", "row", "key"]), default="id",
              show_default=True,
              help="The index's keys are item ids, 0-based rows of the item file, or the "
                   "items' own keys (ASINs, the item file's item_keys).")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def import_(index: Path, items: Path, out: Path, numbering: str, force: bool,
            debug: bool) -> None:
    """Turn another tool's .index.json (LC-Rec, LETTER, MiniOneRec) into semantic_ids.h5."""
    from rqf.codes.interchange import import_ids
    from rqf.io import check_output
    from rqf.plugins import item_source_of

    check_output(out, force, [("is the file this command reads", p) for p in (index, items)])
    ids, keys = item_source_of(items)
    if numbering == "key" and keys is None:
        raise RqfError(f"--items {items}: has no item keys (its items have whole-number ids); "
                       "--numbering id")
    click.echo(f"wrote {import_ids(index, ids, out, numbering, keys)}")


@ids.command("lookup")
@click.argument("semantic_ids", type=click.Path(path_type=Path))
@click.option("--item", "item_id", help="Print the semantic ID of this item (its key, e.g. an "
              "ASIN, or its id).")
@click.option("--code", help="Print the item with this semantic ID, e.g. 12,7,201,0.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def lookup(semantic_ids: Path, item_id: str | None, code: str | None, debug: bool) -> None:
    """Map an item id to its semantic ID, or a semantic ID back to its item (SEMANTIC_IDS: a
    semantic_ids.h5 or the run folder that holds one)."""
    from rqf.codes import SemanticIds

    if item_id is None and code is None:
        raise RqfError("lookup: give --item ID or --code C1,C2,...")
    ids_ = SemanticIds(_ids_file(semantic_ids))
    if item_id is not None:
        found = ids_.keys.id_of(item_id, "--item")
        click.echo(",".join(str(int(c)) for c in ids_.of_item(found)))
    if code is not None:
        try:
            parts = [int(c) for c in code.split(",")]
        except ValueError:
            raise RqfError(f"--code: expected comma-separated integers, got {code!r}") from None
        item = ids_.item_of(parts)
        click.echo(f"{item}\t{ids_.keys.key_of(item)}" if ids_.keys.has_keys else item)


@ids.command("judge")
@click.argument("ids_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The folder holding item_data.h5 and sequence.h5 the IDs are for.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default="runs/judge",
              show_default=True, help="Where the runs and judge.md go.")
@click.option("--steps", default=1000, show_default=True, help="Training steps of each run.")
@click.option("--model", default="genret", show_default=True,
              help="The generative retriever (any ranker that reads model.semantic_ids).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a value of every retriever's pipeline (repeatable).")
@click.option("--seed", default=0, show_default=True)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def judge_cmd(ids_files: tuple[Path, ...], data: Path, out: Path, steps: int, model: str,
              overrides: tuple[str, ...], seed: int, debug: bool) -> None:
    """Judge sets of semantic IDs (IDS_FILES: semantic_ids.h5 files or the run folders that
    hold them) by the retrieval they enable: the same retriever trained on each, the floors
    beside them, one table with standard errors and a paired test against the first."""
    from rqf.judge import judge

    files = [_ids_file(p) for p in ids_files]
    report = judge(files, data, out, steps, model, overrides, seed,
                   echo=lambda m: click.echo(m, err=True))
    click.echo(report.read_text())
    click.echo(f"judge report: {report}")


def _ids_file(path: Path) -> Path:
    """A run folder stands for the semantic_ids.h5 inside it."""
    return path / "semantic_ids.h5" if path.is_dir() else path
