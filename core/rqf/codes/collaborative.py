"""The collaborative view: what users' training sequences say about items, beside their text.

Text vectors place items by what they are; users place them by what is bought or watched
together. A tokenizer whose data holds user sequences codes each item's unit text vector joined
with a unit *collaborative* vector, weighted so the whole stays unit length:
``[text * sqrt(1 - w), collaborative * sqrt(w)]`` (``model.collaborative`` is ``w``).

The collaborative vectors come from the sequences the model trains on and nothing else (with
``leave_last_out``, every user's sequence but its validation and test items): items within
``WINDOW`` steps of each other are counted, both ways, each pair weighted by one over its
distance; the counts become positive pointwise mutual information (the context counts smoothed
by the power 0.75) and a truncated SVD of that matrix gives each item ``U * sqrt(S)``, made
unit length. An item with no counted neighbour (held out only, or new to a trained run) gets
the vector a ridge map from text predicts, fitted on the items that have one: its code still
rests on its text alone.

Costs follow the data: the counts are one sparse matrix (a few entries per interaction), the
SVD a sparse one of ``DIM`` directions, the ridge map a ``text_dim`` square solve over at most
``RIDGE_ITEMS`` items; the view keeps ``DIM`` float32 numbers per item with interactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from rqf.data import input_positions
from rqf.errors import RqfError
from rqf.interfaces import Dataset, ItemVectors

DIM = 64            # collaborative directions kept
WINDOW = 3          # items up to this many steps apart count as co-occurring
RIDGE = 1.0         # ridge penalty of the text -> collaborative map
RIDGE_ITEMS = 262144  # items the map is fitted on, at most (drawn at random beyond)


def training_sequences(train: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(item ids of every training input, in order; record boundaries) of a view over user
    sequences, or None when ``train`` is no such view (an items dataset: no view is made)."""
    table = getattr(train, "table", None)
    if table is None:
        return None
    try:
        records = train.records  # type: ignore[attr-defined]
    except (AttributeError, RqfError):  # a view without sequences: nothing to learn from
        return None
    lengths = records.end - records.start
    bounds = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=bounds[1:])
    return np.asarray(table.item_ids)[input_positions(train)], bounds


def cooccurrence(rows: np.ndarray, bounds: np.ndarray, n: int, window: int = WINDOW):
    """(n, n) sparse counts: items ``d <= window`` steps apart in one record add ``1/d``, both
    ways. ``rows`` are row numbers (0..n-1) in record order; ``bounds`` the record limits."""
    import scipy.sparse as sp

    record = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    a_parts, b_parts, w_parts = [], [], []
    for d in range(1, window + 1):
        same = record[:-d] == record[d:] if len(rows) > d else np.zeros(0, bool)
        a, b = rows[:-d][same], rows[d:][same]
        a_parts += [a, b]
        b_parts += [b, a]
        w_parts += [np.full(2 * len(a), 1.0 / d)]
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, np.int64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, np.int64)
    w = np.concatenate(w_parts) if w_parts else np.zeros(0)
    counts = sp.coo_matrix((w, (a, b)), shape=(n, n)).tocsr()
    counts.sum_duplicates()
    return counts


def ppmi_vectors(counts, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit vectors of the items with a counted neighbour (zero rows elsewhere) and
    the mask of those items: a truncated SVD of the positive PMI of ``counts``."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    n = counts.shape[0]
    coo = counts.tocoo()
    total = float(coo.data.sum())
    out = np.zeros((n, dim), np.float32)
    has = np.zeros(n, bool)
    if total <= 0:
        return out, has
    row_sum = np.asarray(counts.sum(1)).ravel()
    context = np.asarray(counts.sum(0)).ravel() ** 0.75
    context /= context.sum()
    pmi = np.log(coo.data / total / (row_sum[coo.row] / total) / context[coo.col])
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n, n))
    has = np.diff(ppmi.indptr) > 0
    sub = ppmi[has][:, has]
    m = int(has.sum())
    k = min(dim, m - 1)
    if k < 1:
        return out, np.zeros(n, bool)
    if m <= 4 * dim:  # small: the dense SVD
        u, s, _ = np.linalg.svd(sub.toarray())
        u, s = u[:, :k], s[:k]
    else:
        v0 = np.random.default_rng(seed).standard_normal(m)
        u, s, _ = svds(sub, k=k, v0=v0)
    vectors = u * np.sqrt(s)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out[has, :k] = vectors / np.maximum(norms, 1e-12)
    return out, has


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class CollaborativeView:
    """Collaborative vectors of the items with interactions (sorted ``ids``) and the ridge
    map that predicts one from text for every other item; ``weight`` is ``w`` above."""

    ids: np.ndarray        # (m,) item ids, sorted
    vectors: np.ndarray    # (m, DIM) unit rows
    text_map: np.ndarray   # (text_dim, DIM)
    weight: float

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def collaborative(self, ids: np.ndarray | None, text: np.ndarray) -> np.ndarray:
        """Unit collaborative vectors of items ``ids`` (None: unknown items) with unit text
        rows ``text``: the learned one where there is one, the predicted one elsewhere."""
        out = _unit(text @ self.text_map)
        if ids is not None and len(self.ids):
            ids = np.asarray(ids)
            pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
            known = self.ids[pos] == ids
            out[known] = self.vectors[pos[known]]
        return out

    def join(self, ids: np.ndarray | None, x: np.ndarray) -> np.ndarray:
        """What the tokenizer codes: unit text and collaborative vectors, weighted."""
        text = _unit(x)
        return np.concatenate([text * np.sqrt(1.0 - self.weight),
                               self.collaborative(ids, text) * np.sqrt(self.weight)],
                              1).astype(np.float32)

    def wrap(self, source: ItemVectors) -> ItemVectors:
        """``source`` read through the view (same ids, rows of ``text_dim + DIM``)."""
        ids = np.asarray(source.ids)
        read_rows = source.read_rows
        return ItemVectors(
            ids=ids, keys=source.keys,
            read=lambda a, b: self.join(ids[a:b], source.read(a, b)),
            read_rows=None if read_rows is None else
            (lambda rows: self.join(ids[rows], read_rows(rows))))

    def state(self) -> dict[str, Any]:
        """Tensors for the model file (which holds tensors and plain data only)."""
        import torch

        return {"collaborative_ids": torch.from_numpy(np.asarray(self.ids, np.int64)),
                "collaborative_vectors": torch.from_numpy(self.vectors),
                "collaborative_map": torch.from_numpy(self.text_map)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], weight: float) -> "CollaborativeView":
        def array(name: str, dtype: Any) -> np.ndarray:
            value = state[name]
            return np.asarray(value.cpu().numpy() if hasattr(value, "cpu") else value, dtype)

        return cls(array("collaborative_ids", np.int64),
                   array("collaborative_vectors", np.float32),
                   array("collaborative_map", np.float32), weight)


def fit_view(train: Dataset, weight: float, seed: int = 0, dim: int = DIM,
             window: int = WINDOW) -> CollaborativeView | None:
    """The view of ``train``'s sequences over its export source's items, or None when the
    dataset holds no sequences. Reads only the training inputs of ``train``."""
    seqs = training_sequences(train)
    source = train.export_source()
    if seqs is None or not isinstance(source, ItemVectors):
        return None
    from rqf.data import rows_of

    item_ids, bounds = seqs
    catalogue = np.asarray(source.ids)
    rows = rows_of(catalogue, item_ids)
    known = rows >= 0  # interactions with items the item file lacks count for nothing
    record = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))[known]
    kept = np.zeros(len(bounds), np.int64)
    np.cumsum(np.bincount(record, minlength=len(bounds) - 1), out=kept[1:])
    vectors, has = ppmi_vectors(cooccurrence(rows[known], kept, len(catalogue), window),
                                dim, seed)
    learned = np.flatnonzero(has)
    fit_rows = learned
    if len(fit_rows) > RIDGE_ITEMS:
        fit_rows = np.sort(np.random.default_rng(seed).choice(fit_rows, RIDGE_ITEMS, False))
    text = _unit(read_item_rows(source, fit_rows)) if len(fit_rows) else None
    text_dim = int(text.shape[1]) if text is not None else \
        int(read_item_rows(source, np.arange(min(1, len(catalogue)))).shape[1])
    if text is None:
        text_map = np.zeros((text_dim, dim), np.float32)
    else:
        gram = text.T.astype(np.float64) @ text + RIDGE * np.eye(text_dim)
        text_map = np.linalg.solve(gram, text.T.astype(np.float64) @ vectors[fit_rows])
    order = np.argsort(catalogue[learned], kind="stable")
    return CollaborativeView(catalogue[learned][order], vectors[learned][order],
                             text_map.astype(np.float32), weight)


def read_item_rows(source: ItemVectors, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``source``: by ``read_rows``, or one slice a row where it has none."""
    if source.read_rows is not None:
        return np.asarray(source.read_rows(rows), np.float32)
    return np.concatenate([np.asarray(source.read(int(r), int(r) + 1), np.float32)
                           for r in rows]) if len(rows) else np.zeros((0, 0), np.float32)
