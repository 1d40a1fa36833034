"""Next-item examples read from a sequence view: what every ranker trains and is measured on.

A history is (n, H) item ids, left-aligned and -1 padded, unless a function says otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from rqf.data import SequenceView, missing_members
from rqf.errors import ConfigError, DataError, RqfError
from rqf.interfaces import Dataset


@dataclass
class Examples:
    """Next-item examples: ``users`` (rows of the sequence table), ``history`` (n, H) item ids,
    left-aligned, -1 padded; ``target``; for ranked examples the ``user_ids`` (as in
    sequence.h5) too."""

    users: np.ndarray
    history: np.ndarray
    target: np.ndarray
    user_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, pick: np.ndarray) -> "Examples":
        return Examples(self.users[pick], self.history[pick], self.target[pick],
                        None if self.user_ids is None else self.user_ids[pick])


def sequence_table(view: Dataset) -> tuple[Any, Any]:
    if missing_members(view, SequenceView):
        raise ConfigError("dataset.type: next-item models read user sequences: use "
                          "dataset: sequences (with storage.sequences) and a sequence splitter "
                          "such as leave_last_out")
    records = view.records  # type: ignore[attr-defined]
    return view.table, records  # type: ignore[attr-defined]


def _gather(table: Any, base: np.ndarray, begin: np.ndarray, end: np.ndarray,
            width: int) -> np.ndarray:
    """(n, width) item ids of positions [begin, end) of each row's sequence, -1 padded."""
    n = len(base)
    out = np.full((n, width), -1, np.int64)
    lengths = end - begin
    rows = np.repeat(np.arange(n), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = np.arange(int(lengths.sum())) - starts
    out[rows, cols] = table.item_ids[np.repeat(base + begin, lengths) + cols]
    return out


def eval_examples(view: Dataset, history: int) -> Examples:
    """One example per record with a target: its last ``history`` inputs -> the target."""
    table, r = sequence_table(view)
    has = (r.target >= 0) & (r.end > r.start)
    user, start, end, target = r.user[has], r.start[has], r.end[has], r.target[has]
    base = table.offsets[user]
    return Examples(user, _gather(table, base, np.maximum(start, end - history), end, history),
                    table.item_ids[base + target], table.user_ids[user])


def train_examples(view: Dataset, history: int) -> Examples:
    """Every next item inside each record's inputs: positions start+1 .. end-1 as targets."""
    table, r = sequence_table(view)
    counts = np.maximum(r.end - r.start - 1, 0)
    user = np.repeat(r.user, counts)
    start = np.repeat(r.start, counts)
    pos = start + 1 + (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))
    base = table.offsets[user]
    return Examples(user, _gather(table, base, np.maximum(start, pos - history), pos, history),
                    table.item_ids[base + pos])


def sequence_rows(view: Dataset, width: int) -> np.ndarray:
    """(n, width) item ids of the last ``width`` inputs of each record with two or more,
    right-aligned (the newest item last), -1 padded on the left: what a causal model trains on."""
    table, r = sequence_table(view)
    keep = r.end - r.start >= 2
    start, end = r.start[keep], r.end[keep]
    base = table.offsets[r.user[keep]]
    left = _gather(table, base, np.maximum(start, end - width), end, width)
    return right_align(left)


def right_align(history: np.ndarray) -> np.ndarray:
    """Left-aligned, -1 padded rows moved to the right end, order kept."""
    lengths = (history >= 0).sum(1)
    width = history.shape[1]
    cols = np.arange(width)[None, :] - (width - lengths)[:, None]
    rows = np.arange(len(history))[:, None]
    return np.where(cols >= 0, history[rows, np.maximum(cols, 0)], -1)


def dedup_history(history: np.ndarray) -> np.ndarray:
    """Left-aligned, -1 padded rows with each item kept at its latest position only (the
    order of the kept items unchanged), left-aligned again."""
    n, width = history.shape
    rows, cols = np.divmod(np.arange(n * width), width)
    items = history.ravel()
    order = np.lexsort((-cols, items, rows))  # per row and item, the latest position first
    r, it = rows[order], items[order]
    latest = np.ones(len(order), bool)
    latest[1:] = (r[1:] != r[:-1]) | (it[1:] != it[:-1])
    keep = np.zeros(n * width, bool)
    keep[order] = latest & (it >= 0)
    keep = keep.reshape(n, width)
    out = np.full_like(history, -1)
    out[np.nonzero(keep)[0], (np.cumsum(keep, 1) - 1)[keep]] = history[keep]
    return out


def monitored_examples(valid: Dataset | None, history: int, users: int, seed: int,
                       monitor: str | None) -> Examples | None:
    """The validation examples ``train.monitor`` is read on: at most ``users`` of them (0: all),
    drawn with ``seed``; None without a validation split (refused when a monitor needs one)."""
    ex = eval_examples(valid, history) if valid is not None else None
    if ex is not None and users and len(ex) > users:
        pick = np.random.default_rng(seed).choice(len(ex), users, replace=False)
        ex = ex.subset(pick)
    if ex is None or not len(ex):
        if monitor:
            raise RqfError(f"train.monitor: {monitor} needs a validation split; set "
                           "train.monitor: null to keep the last weights")
        return None
    return ex


def catalogue_positions(catalogue: np.ndarray, items: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Position of each item id in the sorted ``catalogue`` (-1, padding, maps anywhere), and
    the distinct ids (>= 0) the catalogue lacks."""
    pos = np.searchsorted(catalogue, items).clip(0, len(catalogue) - 1)
    missing = (items >= 0) & (catalogue[pos] != items)
    return pos, np.unique(items[missing])



def parse_history(text: str, where: str) -> list[int]:
    """The item ids of a history written ``12,7,33``, oldest first (spaces around the commas
    allowed), or a one-line refusal naming ``where``: an id is a whole number from 0 (-1 is
    the padding of histories and recommendations.h5, never an item)."""
    parts = [part.strip() for part in text.split(",")]
    if parts == [""]:
        raise DataError(f"{where}: an empty history; give at least one item id, e.g. 12,7,33")
    for part in parts:
        if not re.fullmatch(r"\d{1,18}", part):
            hint = (" (ids are separated by commas, a user's name from them by a tab)"
                    if any(c.isspace() for c in part) else "")
            raise DataError(f"{where}: {part[:40]!r} is not an item id{hint}; expected "
                            "comma-separated whole numbers from 0, e.g. 12,7,33")
    return [int(part) for part in parts]
