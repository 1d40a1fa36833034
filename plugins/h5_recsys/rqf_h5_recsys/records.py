"""Tables as logs arrive: CSV/TSV, JSON lines and Parquet, gzipped or not.

``table_rows`` gives a file's rows as lists of texts, the first being the header for JSON lines
and Parquet (their field names), so the readers of interactions and of item text pick columns
by name the same way whatever the format. Every refusal names the file, and the line (or row)
where it can.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from rqf import DataError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def kind_of(path: Path) -> str:
    """``json``, ``parquet`` or ``csv``, from the name (a ``.gz`` ending is looked past)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(JSON_SUFFIXES):
        return "json"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


def open_text(path: Path) -> io.TextIOBase:
    """The file as UTF-8 text; a ``.gz`` (or any gzip stream) is decompressed as it is read."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    if path.name.lower().endswith(".gz"):
        raise DataError(f"{path}: named .gz but not a gzip file")
    return open(path, encoding="utf-8", newline="")


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno}: not a JSON object ({exc.msg})") from None
            except RecursionError:
                raise DataError(f"{path}: line {lineno}: nested too deeply to be a "
                                "record") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {lineno}: expected a JSON object, got "
                                f"{type(record).__name__}")
            yield lineno, record


def json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) of a JSON-lines file, gzipped or not."""
    yield from _guard(path, _json_rows(path))


def parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, record) of a Parquet file, read a batch at a time (rows counted from 1)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        parquet = pq.ParquetFile(path)
        row = 0
        for batch in parquet.iter_batches(batch_size=65536):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except DataError:
        raise
    except Exception as exc:  # pyarrow's ArrowInvalid, OSError on a cut file
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _guard(path: Path, rows: Iterator[Any]) -> Iterator[Any]:
    """Decoding errors of any format as one line naming the file."""
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: a damaged gzip stream ({exc})") from None
    except EOFError:
        raise DataError(f"{path}: the gzip stream is cut short (an incomplete download?)") \
            from None


def records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row, record) of any table with named columns: JSON lines, Parquet, or a
    CSV/TSV with a header (RecBole's ``name:type`` header read as ``name``)."""
    kind = kind_of(path)
    if kind == "json":
        yield from json_records(path)
    elif kind == "parquet":
        yield from parquet_records(path)
    else:
        rows = table_rows(path)
        header = next(rows, None)
        if header is None:
            return
        names = [h.split(":")[0].strip() for h in header[1]]
        for lineno, row in rows:
            if row:
                yield lineno, dict(zip(names, row))


def table_rows(path: Path, delimiter: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """(line or row, cells) of any table; for JSON lines and Parquet the first is the header
    (the first record's field names) and each record's cells follow it."""
    kind = kind_of(path)
    if kind != "csv":
        source = json_records(path) if kind == "json" else parquet_records(path)
        header: list[str] | None = None
        for lineno, record in source:
            if header is None:
                header = list(record)
                yield 0, header
            yield lineno, [_value(record.get(name)) for name in header]
        return
    yield from _guard(path, _csv_rows(path, delimiter))


def _csv_rows(path: Path, delimiter: str | None) -> Iterator[tuple[int, list[str]]]:
    with open_text(path) as fh:
        sample = fh.read(4096)
        fh.seek(0)
        if delimiter is None:
            first = sample.partition("\n")[0]
            delimiter = "\t" if "\t" in first else ("," if "," in first else " ")
        reader = csv.reader(fh, delimiter=delimiter, skipinitialspace=True, strict=True)
        try:
            for row in reader:
                yield reader.line_num, row
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: not readable as CSV ({exc})") \
                from None
