"""``rqf recommend``: a ranker's recommendations for given histories."""

from __future__ import annotations

from pathlib import Path

import click

from rqf.errors import RqfError


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--history", help="One user's item ids, oldest first, e.g. 12,7,33.")
@click.option("--users", type=click.Path(path_type=Path, dir_okay=False),
              help="A file of histories, one a line: USER<TAB>12,7,33 (or just 12,7,33); "
              "USER is read by models with user tokens.")
@click.option("--k", type=int, default=None, help="Items per user (default: the model's top_k).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def recommend(run_dir: Path, history: str | None, users: Path | None, k: int | None,
              device: str, debug: bool) -> None:
    """Recommend items for given histories with the model of RUN_DIR (tiger, a baseline…)."""
    from rqf.pipeline import load
    from rqf.ranking import NextItemModel, parse_history

    if (history is None) == (users is None):
        raise RqfError("recommend: give --history 12,7,33 or --users FILE")
    if k is not None and k < 1:
        raise RqfError(f"--k: expected a positive number of items, got {k}")
    if users is not None and not users.is_file():
        raise RqfError(f"--users {users}: no such file")
    names: list[str | None] = [None]
    shown = ["-"]
    if history is not None:
        parsed = [parse_history(history, "--history")]
    else:
        try:
            text = users.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RqfError(f"--users {users}: cannot read ({exc})") from None
        names, parsed, shown = [], [], []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            name, tab, items = line.partition("\t")
            where = f"{users}: line {lineno}"
            names.append(name.strip() if tab else None)  # unnamed: an unknown user
            shown.append(name.strip() if tab else str(len(shown) + 1))
            parsed.append(parse_history(items if tab else line, where))
    model = load(run_dir, device=device)
    if not isinstance(model, NextItemModel):
        raise RqfError(f"{run_dir}: model {model.name!r} does not rank items")
    top = model.recommend_histories(parsed, k, None if users is None else names)
    for name, items in zip(shown, top):
        line = ",".join(str(int(i)) for i in items if i >= 0)
        click.echo(line if users is None else f"{name}\t{line}")
