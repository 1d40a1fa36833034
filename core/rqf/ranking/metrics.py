"""Recall@K and NDCG@K of ranked item ids: one definition for every ranker and floor."""

from __future__ import annotations

import numpy as np

KS = (5, 10)  # read for every ranker, so runs compare; a ranker adds its own top_k


def per_user_metrics(recommended: np.ndarray, target: np.ndarray, ks=KS) -> dict[str, np.ndarray]:
    """Each user's hit (Recall@K) and NDCG@K contribution: what ``ranking_metrics`` averages,
    kept per user for standard errors and paired tests."""
    recommended = np.asarray(recommended)
    target = np.asarray(target)
    hit = recommended == target[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), recommended.shape[1])  # 0-based
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if recommended.shape[1] < k:
            raise ValueError(f"recall@{k} needs {k} recommendations per user, got "
                             f"{recommended.shape[1]}")
        out[f"recall@{k}"] = (rank < k).astype(np.float64)
        out[f"ndcg@{k}"] = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return out


def ranking_metrics(recommended: np.ndarray, target: np.ndarray, ks=KS) -> dict[str, float]:
    """Recall@K and NDCG@K of ranked item ids (n, >=K) against one target item each.

    A hit is the whole item: the target's id among the first K. With one relevant item the
    ideal DCG is 1, so NDCG@K is 1/log2(rank + 1) for a hit at rank <= K, else 0.
    """
    out: dict[str, float] = {"users": int(len(target))}
    if not len(target):
        return out
    out.update({name: float(values.mean())
                for name, values in per_user_metrics(recommended, target, ks).items()})
    return out



def coverage(recommended: np.ndarray, k: int, catalogue: int) -> float:
    """Share of the ``catalogue``'s items that appear in at least one top-``k`` list."""
    top = np.asarray(recommended)[:, :k]
    return float(len(np.unique(top[top >= 0])) / catalogue) if catalogue else 0.0
