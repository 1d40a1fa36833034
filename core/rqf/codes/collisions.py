"""Collision handling: how items that share a code tuple get distinct IDs."""

from __future__ import annotations

import numpy as np

from rqf.codes.clustering import _balanced_scores
from rqf.codes.statistics import group_codes

COLLISION_MODES = ("suffix", "reassign", "balanced")


def handle_collisions(codes: np.ndarray, last_distances: np.ndarray | None,
                      mode: str = "reassign") -> np.ndarray:
    """The (n, levels) codes after collision handling; ``codes`` hold each item's nearest codes.

    ``last_distances`` (n, k) are every item's distances to the last level's codewords
    (lower is nearer); ``suffix`` does not need them. Within each prefix (all levels but the
    last), items are placed nearest first, each on its best last-level code still free; an
    item with no free code left keeps its own (its suffix tells it apart).
    """
    if mode not in COLLISION_MODES:
        raise ValueError(f"collision handling: expected one of {COLLISION_MODES}, got {mode!r}")
    codes = np.asarray(codes).astype(np.int64)
    if mode == "suffix" or len(codes) == 0:
        return codes.copy()
    if last_distances is None or last_distances.shape[0] != len(codes):
        raise ValueError("collision handling: last-level distances are needed for every item")
    if mode == "balanced":
        score = _balanced_scores(last_distances)
        movers = np.arange(len(codes))
        own = score.argmax(1)
    else:
        score = -np.asarray(last_distances, np.float64)
        group, sizes = group_codes(codes)
        movers = np.flatnonzero(sizes[group] > 1)
        own = codes[:, -1]
    out = codes.copy()
    out[movers, -1] = -1
    prefix, _ = group_codes(codes[:, :-1])
    k = last_distances.shape[1]
    taken = {(int(p), int(c)) for p, c in zip(prefix, out[:, -1]) if c >= 0}
    # most confident first: the item nearest to its own code keeps it
    confidence = score[movers, own[movers]]
    for i in movers[np.argsort(-confidence, kind="stable")]:
        p = int(prefix[i])
        for c in np.argsort(-score[i], kind="stable"):
            if (p, int(c)) not in taken:
                taken.add((p, int(c)))
                out[i, -1] = c
                break
        else:  # every code of this prefix is taken: keep the item's own, the suffix decides
            out[i, -1] = codes[i, -1] if mode == "reassign" else own[i]
    assert (out[:, -1] >= 0).all() and (out[:, -1] < k).all()
    return out
