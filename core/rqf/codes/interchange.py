"""Semantic IDs in the formats the next tool reads, and back.

Out: ``index-json`` (LC-Rec / LETTER / MiniOneRec's ``.index.json``: ``{"<item>": ["<a_12>",
"<b_7>", "<c_201>", "<d_0>"]}``), ``csv``, ``parquet`` (needs pyarrow) and ``recbole`` (an atomic
file: ``item_id:token`` and ``semantic_id:token_seq``). What leaves is ``unique_codes``, the
collision-free ID a generative model decodes (the nearest codes plus the level that tells
items sharing them apart). In: an ``.index.json`` made by any tokenizer becomes a
``semantic_ids.h5`` for the item file, so its IDs are judged by the same harness as rqf's own.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

from rqf.codes.semantic_ids import SemanticIds, write_semantic_ids
from rqf.codes.statistics import unique_codes
from rqf.errors import ConfigError, DataError
from rqf.io import atomic_path, write_text_atomic

NUMBERINGS = ("id", "row")
DEFAULT_TOKEN = "<{letter}_{code}>"
_LAST_INTEGER = re.compile(r"(\d+)\D*$")


def token(template: str, level: int, code: int) -> str:
    """One ID token of the 0-based ``level``: ``{letter}`` is a, b, c… by level, ``{level}``
    its number counted from 1 (as in every message and column), ``{code}`` the code."""
    letter = chr(ord("a") + level) if level < 26 else f"l{level + 1}"
    try:
        return template.format(letter=letter, level=level + 1, code=code)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"--token {template!r}: a template may use {{letter}}, {{level}} and "
                          f"{{code}} ({exc})") from None


def _index_json(out: Path, keys: np.ndarray, key_name: str, codes: np.ndarray,
                template: str) -> None:
    data = {str(int(k)): [token(template, level, int(c)) for level, c in enumerate(row)]
            for k, row in zip(keys, codes)}
    write_text_atomic(out, json.dumps(data) + "\n")


def _csv(out: Path, keys: np.ndarray, key_name: str, codes: np.ndarray, template: str) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([key_name] + [f"level_{i + 1}" for i in range(codes.shape[1])])
    writer.writerows([[int(k), *map(int, row)] for k, row in zip(keys, codes)])
    write_text_atomic(out, text.getvalue())


def _recbole(out: Path, keys: np.ndarray, key_name: str, codes: np.ndarray,
             template: str) -> None:
    lines = [f"{key_name}:token\tsemantic_id:token_seq"]
    lines += [f"{int(k)}\t" + " ".join(token(template, level, int(c))
                                       for level, c in enumerate(row))
              for k, row in zip(keys, codes)]
    write_text_atomic(out, "\n".join(lines) + "\n")


def _parquet(out: Path, keys: np.ndarray, key_name: str, codes: np.ndarray,
             template: str) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("--format parquet needs pyarrow (pip install 'rqf[parquet]')") \
            from None
    columns = {key_name: pa.array(np.asarray(keys, np.int64))}
    columns.update({f"level_{i + 1}": pa.array(codes[:, i].astype(np.int64))
                    for i in range(codes.shape[1])})
    with atomic_path(out) as tmp:
        pq.write_table(pa.table(columns), tmp)


# one entry per format: writer(out, keys, key name, (n, levels) IDs, token template); the
# command line offers exactly these
WRITERS: dict[str, Callable[[Path, np.ndarray, str, np.ndarray, str], None]] = {
    "index-json": _index_json, "csv": _csv, "parquet": _parquet, "recbole": _recbole,
}
FORMATS = tuple(WRITERS)


def export_ids(ids: SemanticIds, fmt: str, out: Path, numbering: str = "id",
               template: str = DEFAULT_TOKEN) -> Path:
    """Write the collision-free IDs of ``ids`` to ``out`` in ``fmt``, keyed by item id or row."""
    if fmt not in WRITERS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    keys = ids.item_ids if numbering == "id" else np.arange(len(ids.item_ids))
    WRITERS[fmt](Path(out), keys, "item_id" if numbering == "id" else "row", ids.unique_codes,
                 template)
    return Path(out)


def read_index_json(path: Path, item_ids: np.ndarray, numbering: str = "id") -> np.ndarray:
    """(n, levels) codes of ``item_ids``, in their order, from an ``.index.json``.

    A token's code is the last integer in it (``<c_201>`` -> 201, ``201`` -> 201). Every item
    must have one entry, every entry one item, and every ID as many tokens as the others.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON index ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a mapping of item -> list of ID tokens")
    n = len(item_ids)
    row_of = {int(i): r for r, i in enumerate(item_ids)}
    codes: np.ndarray | None = None
    for key, tokens in data.items():
        try:
            number = int(key)
        except ValueError:
            raise DataError(f"{path}: key {key!r}: expected an integer item "
                            f"{'id' if numbering == 'id' else 'row'}") from None
        row = row_of.get(number) if numbering == "id" else (number if 0 <= number < n else None)
        if row is None:
            raise DataError(f"{path}: key {key!r}: no such item {numbering} in the item file "
                            f"(were the IDs made for it? --numbering {numbering})")
        if not isinstance(tokens, list) or not tokens:
            raise DataError(f"{path}: key {key!r}: expected a list of ID tokens")
        if codes is None:
            codes = np.full((n, len(tokens)), -1, np.int64)
        if len(tokens) != codes.shape[1]:
            raise DataError(f"{path}: key {key!r}: {len(tokens)} tokens, the first ID has "
                            f"{codes.shape[1]}")
        for level, tok in enumerate(tokens):
            match = _LAST_INTEGER.search(str(tok))
            if match is None:
                raise DataError(f"{path}: key {key!r}: token {tok!r} holds no code number")
            codes[row, level] = int(match.group(1))
    assert codes is not None
    missing = np.flatnonzero(codes[:, 0] < 0)
    if len(missing):
        raise DataError(f"{path}: {len(missing)} of the {n} items have no ID, e.g. item "
                        f"{int(item_ids[missing[0]])}")
    return codes


def import_ids(index: Path, item_ids: np.ndarray, out: Path, numbering: str = "id") -> Path:
    """``semantic_ids.h5`` for ``item_ids`` from an ``.index.json``.

    When the last token only numbers the items that share the others (0, 1, 2… in item order,
    as rqf's own export and the usual collision level do), it becomes the extra level of
    ``unique_codes`` and the rest are the ``codes``; otherwise every token is a code.
    """
    tokens = read_index_json(index, np.asarray(item_ids), numbering)
    codes = tokens
    if tokens.shape[1] > 1 and (unique_codes(tokens[:, :-1])[:, -1] == tokens[:, -1]).all():
        codes = tokens[:, :-1]
    attrs = {"levels": codes.shape[1], "codebook_size": int(codes.max()) + 1,
             "collision_handling": "imported", "tokenizer": "imported", "source": str(index)}
    return write_semantic_ids(out, np.asarray(item_ids, np.int64), codes, None, attrs)
