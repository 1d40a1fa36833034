"""``rqf recommend``: a ranker's recommendations for given histories."""

from __future__ import annotations

from pathlib import Path

import click

from rqf.errors import RqfError


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--history", help="One user's items, oldest first: ids (12,7,33) or, where the "
              "data has them, the items' own keys (B00X1,B00X2).")
@click.option("--user", "user_key", help="A user of the run's sequences: recommend what "
              "follows their whole history there.")
@click.option("--users", type=click.Path(path_type=Path, dir_okay=False),
              help="A file of histories, one a line: USER<TAB>12,7,33 (or just 12,7,33); "
              "USER is read by models with user tokens.")
@click.option("--k", type=int, default=None, help="Items per user (default: the model's top_k).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def recommend(run_dir: Path, history: str | None, user_key: str | None, users: Path | None,
              k: int | None, device: str, debug: bool) -> None:
    """Recommend items with the model of RUN_DIR (tiger, sasrec, a baseline…): for a history,
    a user of the run's data, or a file of histories. Items are read and printed as the
    data's own keys (ASINs) where it has them, else as ids."""
    from rqf.pipeline import load
    from rqf.ranking import NextItemModel

    if sum(x is not None for x in (history, user_key, users)) != 1:
        raise RqfError("recommend: give one of --history 12,7,33, --user KEY or --users FILE")
    if k is not None and k < 1:
        raise RqfError(f"--k: expected a positive number of items, got {k}")
    if users is not None and not users.is_file():
        raise RqfError(f"--users {users}: no such file")
    keys, table = _run_items(run_dir, needed=user_key is not None)
    names: list[str | None] = [None]
    shown = ["-"]
    if history is not None:
        parsed = [_items(history, "--history", keys)]
    elif user_key is not None:
        parsed, names, shown = [_history_of(user_key, table, run_dir)], [user_key], [user_key]
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
            parsed.append(_items(items if tab else line, where, keys))
    model = load(run_dir, device=device)
    if not isinstance(model, NextItemModel):
        raise RqfError(f"{run_dir}: model {model.name!r} does not rank items")
    top = model.recommend_histories(parsed, k, None if history is not None else names)
    for name, items in zip(shown, top):
        line = ",".join(keys.key_of(i) if keys is not None else str(int(i))
                        for i in items if i >= 0)
        click.echo(line if history is not None else f"{name}\t{line}")


def _items(text: str, where: str, keys):
    """Item ids of a history: ids, or keys where the data has them."""
    from rqf.ranking import parse_history

    if keys is None or not keys.has_keys:
        return parse_history(text, where)
    return keys.ids_of(text, where)


def _run_items(run_dir: Path, needed: bool):
    """The run's items and their keys (an ``ItemKeys``) and its sequences, from the data its
    pipeline names; (None, None) when that data cannot be opened and nothing here needs it."""
    from rqf.errors import DataError
    from rqf.keys import ItemKeys
    from rqf.pipeline import _reopen, open_storage
    from rqf.plugins import get_plugins

    plugins = get_plugins()
    cfg, _ = _reopen(Path(run_dir), plugins)
    try:
        storage = open_storage(cfg["storage"], plugins)  # the items and sequences, no dataset
    except DataError:
        if needed:
            raise
        return None, None
    try:
        ids = getattr(storage, "item_ids", None)
        if ids is None:
            return None, None
        keys = ItemKeys(ids, storage.item_keys(), f"the run's items ({cfg['storage']['type']})")
        return keys, getattr(storage, "table", None)
    finally:
        storage.close()


def _history_of(user: str, table, run_dir: Path) -> list[int]:
    """Every item of ``user``'s sequence in the run's data, oldest first."""
    if table is None:
        raise RqfError(f"--user: the data of {run_dir} holds no user sequences")
    found = [i for i, u in enumerate(table.user_ids) if str(u) == user]
    if not found:
        raise RqfError(f"--user {user!r}: no such user in the sequences of {run_dir}")
    u = found[0]
    return [int(i) for i in table.item_ids[table.offsets[u]:table.offsets[u + 1]]]
