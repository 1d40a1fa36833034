"""The ``semantic_ids.h5`` contract: its writer, its checked reader, the prefix trie of valid
IDs and the content hash a consumer records."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch

from rqf.errors import DataError
from rqf.io import atomic_h5, stored_outside
from rqf.codes.statistics import TupleOrder, unique_codes
from rqf.keys import ItemKeys, read_keys, write_keys

FORMAT = "rqf-semantic-ids-1"


def write_semantic_ids(path: Path, item_ids: np.ndarray, codes: np.ndarray,
                       codebooks: np.ndarray | None, attrs: dict[str, Any],
                       raw_codes: np.ndarray | None = None,
                       item_keys: Sequence[str] | None = None) -> Path:
    """Write ``semantic_ids.h5`` atomically: item_ids, codes, unique_codes, lookup_order.

    ``codes`` are the IDs after collision handling; ``raw_codes``, when given and different,
    the nearest codes before it. ``attrs['suffix_size']`` records how many values the extra
    level needs: more than ``codebook_size`` means a code tuple holds more items than a
    level has codes, and a consumer must widen that level's vocabulary (never wrap it).
    """
    codes = np.asarray(codes)
    order = TupleOrder(codes) if len(codes) and codes.shape[1] else None
    unique = unique_codes(codes, order)
    # rows by (tuple, extra level): the stable order of the tuples, when they were packed
    lookup = order.order if order is not None and order.base else np.lexsort(unique.T[::-1])
    suffix_size = int(unique[:, -1].max()) + 1 if len(unique) else 1
    with atomic_h5(path) as f:
        f.create_dataset("item_ids", data=np.asarray(item_ids, np.int64))
        f.create_dataset("codes", data=codes.astype(np.int32))
        f.create_dataset("unique_codes", data=unique.astype(np.int32))
        f.create_dataset("lookup_order", data=lookup.astype(np.int64))
        if raw_codes is not None:
            f.create_dataset("raw_codes", data=np.asarray(raw_codes).astype(np.int32))
        if codebooks is not None:
            f.create_dataset("codebooks", data=codebooks.astype(np.float32))
        write_keys(f, item_keys)
        f.attrs["format"] = FORMAT
        f.attrs["suffix_size"] = suffix_size
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def sha256_of(path: Path | str) -> str:
    """The SHA-256 of a file: which semantic IDs a consumer was trained on."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SemanticIds:
    """A written semantic_ids.h5 with lookups both ways; its consistency is checked on open."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path
        if not path.is_file():
            raise DataError(f"{path}: semantic_ids.h5 not found (run the pipeline that makes the "
                            "IDs first, e.g. examples/rqkmeans.yaml)")
        try:
            with h5py.File(path, "r") as f:
                arrays = {}
                for name in ("item_ids", "codes", "unique_codes", "lookup_order"):
                    if name not in f:
                        raise DataError(f"{path}: not a semantic_ids.h5 file (no '{name}' dataset)")
                    outside = stored_outside(f, name)
                    if outside:
                        raise DataError(f"{path}: {name} {outside}; rqf reads only values "
                                        "inside the file")
                    arrays[name] = f[name][()]
                self.attrs = dict(f.attrs)
                item_keys = read_keys(f, len(arrays["item_ids"]), path)
                # optional: each item's nearest codes, and the codebooks (tiger starts from them)
                self.raw_codes = f["raw_codes"][()] if "raw_codes" in f else None
                self.codebooks = f["codebooks"][()] if "codebooks" in f else None
        except OSError as exc:
            raise DataError(f"{path}: not a readable semantic_ids.h5 file ({exc})") from None
        self.item_ids = arrays["item_ids"]
        self.codes = arrays["codes"]
        self.unique_codes = arrays["unique_codes"]
        self.lookup_order = arrays["lookup_order"]
        self._check(path)
        self._row = {int(i): r for r, i in enumerate(self.item_ids)}
        self.keys = ItemKeys(self.item_ids, item_keys, str(path))  # ids <-> the data's keys

    def _check(self, path: Path) -> None:
        n = len(self.item_ids)
        if self.item_ids.ndim != 1 or self.codes.ndim != 2 or self.unique_codes.ndim != 2:
            raise DataError(f"{path}: item_ids must be (n,), codes and unique_codes (n, levels)")
        for name, arr in (("codes", self.codes), ("unique_codes", self.unique_codes),
                          ("lookup_order", self.lookup_order)):
            if len(arr) != n:
                raise DataError(f"{path}: {name} has {len(arr)} rows, item_ids has {n}")
            if not np.issubdtype(arr.dtype, np.integer):
                raise DataError(f"{path}: {name} must hold integers, found {arr.dtype}")
        if not np.issubdtype(self.item_ids.dtype, np.integer):
            raise DataError(f"{path}: item_ids must hold integers, found {self.item_ids.dtype}")
        if self.unique_codes.shape[1] != self.codes.shape[1] + 1:
            raise DataError(f"{path}: unique_codes must have one level more than codes")
        if not n:
            return
        if (np.sort(self.lookup_order) != np.arange(n)).any():
            raise DataError(f"{path}: lookup_order is not a permutation of the rows")
        ids = np.sort(self.item_ids)
        if (ids[1:] == ids[:-1]).any():
            raise DataError(f"{path}: item_ids repeats {int(ids[1:][ids[1:] == ids[:-1]][0])}")
        size = self.attrs.get("codebook_size")
        if self.codes.min() < 0 or (size is not None and self.codes.max() >= int(size)):
            raise DataError(f"{path}: codes must lie in 0..{int(size) - 1 if size else 'n'}, "
                            f"found {int(self.codes.min())}..{int(self.codes.max())}")
        if (self.unique_codes[:, :-1] != self.codes).any():
            raise DataError(f"{path}: unique_codes do not start with codes")
        ordered = self.unique_codes[self.lookup_order]
        step = np.diff(ordered, axis=0)
        # each next row of the lookup order must be strictly greater, comparing level by level
        first = np.argmax(step != 0, axis=1)
        if (step[np.arange(len(step)), first] <= 0).any():
            raise DataError(f"{path}: unique_codes are not unique, or lookup_order does not "
                            "sort them")

    def of_item(self, item_id: int) -> np.ndarray:
        try:
            return self.unique_codes[self._row[int(item_id)]]
        except KeyError:
            raise DataError(f"item id {item_id} is not in the semantic IDs") from None

    def item_of(self, semantic_id: Sequence[int]) -> int:
        """The item whose unique code is ``semantic_id`` (binary search over the sorted codes)."""
        target = tuple(int(c) for c in semantic_id)
        if len(target) != self.unique_codes.shape[1]:
            raise DataError(f"a semantic ID has {self.unique_codes.shape[1]} levels, got {len(target)}")
        lo, hi = 0, len(self.lookup_order)
        while lo < hi:
            mid = (lo + hi) // 2
            if tuple(self.unique_codes[self.lookup_order[mid]]) < target:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.lookup_order) and tuple(self.unique_codes[self.lookup_order[lo]]) == target:
            return int(self.item_ids[self.lookup_order[lo]])
        raise DataError(f"no item has semantic ID {list(target)}")


class PrefixTrie:
    """The valid semantic IDs as a trie, stepped a level at a time for whole batches.

    Built from unique ID rows (n, L). Level ``l`` has a table (prefixes at ``l``, vocabulary of
    ``l``) holding the child node of each (prefix node, token), or -1 where no ID continues
    that way; node 0 is the root. A decoder asks ``allowed(l, nodes)`` for a mask of the
    tokens that keep a beam on a valid ID, and ``step`` for the nodes one token further; after
    the last level a node is a leaf, and ``rows[leaf]`` is the row (item) whose ID it spells.
    """

    def __init__(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes, np.int64)
        if codes.ndim != 2 or not len(codes):
            raise ValueError("a prefix trie needs a non-empty (n, levels) code matrix")
        if codes.min() < 0:
            raise ValueError("semantic ID tokens must be non-negative")
        self.levels = codes.shape[1]
        self.vocab = [int(codes[:, level].max()) + 1 for level in range(self.levels)]
        node = np.zeros(len(codes), np.int64)
        n_nodes = 1
        self.children: list[torch.Tensor] = []
        for level in range(self.levels):
            pair = node * self.vocab[level] + codes[:, level]
            uniq, child = np.unique(pair, return_inverse=True)
            table = np.full((n_nodes, self.vocab[level]), -1, np.int64)
            table[uniq // self.vocab[level], uniq % self.vocab[level]] = np.arange(len(uniq))
            self.children.append(torch.from_numpy(table))
            node, n_nodes = child.reshape(-1), len(uniq)
        if n_nodes != len(codes):
            raise ValueError(f"{len(codes) - n_nodes} semantic IDs are not unique; a trie over "
                             "them could not tell those items apart (use unique_codes)")
        self.rows = np.empty(n_nodes, np.int64)
        self.rows[node] = np.arange(len(codes))

    def to(self, device: torch.device | str) -> "PrefixTrie":
        self.children = [t.to(device) for t in self.children]
        return self

    def allowed(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(len(nodes), vocab of level) bool: tokens that continue a valid ID."""
        return self.children[level][nodes] >= 0

    def step(self, level: int, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The nodes reached by ``tokens`` (-1 for a step off every valid ID)."""
        return self.children[level][nodes, tokens]

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """The row each ID (n, L) spells, -1 for an ID that is not in the trie."""
        codes = torch.as_tensor(np.asarray(codes, np.int64))
        node = torch.zeros(len(codes), dtype=torch.long, device=self.children[0].device)
        for level in range(self.levels):
            tokens = codes[:, level].to(node.device)
            ok = (node >= 0) & (tokens >= 0) & (tokens < self.vocab[level])
            nxt = torch.full_like(node, -1)
            nxt[ok] = self.step(level, node[ok], tokens[ok])
            node = nxt
        leaf = node.cpu().numpy()
        return np.where(leaf >= 0, self.rows[np.maximum(leaf, 0)], -1)
