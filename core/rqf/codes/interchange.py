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

NUMBERINGS = ("id", "row", "key")
DEFAULT_TOKEN = "<{letter}_{code}>"
_LAST_INTEGER = re.compile(r"(\d+)\D*$")


TEMPLATE_FIELDS = ("letter", "level", "code")
MAX_TOKEN = 64  # characters of one token: an ID is a few short tokens for a language model


def check_template(template: str) -> str:
    """``template`` when it makes one token per level and code: the fields it names are
    ``{letter}``, ``{level}`` and ``{code}`` alone (no attribute or index, which would read
    Python objects), ``{code}`` among them (or every ID would be the same), and a token stays
    short; a one-line refusal naming ``--token`` otherwise."""
    import string

    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"--token {template!r}: not a template ({exc})") from None
    names = [name for _, name, _, _ in parts if name is not None]
    for name in names:
        if name not in TEMPLATE_FIELDS:
            raise ConfigError(f"--token {template!r}: {{{name}}} is not a field; a template "
                              "may use {letter}, {level} and {code}, nothing inside them")
    if "code" not in names:
        raise ConfigError(f"--token {template!r}: has no {{code}}, so every item would get "
                          "the same ID; e.g. <{letter}_{code}>")
    if any(len(spec or "") > 8 or (spec and "{" in spec) for _, _, spec, _ in parts):
        raise ConfigError(f"--token {template!r}: a format spec of at most 8 characters, "
                          "without nested fields (e.g. {code:03d})")
    try:
        longest = template.format(letter="zz", level=99, code=2**31 - 1)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--token {template!r}: {exc}") from None
    if len(longest) > MAX_TOKEN:
        raise ConfigError(f"--token {template!r}: makes tokens of up to {len(longest)} "
                          f"characters; at most {MAX_TOKEN}")
    return template


def token(template: str, level: int, code: int) -> str:
    """One ID token of the 0-based ``level``: ``{letter}`` is a, b, c… by level, ``{level}``
    its number counted from 1 (as in every message and column), ``{code}`` the code."""
    letter = chr(ord("a") + level) if level < 26 else f"l{level + 1}"
    try:
        return template.format(letter=letter, level=level + 1, code=code)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"--token {template!r}: a template may use {{letter}}, {{level}} and "
                          f"{{code}} ({exc})") from None


def _key(k: object) -> str | int:
    """An item's key as written: an item id or row as a whole number, an item key as text."""
    return k if isinstance(k, str) else int(k)  # type: ignore[call-overload]


def _index_json(out: Path, keys: np.ndarray, key_name: str, codes: np.ndarray,
                template: str) -> None:
    data = {str(_key(k)): [token(template, level, int(c)) for level, c in enumerate(row)]
            for k, row in zip(keys, codes)}
    write_text_atomic(out, json.dumps(data) + "\n")


def _csv(out: Path, keys: np.ndarray, key_name: str, codes: np.ndarray, template: str) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([key_name] + [f"level_{i + 1}" for i in range(codes.shape[1])])
    writer.writerows([[_key(k), *map(int, row)] for k, row in zip(keys, codes)])
    write_text_atomic(out, text.getvalue())


def _recbole(out: Path, keys: np.ndarray, key_name: str, codes: np.ndarray,
             template: str) -> None:
    # RecBole's item_id:token is text: an item key (an ASIN) is its item_id there
    lines = [f"{'item_id' if key_name == 'item_key' else key_name}:token\tsemantic_id:token_seq"]
    lines += [f"{_key(k)}\t" + " ".join(token(template, level, int(c))
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
    columns = {key_name: pa.array([str(k) for k in keys]) if key_name == "item_key"
               else pa.array(np.asarray(keys, np.int64))}
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


def trailing_constant_levels(unique: np.ndarray) -> int:
    """How many levels at the end hold one value for every item (the extra level when no two
    items share a tuple): tokens a language model would learn nothing from. One level stays."""
    count = 0
    for level in range(unique.shape[1] - 1, 0, -1):
        if len(unique) and (unique[:, level] != unique[0, level]).any():
            break
        count += 1
    return count


def export_ids(ids: SemanticIds, fmt: str, out: Path, numbering: str = "id",
               template: str = DEFAULT_TOKEN, skip_constant: bool = False) -> Path:
    """Write the collision-free IDs of ``ids`` to ``out`` in ``fmt``, keyed by item id, row or
    the items' own key; an ``.index.json`` of items with keys gets its ``item2id`` map beside
    it (``item2id_path``: ``KEY<TAB>number`` lines, the number the index is keyed by; for
    ``key`` numbering, the item id), as LC-Rec ships its datasets."""
    if fmt not in WRITERS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    check_template(template)
    if numbering == "key" and not ids.keys.has_keys:
        raise DataError(f"{ids.path}: holds no item keys (the data's items had whole-number "
                        "ids); --numbering id")
    keys: np.ndarray = ids.item_ids if numbering == "id" else np.arange(len(ids.item_ids)) \
        if numbering == "row" else np.array(ids.keys.keys, dtype=object)
    name = {"id": "item_id", "row": "row", "key": "item_key"}[numbering]
    codes = ids.unique_codes
    if skip_constant:
        codes = codes[:, :codes.shape[1] - trailing_constant_levels(codes)]
    WRITERS[fmt](Path(out), keys, name, codes, template)
    if fmt == "index-json" and ids.keys.has_keys:
        numbers = ids.item_ids if numbering == "key" else keys
        write_text_atomic(item2id_path(Path(out)), "".join(
            f"{k}\t{int(n)}\n" for k, n in zip(ids.keys.keys or [], numbers)))
    return Path(out)


def item2id_path(out: Path) -> Path:
    """Where an ``.index.json``'s item2id map goes: ``X.index.json`` -> ``X.item2id``."""
    name = out.name
    stem = name[: -len(".index.json")] if name.endswith(".index.json") else name
    return out.with_name(stem + ".item2id")


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


MAX_CODE = 2**31 - 1  # codes are stored as 32-bit integers


def _code(tok: object) -> int | None:
    """The code a token holds: its last run of digits (``<c_201>`` -> 201, ``201`` -> 201),
    when that run is a whole number of its own (not ``-7`` or the ``5`` of ``1.5``)."""
    if isinstance(tok, bool) or not isinstance(tok, (str, int)):
        return None
    text = str(tok)
    match = _LAST_INTEGER.search(text)
    if match is None or (match.start() and text[match.start() - 1] in "-+."):
        return None
    value = int(match.group(1))
    return value if value <= MAX_CODE else None


def read_index_json(path: Path, item_ids: np.ndarray, numbering: str = "id",
                    item_keys: list[str] | None = None) -> np.ndarray:
    """(n, levels) codes of ``item_ids``, in their order, from an ``.index.json``.

    A token is a string (or a whole number) whose code is its last run of digits
    (``<c_201>`` -> 201, ``201`` -> 201); a negative or fractional number, a list or an object
    is refused. Keys are integers written plainly (``"1"``, never ``"01"`` beside it), each
    once. Every item must have one entry, every entry one item, and every ID as many tokens as
    the others: one line names the file, the key and what was found.
    """
    try:
        data = json.loads(Path(path).read_text(), object_pairs_hook=_refuse_duplicates)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except _DuplicateKey as exc:
        raise DataError(f"{path}: key {str(exc)!r} appears twice; each item has one ID") \
            from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to be an index (a mapping of item -> "
                        "list of ID tokens)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON index ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a mapping of item -> list of ID tokens")
    n = len(item_ids)
    row_of = {int(i): r for r, i in enumerate(item_ids)}
    if numbering == "key" and item_keys is None:
        raise DataError(f"{path}: --numbering key: the item file has no item keys to match")
    row_of_key = {k: r for r, k in enumerate(item_keys or [])}
    codes: np.ndarray | None = None
    for key, tokens in data.items():
        try:
            number = int(key)
        except ValueError:
            number = None
        if numbering == "key":
            row = row_of_key.get(key)
        elif number is None or str(number) != key:
            raise DataError(f"{path}: key {key!r}: expected an integer item "
                            f"{'id' if numbering == 'id' else 'row'} written plainly (e.g. "
                            f"{'42' if number is None else number}; --numbering key reads "
                            "keys such as ASINs)")
        else:
            row = row_of.get(number) if numbering == "id" else \
                (number if 0 <= number < n else None)
        if row is None:
            raise DataError(f"{path}: key {key!r}: no such item {numbering} in the item file "
                            f"(were the IDs made for it? --numbering {numbering})")
        if not isinstance(tokens, list) or not tokens:
            raise DataError(f"{path}: key {key!r}: expected a list of ID tokens, got "
                            f"{type(tokens).__name__}")
        if codes is None:
            codes = np.full((n, len(tokens)), -1, np.int64)
        if len(tokens) != codes.shape[1]:
            raise DataError(f"{path}: key {key!r}: {len(tokens)} tokens, the first ID has "
                            f"{codes.shape[1]}")
        for level, tok in enumerate(tokens):
            code = _code(tok)
            if code is None:
                raise DataError(f"{path}: key {key!r}: token {tok!r} holds no code: expected "
                                f"a string ending in a whole number from 0 to {MAX_CODE} "
                                "(e.g. <a_12>)")
            codes[row, level] = code
    assert codes is not None
    missing = np.flatnonzero(codes[:, 0] < 0)
    if len(missing):
        raise DataError(f"{path}: {len(missing)} of the {n} items have no ID, e.g. item "
                        f"{int(item_ids[missing[0]])}")
    return codes


def import_ids(index: Path, item_ids: np.ndarray, out: Path, numbering: str = "id",
               item_keys: list[str] | None = None) -> Path:
    """``semantic_ids.h5`` for ``item_ids`` from an ``.index.json``.

    When the last token only numbers the items that share the others (0, 1, 2… in item order,
    as rqf's own export and the usual collision level do), it becomes the extra level of
    ``unique_codes`` and the rest are the ``codes``; otherwise every token is a code.
    """
    tokens = read_index_json(index, np.asarray(item_ids), numbering, item_keys)
    codes = tokens
    if tokens.shape[1] > 1 and (unique_codes(tokens[:, :-1])[:, -1] == tokens[:, -1]).all():
        codes = tokens[:, :-1]
    attrs = {"levels": codes.shape[1], "codebook_size": int(codes.max()) + 1,
             "collision_handling": "imported", "tokenizer": "imported", "source": str(index)}
    return write_semantic_ids(out, np.asarray(item_ids, np.int64), codes, None, attrs,
                              item_keys=item_keys)
