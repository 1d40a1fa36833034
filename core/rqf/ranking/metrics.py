"""Recall@K and NDCG@K of ranked item ids: one definition for every ranker and floor."""

from __future__ import annotations

import numpy as np

KS = (5, 10)  # read for every ranker, so runs compare; a ranker adds its own top_k


def ranking_metrics(recommended: np.ndarray, target: np.ndarray, ks=KS) -> dict[str, float]:
    """Recall@K and NDCG@K of ranked item ids (n, >=K) against one target item each.

    A hit is the whole item: the target's id among the first K. With one relevant item the
    ideal DCG is 1, so NDCG@K is 1/log2(rank + 1) for a hit at rank <= K, else 0.
    """
    recommended = np.asarray(recommended)
    target = np.asarray(target)
    out: dict[str, float] = {"users": int(len(target))}
    if not len(target):
        return out
    hit = recommended == target[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), recommended.shape[1])  # 0-based
    for k in ks:
        if recommended.shape[1] < k:
            raise ValueError(f"recall@{k} needs {k} recommendations per user, got "
                             f"{recommended.shape[1]}")
        out[f"recall@{k}"] = float((rank < k).mean())
        out[f"ndcg@{k}"] = float(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0).mean())
    return out

