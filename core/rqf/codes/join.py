"""New items into an existing ID space: the run's IDs stay as they are, and every new item
gets an ID no other item holds, in one ``semantic_ids.h5`` a generative retriever reads.

The new items' codes come from the run's model (``rqf encode``), collisions among them
handled as the run handles them. A new item whose codes equal an existing item's is told apart
by the extra level, numbered after the existing items of that tuple: the extra level counts
the items of a tuple in row order, and the run's items come first, so their IDs are unchanged
(checked before anything is written). Items the run already has keep the run's ID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rqf.codes.semantic_ids import SemanticIds, write_semantic_ids
from rqf.codes.statistics import unique_codes
from rqf.errors import DataError


def join_semantic_ids(existing: Path, new: Path, out: Path) -> dict[str, Any]:
    """Write ``out``: the items of ``existing`` with their IDs, then the items of ``new`` it
    does not hold; returns counts (kept, added, already known, new items that share a tuple
    with an existing one)."""
    old, fresh = SemanticIds(existing), SemanticIds(new)
    if old.codes.shape[1] != fresh.codes.shape[1]:
        raise DataError(f"{new}: {fresh.codes.shape[1]} levels, the run's IDs in {existing} "
                        f"have {old.codes.shape[1]}")
    if old.keys.has_keys != fresh.keys.has_keys:
        which = (existing, new) if old.keys.has_keys else (new, existing)
        raise DataError(f"{which[0]} keys its items (item_keys), {which[1]} does not: both "
                        "files must come from data with keys, or both without")
    known = np.isin(fresh.item_ids, old.item_ids)
    add = np.flatnonzero(~known)
    if old.keys.has_keys:
        taken = set(old.keys.keys or [])
        clash = [k for k in np.asarray(fresh.keys.keys, dtype=object)[add] if k in taken]
        if clash:
            raise DataError(f"{new}: item key {clash[0]!r} belongs to another item id in "
                            f"{existing}")
    ids = np.concatenate([old.item_ids, fresh.item_ids[add]]).astype(np.int64)
    codes = np.concatenate([old.codes, fresh.codes[add]])
    unique = unique_codes(codes)
    if (unique[: len(old.item_ids)] != old.unique_codes).any():
        raise DataError(f"{existing}: its extra level does not count its items in row order; "
                        "the joined IDs would change existing ones")
    held = {tuple(row) for row in old.codes.tolist()}
    shared = sum(tuple(row) in held for row in fresh.codes[add].tolist())
    raw = None
    if old.raw_codes is not None and fresh.raw_codes is not None:
        raw = np.concatenate([old.raw_codes, fresh.raw_codes[add]])
    keys = None
    if old.keys.has_keys:
        keys = list(old.keys.keys or []) + [fresh.keys.keys[i] for i in add.tolist()]
    attrs = {**old.attrs, "joined_items": int(len(add)), "joined_from": str(new)}
    attrs.pop("suffix_size", None)  # written again for the joined codes
    codebooks = old.codebooks
    write_semantic_ids(out, ids, codes, codebooks, attrs, raw_codes=raw, item_keys=keys)
    return {"kept": int(len(old.item_ids)), "added": int(len(add)),
            "already_in_the_run": int(known.sum()), "sharing_a_tuple": int(shared)}
