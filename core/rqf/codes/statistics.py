"""Code statistics: grouping tuples, the extra level, usage, perplexity, collisions, health,
and the usage plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np


def group_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id of each row's code tuple, size of each group), by hashing the tuples."""
    codes = np.ascontiguousarray(np.asarray(codes).astype(np.int64))
    if len(codes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if codes.shape[1] == 0:
        return np.zeros(len(codes), np.int64), np.array([len(codes)])
    k = int(codes.max()) + 1
    if k ** codes.shape[1] < 2 ** 62:  # pack the tuple into one integer key
        key = np.zeros(len(codes), np.int64)
        for level in range(codes.shape[1]):
            key = key * k + codes[:, level]
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.ravel(), counts


def unique_codes(codes: np.ndarray) -> np.ndarray:
    """Append the extra level: 0, 1, 2 ... among items sharing a code tuple, in row order."""
    group, _ = group_codes(codes)
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1] if len(group) else np.zeros(0, int)
    first = np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    rank = np.empty(len(group), np.int64)
    rank[order] = np.arange(len(group)) - first
    return np.concatenate([np.asarray(codes).astype(np.int64), rank[:, None]], axis=1)


def code_statistics(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Utilisation, perplexity, collisions and prefix counts of a code matrix (n, levels)."""
    n, levels = codes.shape
    util, reach_util, perplexity, prefixes, largest = [], [], [], [], []
    for level in range(levels):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        largest.append(float(counts.max()) / n if n else 0.0)
        used = int((counts > 0).sum())
        util.append(used / codebook_size)
        reach_util.append(used / min(codebook_size, n) if n else 0.0)
        p = counts[counts > 0] / max(n, 1)
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())) if n else 0.0)
        prefixes.append(int(len(group_codes(codes[:, :level + 1])[1])) if n else 0)
    group, sizes = group_codes(codes)
    shared = sizes[group] > 1 if n else np.zeros(0, bool)
    return {
        "n": int(n),
        "codebook_size": int(codebook_size),
        "utilization": util,
        "utilization_of_reachable": reach_util,
        "perplexity": perplexity,
        "largest_code_share": largest,
        "distinct_prefixes": prefixes,
        "unique_code_share": float(1 - shared.mean()) if n else 0.0,
        "collision_rate": float(shared.mean()) if n else 0.0,
        "max_items_per_code": int(sizes.max()) if n else 0,
        "distinct_codes": int(len(sizes)),
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
                spread_fix: str | None = None) -> list[str]:
    """One line per sign that codes are unhealthy, naming the setting to change.

    ``m`` are code statistics plus ``recon_rel_error`` and ``moved_share``; ``items``: codes
    are IDs (collisions matter), not tokens; ``spread_fix``: what evens out a level whose items
    crowd onto a few codes (default: ``more_training``).
    """
    warnings = []
    for level, used in enumerate(m.get("utilization_of_reachable", [])):
        if used < HEALTHY_USAGE:
            warnings.append(f"codebook level {level} uses {used:.0%} of its codes (below "
                            f"{HEALTHY_USAGE:.0%}): {more_training} or use fewer codes "
                            "(model.codebook_size)")
    warnings += _concentration(m, spread_fix or more_training)
    if m.get("recon_rel_error", 0.0) >= HEALTHY_REL_ERROR:
        fix = ("set model.normalize: standardize (the embeddings' scale may be far from 1)"
               if normalize == "none" else more_training)
        warnings.append(f"the reconstruction keeps almost nothing (relative error "
                        f"{m['recon_rel_error']:.2f}): {fix}")
    if items and m.get("moved_share", 0.0) > HEALTHY_MOVED:
        warnings.append(f"collision handling moved {m['moved_share']:.0%} of items off their "
                        f"nearest codes (above {HEALTHY_MOVED:.0%}): those IDs say little about "
                        f"the items; {spread_fix or more_training}, or more codes per level "
                        "(model.codebook_size)")
    if items and m.get("collision_rate", 0.0) > HEALTHY_COLLISIONS:
        fix = ("set model.collision_handling to reassign or balanced"
               if collision_handling == "suffix" else
               "more codes per level (model.codebook_size) or a level more (model.levels)")
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
            out.append(f"codebook level {level}: items crowd onto a few codes, "
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
        axes[level, 0].set_ylabel(f"level {level}")
    axes[-1, 0].set_xlabel("codes, most used first")
    fig.suptitle("items per code")
    return save_figure(fig, path)
