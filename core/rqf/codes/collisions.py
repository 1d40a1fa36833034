"""Collision handling: how items that share a code tuple get distinct IDs."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from rqf.codes.clustering import BalancedScores
from rqf.codes.statistics import group_codes

COLLISION_MODES = ("suffix", "reassign", "balanced", "optimal")


def handle_collisions(codes: np.ndarray, last_distances: np.ndarray | None,
                      mode: str = "reassign") -> np.ndarray:
    """The (n, levels) codes after collision handling; ``codes`` hold each item's nearest codes.

    ``last_distances`` (n, k) are every item's distances to the last level's codewords
    (lower is nearer); ``suffix`` does not need them. Within each prefix (all levels but the
    last), items are placed most confident first (nearest to their own code), each on its best
    last-level code still free; an item with no free code left keeps its own (its suffix tells
    it apart). ``reassign`` places only the items of shared tuples, ``balanced`` every item by
    its balanced (Sinkhorn) scores. ``optimal`` gives every item of a prefix that holds a
    shared tuple its last-level code by a minimum-cost assignment (scipy's
    ``linear_sum_assignment`` over the prefix's items and the k codes): no two of them share a
    code, and the sum of their distances to their codes is the least any such placement has.
    A prefix of more than k items places k of them; the rest keep their own code.

    Prefixes do not compete for codes, so the greedy runs in rounds: round r places the r-th
    most confident item of every prefix at once. Only the rows of the items placed in a round
    are read, in the distances' own dtype.
    """
    if mode not in COLLISION_MODES:
        raise ValueError(f"collision handling: expected one of {COLLISION_MODES}, got {mode!r}")
    codes = np.asarray(codes).astype(np.int64)
    if mode == "suffix" or len(codes) == 0:
        return codes.copy()
    if last_distances is None or last_distances.shape[0] != len(codes):
        raise ValueError("collision handling: last-level distances are needed for every item")
    k = last_distances.shape[1]
    if mode == "optimal":
        return _optimal(codes, last_distances)
    if mode == "balanced":
        balanced = BalancedScores(last_distances)
        rows = balanced.rows
        movers = np.arange(len(codes))
        own = fallback = balanced.argmax()
        confidence = balanced.at(movers, own).astype(np.float64)
    else:
        def rows(items: np.ndarray) -> np.ndarray:
            picked = np.array(last_distances[items])  # a copy of these rows alone
            return np.negative(picked, out=picked)
        group, sizes = group_codes(codes)
        movers = np.flatnonzero(sizes[group] > 1)
        own = fallback = codes[:, -1]
        confidence = -np.asarray(last_distances[movers, own[movers]], np.float64)
    out = codes.copy()
    if not len(movers):
        return out
    prefix, prefix_sizes = group_codes(codes[:, :-1])
    taken = np.zeros((len(prefix_sizes), k), bool)
    stays = np.ones(len(codes), bool)
    stays[movers] = False
    taken[prefix[stays], codes[stays, -1]] = True
    # most confident first within each prefix (ties: the earlier item), then rounds by rank
    order = movers[np.argsort(-confidence, kind="stable")]
    order = order[np.argsort(prefix[order], kind="stable")]
    p = prefix[order]
    starts = np.r_[0, np.flatnonzero(np.diff(p)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    by_round = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_round], np.arange(rank.max() + 2))
    for r in range(len(bounds) - 1):
        items = order[by_round[bounds[r]:bounds[r + 1]]]
        pre = prefix[items]
        scores = rows(items)  # a fresh array: the taken codes are struck out in place
        scores[taken[pre]] = -np.inf
        best = scores.argmax(1)
        free = np.isfinite(scores[np.arange(len(items)), best])
        taken[pre[free], best[free]] = True
        out[items, -1] = np.where(free, best, fallback[items])
    return out


def _prefix_movers(codes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Each item's prefix group, and which items need last-level distances: those of shared
    tuples (``reassign``), or every item of a prefix that holds one (``optimal``)."""
    group, sizes = group_codes(codes)
    shared = sizes[group] > 1
    prefix, prefix_sizes = group_codes(codes[:, :-1])
    if mode != "optimal":
        return prefix, shared
    affected = np.zeros(len(prefix_sizes), bool)
    affected[prefix[shared]] = True
    return prefix, affected[prefix]


def _optimal(codes: np.ndarray, last_distances: Any) -> np.ndarray:
    """``handle_collisions``'s ``optimal``: one minimum-cost assignment per affected prefix."""
    from scipy.optimize import linear_sum_assignment

    out = codes.copy()
    prefix, movers = _prefix_movers(codes, "optimal")
    items = np.flatnonzero(movers)
    if not len(items):
        return out
    items = items[np.argsort(prefix[items], kind="stable")]
    starts = np.r_[0, np.flatnonzero(np.diff(prefix[items])) + 1, len(items)]
    for a, b in zip(starts[:-1], starts[1:]):
        block = items[a:b]
        rows, cols = linear_sum_assignment(np.asarray(last_distances[block], np.float64))
        out[block[rows], -1] = cols
    return out


# bytes of last-level distance rows held at once by ``handle_collisions_streamed``: 512k rows
# of 256 codes
MOVER_ROWS_BUDGET = 1 << 29


class _MoverRows:
    """(n, k) last-level distances of which only the movers' rows exist (what
    ``handle_collisions`` reads in ``reassign``)."""

    def __init__(self, n: int, k: int, movers: np.ndarray, rows: np.ndarray) -> None:
        self.shape = (n, k)
        self.where = np.full(n, -1, np.int64)
        self.where[movers] = np.arange(len(movers))
        self.rows = rows

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):
            items, codes = index
            return self.rows[self.where[items], codes]
        return self.rows[self.where[index]]


def handle_collisions_streamed(codes: np.ndarray, mode: str, k: int,
                               last_rows: Callable[[np.ndarray], np.ndarray],
                               budget: int = MOVER_ROWS_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """``handle_collisions`` without every item's last-level distances in memory.

    ``last_rows(items)`` gives the (len(items), k) last-level distances of the given items
    (sorted row numbers), e.g. by streaming the data once more. In ``reassign`` only the items
    of shared tuples need them (in ``optimal``, every item of a prefix that holds one), and
    prefixes do not compete for codes, so the prefixes are
    taken in parts of at most ``budget`` bytes of rows: the same IDs as ``handle_collisions``
    with all rows. ``balanced`` scores every item against every other and asks for all rows.

    Returns the codes and each placed item's distance to its final last-level code (NaN for
    the items whose rows were not needed).
    """
    codes = np.asarray(codes).astype(np.int64)
    final = np.full(len(codes), np.nan, np.float32)
    if mode == "suffix" or not len(codes):
        return handle_collisions(codes, None, "suffix"), final
    if mode == "balanced":
        rows = last_rows(np.arange(len(codes)))
        out = handle_collisions(codes, rows, mode)
        final[:] = rows[np.arange(len(codes)), out[:, -1]]
        return out, final
    prefix, movers = _prefix_movers(codes, mode)
    out = codes.copy()
    if not movers.any():
        return out, final
    # parts of whole prefixes, each holding at most per_part movers (or one larger prefix)
    per_prefix = np.bincount(prefix[movers], minlength=int(prefix.max()) + 1)
    per_part = max(budget // (4 * k), 1)
    part = (np.cumsum(per_prefix) - per_prefix) // per_part
    part_of_item = part[prefix]
    has = per_prefix[prefix] > 0
    for p in np.unique(part_of_item[has]):
        items = np.flatnonzero(has & (part_of_item == p))
        moving = np.flatnonzero(movers[items])
        rows = np.asarray(last_rows(items[moving]), np.float32)
        placed = handle_collisions(codes[items], _MoverRows(len(items), k, moving, rows), mode)
        out[items] = placed
        final[items[moving]] = rows[np.arange(len(moving)), placed[moving, -1]]
        del rows, placed  # before the next part's rows are made: one part in memory at a time
    return out, final
