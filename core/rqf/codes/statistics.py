"""Code statistics: grouping tuples, the extra level, usage, perplexity, collisions, health,
and the usage plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Mapping

import numpy as np


def tuple_keys(codes: np.ndarray) -> tuple[np.ndarray, int] | None:
    """One int64 per row that orders rows as their code tuples order (lexicographically),
    and the base it packs each level in; None when the tuples do not fit in 62 bits."""
    codes = np.asarray(codes)
    if not len(codes) or codes.shape[1] == 0:
        return None
    k = int(codes.max()) + 1
    if int(codes.min()) < 0 or k ** codes.shape[1] >= 2 ** 62:
        return None
    key = codes[:, 0].astype(np.int64)
    for level in range(1, codes.shape[1]):
        key = key * k + codes[:, level]
    return key, k


class TupleOrder:
    """Rows sorted by code tuple, ties in row order: one stable sort that groups the tuples,
    numbers the items sharing one (the extra level) and is the IDs' lookup order."""

    def __init__(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes).astype(np.int64, copy=False)
        self.n = len(codes)
        packed = tuple_keys(codes)
        if packed is None:  # wide tuples: compare rows whole
            _, key = np.unique(codes, axis=0, return_inverse=True)
            key, self.base = key.ravel().astype(np.int64), 0
        else:
            key, self.base = packed
        self.levels = codes.shape[1] if codes.ndim == 2 else 0
        span = int(key.max()) + 1 if self.n else 1
        if span * max(self.n, 1) < 2 ** 62:
            # (key, row) packed in one integer: a plain sort of values, the fastest numpy
            # has, gives the stable order without an index sort
            self.sorted_keys, self.order = np.divmod(np.sort(key * self.n + np.arange(self.n)),
                                                     self.n)
        else:
            self.order = np.argsort(key, kind="stable")
            self.sorted_keys = key[self.order]
        change = np.ones(self.n, bool)
        change[1:] = self.sorted_keys[1:] != self.sorted_keys[:-1]
        self.starts = np.flatnonzero(change)
        self.sizes = np.diff(np.r_[self.starts, self.n])
        self._change = change

    def groups(self) -> np.ndarray:
        """Group number of each row (groups numbered in tuple order)."""
        out = np.empty(self.n, np.int64)
        out[self.order] = np.cumsum(self._change) - 1
        return out

    def ranks(self) -> np.ndarray:
        """0, 1, 2 ... among the rows sharing a tuple, in row order."""
        out = np.empty(self.n, np.int64)
        out[self.order] = np.arange(self.n) - np.repeat(self.starts, self.sizes)
        return out

    def prefix_counts(self) -> list[int] | None:
        """Distinct prefixes of each length 1..levels, from the sorted keys (None when the
        tuples were not packed)."""
        if not self.base or not self.n:
            return None
        counts = []
        for level in range(self.levels):
            prefix = self.sorted_keys // self.base ** (self.levels - 1 - level)
            counts.append(int(np.count_nonzero(prefix[1:] != prefix[:-1])) + 1)
        return counts


def group_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id of each row's code tuple, size of each group), groups in tuple order."""
    codes = np.asarray(codes)
    if len(codes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if codes.shape[1] == 0:
        return np.zeros(len(codes), np.int64), np.array([len(codes)])
    order = TupleOrder(codes)
    return order.groups(), order.sizes


def unique_codes(codes: np.ndarray, order: TupleOrder | None = None) -> np.ndarray:
    """Append the extra level: 0, 1, 2 ... among items sharing a code tuple, in row order."""
    codes = np.asarray(codes)
    rank = (order or TupleOrder(codes)).ranks() if len(codes) and codes.shape[1] \
        else np.zeros(len(codes), np.int64)
    return np.concatenate([codes.astype(np.int64), rank[:, None]], axis=1)


def code_statistics(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Utilisation, perplexity, collisions and prefix counts of a code matrix (n, levels)."""
    n, levels = codes.shape
    util, reach_util, perplexity, largest = [], [], [], []
    for level in range(levels):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        largest.append(float(counts.max()) / n if n else 0.0)
        used = int((counts > 0).sum())
        util.append(used / codebook_size)
        reach_util.append(used / min(codebook_size, n) if n else 0.0)
        p = counts[counts > 0] / max(n, 1)
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())) if n else 0.0)
    if not n:
        return {"n": 0, "codebook_size": int(codebook_size), "utilization": util,
                "utilization_of_reachable": reach_util, "perplexity": perplexity,
                "largest_code_share": largest, "distinct_prefixes": [0] * levels,
                "unique_code_share": 0.0, "collision_rate": 0.0, "max_items_per_code": 0,
                "distinct_codes": 0}
    order = TupleOrder(codes)  # one sort: groups, their sizes and every prefix count
    prefixes = order.prefix_counts() or [int(len(group_codes(codes[:, :level + 1])[1]))
                                          for level in range(levels)]
    shared = int(order.sizes[order.sizes > 1].sum())
    return {
        "n": int(n),
        "codebook_size": int(codebook_size),
        "utilization": util,
        "utilization_of_reachable": reach_util,
        "perplexity": perplexity,
        "largest_code_share": largest,
        "distinct_prefixes": prefixes,
        "unique_code_share": float(1 - shared / n),
        "collision_rate": float(shared / n),
        "max_items_per_code": int(order.sizes.max()),
        "distinct_codes": int(len(order.sizes)),
    }


# A tokenizer's run is reported unhealthy when a level uses under HEALTHY_USAGE of the codes
# it could reach; when one code of a level holds more than HEALTHY_LARGEST_SHARE of the items
# (or 4 times a uniform share, for small codebooks), or the level's perplexity is under
# HEALTHY_PERPLEXITY of its reachable codes: most items then share a few codes and the level
# tells them little apart; when collision handling moved more than HEALTHY_MOVED of the items
# off their nearest codes; when more than HEALTHY_COLLISIONS of items share their code; or
# when the reconstruction keeps almost nothing. Calibrated on ../shared/data: healthy runs
# (rqvae and balanced rqkmeans) have a largest share of at most 3.5% and a perplexity of at
# least 59% of the reachable codes; unbalanced rqkmeans on ml100k and scientific had 23% and
# 18% on one code, perplexity 6-15%, and moved 22% of scientific's items.
HEALTHY_USAGE = 0.5
HEALTHY_LARGEST_SHARE = 0.10
HEALTHY_PERPLEXITY = 0.25
HEALTHY_MOVED = 0.2
HEALTHY_COLLISIONS = 0.2
HEALTHY_REL_ERROR = 0.95  # at 1.0 the reconstruction is the mean: the codes carry nothing


def code_health(m: Mapping[str, Any], collision_handling: str, items: bool = True,
                normalize: str = "none", more_training: str = "more k-means iterations",
                spread_fix: str | None = None, keys: Collection[str] | None = None
                ) -> list[str]:
    """One line per sign that codes are unhealthy, naming the setting to change. Levels are
    numbered from 1 in every message, table, plot and export column, as a person counts them.

    ``m`` are code statistics plus ``recon_rel_error`` and ``moved_share``; ``items``: codes
    are IDs (collisions matter), not tokens; ``spread_fix``: what evens out a level whose items
    crowd onto a few codes (default: ``more_training``); ``keys``: the model keys the model
    accepts (None: any), so advice never names a key the model would refuse.
    """
    def has(key: str) -> bool:
        return keys is None or key in keys

    fewer_codes = " or use fewer codes (model.codebook_size)" if has("codebook_size") else ""
    more_codes = ", or more codes per level (model.codebook_size)" if has("codebook_size") else ""
    warnings = []
    for level, used in enumerate(m.get("utilization_of_reachable", [])):
        if used < HEALTHY_USAGE:
            warnings.append(f"codebook level {level + 1} uses {used:.0%} of its codes (below "
                            f"{HEALTHY_USAGE:.0%}): {more_training}{fewer_codes}")
    warnings += _concentration(m, spread_fix or more_training)
    if m.get("recon_rel_error", 0.0) >= HEALTHY_REL_ERROR:
        fix = ("set model.normalize: standardize (the embeddings' scale may be far from 1)"
               if normalize == "none" and has("normalize") else more_training)
        warnings.append(f"the reconstruction keeps almost nothing (relative error "
                        f"{m['recon_rel_error']:.2f}): {fix}")
    if items and m.get("moved_share", 0.0) > HEALTHY_MOVED:
        warnings.append(f"collision handling moved {m['moved_share']:.0%} of items off their "
                        f"nearest codes (above {HEALTHY_MOVED:.0%}): those IDs say little about "
                        f"the items; {spread_fix or more_training}{more_codes}")
    if items and m.get("collision_rate", 0.0) > HEALTHY_COLLISIONS:
        bigger = [text for key, text in (("codebook_size", "more codes per level "
                                                            "(model.codebook_size)"),
                                         ("levels", "a level more (model.levels)")) if has(key)]
        fix = ("set model.collision_handling to reassign or balanced"
               if collision_handling == "suffix" and has("collision_handling") else
               " or ".join(bigger) or more_training)
        warnings.append(f"{m['collision_rate']:.0%} of items share their code (above "
                        f"{HEALTHY_COLLISIONS:.0%}): {fix}")
    return warnings


def _concentration(m: Mapping[str, Any], fix: str) -> list[str]:
    """One line per level whose items crowd onto a few codes."""
    reachable, out = min(m.get("codebook_size", 0), m.get("n", 0)), []
    if not reachable:
        return out
    shares, ppl = m.get("largest_code_share", []), m.get("perplexity", [])
    for level, (share, perplexity) in enumerate(zip(shares, ppl)):
        limit, floor = max(HEALTHY_LARGEST_SHARE, 4 / reachable), HEALTHY_PERPLEXITY * reachable
        signs = ([f"one code holds {share:.0%} of them (healthy: at most {limit:.0%})"]
                 if share > limit else []) + \
            ([f"perplexity {perplexity:.1f} of {reachable} codes (healthy: at least {floor:.0f})"]
             if perplexity < floor else [])
        if signs:
            out.append(f"codebook level {level + 1}: items crowd onto a few codes, "
                       f"{' and '.join(signs)}: {fix}")
    return out


def plot_usage(codes: np.ndarray, codebook_size: int, path: Path) -> Path | None:
    """Items per code, most used first, one row per level; None without matplotlib.

    Each level is one filled step outline, not a bar per code: the same picture, drawn in a
    fraction of the time."""
    from rqf.report import new_figure, save_figure

    levels = codes.shape[1]
    fig = new_figure((8, 2.2 * levels))
    if fig is None:
        return None
    axes = fig.subplots(levels, 1, squeeze=False)
    for level in range(levels):
        counts = np.sort(np.bincount(codes[:, level], minlength=codebook_size))[::-1]
        axes[level, 0].stairs(counts, np.arange(len(counts) + 1), fill=True)
        axes[level, 0].set_ylabel(f"level {level + 1}")
    axes[-1, 0].set_xlabel("codes, most used first")
    fig.suptitle("items per code")
    return save_figure(fig, path)
