"""The floors every ranker is measured beside, by the same evaluator: the most popular items,
and the last item's nearest neighbours. Registered by the core (``rqf.builtin``),
so any ranker's ``model.floors`` has them, and each is a model of its own (``type: mostpop``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rqf.errors import ConfigError, RqfError
from rqf.interfaces import Dataset, ItemVectors, RunContext
from rqf.ranking.examples import train_examples
from rqf.ranking.ranker import (EXCLUDE_HISTORY, HISTORY, TOP_K, NextItemModel, mask_history,
                                without_history)


class MostPopModel(NextItemModel):
    """Everyone gets the items most frequent in the training sequences."""

    name = "mostpop"
    params = (HISTORY, TOP_K, EXCLUDE_HISTORY)

    def fit(self, train: Dataset, valid: Dataset | None, ctx: RunContext) -> dict[str, Any]:
        self.decide_exclusion(train)
        ex = train_examples(train, 1)
        items = np.concatenate([ex.history[:, 0], ex.target])  # every training position
        ids, counts = np.unique(items[items >= 0], return_counts=True)
        self.ranking = ids[np.argsort(-counts, kind="stable")]
        return {"items": int(len(ids))}

    def known_items(self) -> np.ndarray:
        return np.sort(self.ranking)  # what it was fit on: the items of the training sequences

    def recommend(self, history: np.ndarray, k: int, users: np.ndarray | None = None
                  ) -> np.ndarray:
        extra = history.shape[1] if self.excludes_history else 0
        top = np.full(k + extra, -1, np.int64)
        top[:min(k + extra, len(self.ranking))] = self.ranking[:k + extra]
        top = np.tile(top, (len(history), 1))
        return without_history(top, history, k) if extra else top


class LastItemNNModel(NextItemModel):
    """The items whose embeddings are nearest (cosine) to the user's last item, itself excluded."""

    name = "lastitem_nn"
    params = (HISTORY, TOP_K, EXCLUDE_HISTORY)
    reads_vectors = True

    def fit(self, train: Dataset, valid: Dataset | None, ctx: RunContext) -> dict[str, Any]:
        self.decide_exclusion(train)
        source = train.export_source()
        if not isinstance(source, ItemVectors):
            raise ConfigError("model.type: lastitem_nn needs item embeddings (an item file)")
        self.ids = np.asarray(source.ids, np.int64)
        vectors = torch.from_numpy(np.asarray(source.read(0, len(self.ids)), np.float32))
        self.vectors = torch.nn.functional.normalize(vectors, dim=-1)
        self.order = np.argsort(self.ids)
        return {"items": int(len(self.ids))}

    def known_items(self) -> np.ndarray:
        return self.ids

    def recommend(self, history: np.ndarray, k: int, users: np.ndarray | None = None
                  ) -> np.ndarray:
        lengths = (history >= 0).sum(1)
        last = history[np.arange(len(history)), np.maximum(lengths - 1, 0)]
        pos = np.searchsorted(self.ids[self.order], last)
        rows = self.order[np.minimum(pos, len(self.ids) - 1)]
        known = self.ids[rows] == last
        out = np.full((len(history), k), -1, np.int64)
        if self.excludes_history:
            at = self.order[np.minimum(np.searchsorted(self.ids[self.order], history),
                                       len(self.ids) - 1)]
            seen = torch.from_numpy(np.where(self.ids[at] == history, at, -1))
        for a in range(0, len(history), 4096):
            r = torch.from_numpy(rows[a:a + 4096])
            scores = self.vectors[r] @ self.vectors.T
            scores[torch.arange(len(r)), r] = -float("inf")  # not the item itself
            if self.excludes_history:
                mask_history(scores, seen[a:a + 4096])
            top = scores.topk(min(k, len(self.ids) - 1), dim=1).indices.numpy()
            out[a:a + len(r), :top.shape[1]] = self.ids[top]
        out[~known] = -1  # a last item without an embedding: nothing to be near
        return out


def fit_floors(model: NextItemModel, train: Dataset) -> dict[str, NextItemModel]:
    """mostpop, and lastitem_nn where the items have embeddings, fitted on ``train`` with
    ``model``'s history, top_k and history exclusion (as decided for the model, so both are
    measured by one protocol); none when ``model.floors`` is false."""
    if not model.config.get("floors"):
        return {}
    out: dict[str, NextItemModel] = {}
    for cls in (MostPopModel, LastItemNNModel):
        floor = cls(model.data_info, history=model.config["history"],
                    top_k=model.config["top_k"],
                    exclude_history="always" if model.excludes_history else "never")
        try:
            floor.fit(train, None, None)  # type: ignore[arg-type]  # floors use no context
        except RqfError:
            continue  # lastitem_nn without item embeddings: no such floor
        out[floor.name] = floor
    return out
