"""Semantic codes, shared by every tokenizer and every model that consumes them.

What lives here: k-means on the device (the initialisation of residual codebooks), code
statistics (usage, perplexity, collisions), collision handling (``suffix``, ``reassign``,
``balanced``), and the ``semantic_ids.h5`` format with its reader.

A semantic ID is an item's code tuple ``codes`` (n, levels) plus one extra level that tells
apart the items still sharing a tuple (``unique_codes`` (n, levels + 1)). Collision handling
decides the last level of ``codes``:

- ``suffix``: every item keeps its nearest codeword; the extra level numbers the items that
  share a tuple (TIGER's scheme).
- ``reassign``: within a shared prefix (all levels but the last), an item whose tuple is taken
  moves to its nearest *free* last-level codeword, so the ID stays semantic (a second-best
  codeword, not a counter). Items that find no free codeword keep their tuple and get a suffix.
- ``balanced``: the last level is assigned by Sinkhorn-Knopp with equal code marginals
  (LC-Rec's balanced assignment), then made unique within each prefix as ``reassign`` does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch

from rqf.errors import DataError
from rqf.io import atomic_h5, atomic_path

COLLISION_MODES = ("suffix", "reassign", "balanced")
FORMAT = "rqf-semantic-ids-1"
DISTANCE_CHUNK = 16384

# --- k-means ---------------------------------------------------------------------------------


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(n, k) squared L2 distances, computed in fp32 whatever the autocast state."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        c = centroids.float()
        # one fused |c|^2 - 2 x c^T, then |x|^2 added in place: no (n, k) temporaries
        d = torch.addmm(c.pow(2).sum(1), x, c.t(), alpha=-2.0)
        return d.add_(x.pow(2).sum(1, keepdim=True)).clamp_min_(0)


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = DISTANCE_CHUNK
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared distance to, index of) each row's nearest centroid, in chunks of rows."""
    if len(x) == 0:
        return (torch.zeros(0, device=x.device),
                torch.zeros(0, dtype=torch.long, device=x.device))
    parts = [squared_distances(x[i:i + chunk], centroids).min(1) for i in range(0, len(x), chunk)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                     max_points: int = 32768) -> torch.Tensor:
    """k-means++ seeding on a subsample: each pick is one vectorised distance update."""
    if len(x) > max_points:
        x = x[torch.randperm(len(x), generator=generator, device="cpu")[:max_points].to(x.device)]
    # draw all the uniform numbers up front so the device never waits on the host generator
    u = torch.rand(k, generator=generator, device="cpu").to(x.device, torch.float64)
    first = int(torch.randint(len(x), (1,), generator=generator, device="cpu"))
    centroids = torch.empty(k, x.shape[1], device=x.device, dtype=x.dtype)
    centroids[0] = x[first]
    closest = squared_distances(x, centroids[:1]).squeeze(1).double()
    for i in range(1, k):
        cdf = torch.cumsum(closest, 0)
        idx = torch.searchsorted(cdf, (u[i] * cdf[-1]).reshape(1)).clamp_max(len(x) - 1)
        centroids[i] = x[idx[0]]
        closest = torch.minimum(closest, squared_distances(x, x[idx]).squeeze(1).double())
    return centroids


def kmeans(x: torch.Tensor, k: int, iters: int = 25, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """Lloyd's k-means from k-means++ seeds; empty clusters take the farthest points.

    Distances are computed in chunks of rows, so memory stays at ``DISTANCE_CHUNK`` x k.
    With fewer distinct points than ``k``, every distinct point becomes a centroid and the
    rest are jittered copies of random points (a warning says so): no silent duplicates.
    """
    x = x.float()
    n = len(x)
    uniq = torch.unique(x, dim=0) if n <= 1_000_000 else x
    if len(uniq) < k:
        warnings.warn(f"k-means: {len(uniq)} distinct vectors for {k} codes; the remaining "
                      f"{k - len(uniq)} codes start as jittered copies and stay unused until "
                      "there is data for them", stacklevel=2)
        scale = x.std(0, keepdim=True).clamp_min(1e-3) * 0.1 if n > 1 else torch.ones_like(x[:1])
        extra_idx = torch.randint(len(uniq), (k - len(uniq),), generator=generator,
                                  device="cpu").to(x.device)
        noise = torch.randn(k - len(uniq), x.shape[1], generator=generator, device="cpu").to(x.device)
        return torch.cat([uniq, uniq[extra_idx] + noise * scale])
    centroids = kmeans_plus_plus(uniq, k, generator)
    ones = torch.ones(n, device=x.device)
    for _ in range(iters):
        best, assign = nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.zeros(k, device=x.device).index_add_(0, assign, ones)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if bool(empty.any()):  # one sync per iteration, only on the initialisation path
            far = best.topk(int(empty.sum())).indices
            centroids[empty] = x[far]
    return centroids


def balanced_assignment(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Each row's codeword under equal code sizes: Sinkhorn-Knopp with uniform marginals on
    the distances, then each row's most likely code (sizes near n/k, not exactly)."""
    d = torch.cat([squared_distances(x[i:i + DISTANCE_CHUNK], centroids)
                   for i in range(0, len(x), DISTANCE_CHUNK)]).cpu().numpy()
    return torch.from_numpy(_balanced_scores(d).argmax(1)).to(x.device)


def balanced_kmeans(x: torch.Tensor, k: int, iters: int = 25,
                    generator: torch.Generator | None = None, rounds: int = 5) -> torch.Tensor:
    """k-means whose clusters are kept near equal size: Lloyd's k-means, then ``rounds`` of
    balanced assignment and centroid update."""
    x = x.float()
    centroids = kmeans(x, k, iters, generator)
    for _ in range(rounds):
        assign = balanced_assignment(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.zeros(k, device=x.device).index_add_(0, assign, torch.ones(len(x),
                                                                                 device=x.device))
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None],
                                centroids)
    return centroids


# --- statistics ------------------------------------------------------------------------------


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
    util, reach_util, perplexity, prefixes = [], [], [], []
    for level in range(levels):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
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
        "utilization": util,
        "utilization_of_reachable": reach_util,
        "perplexity": perplexity,
        "distinct_prefixes": prefixes,
        "unique_code_share": float(1 - shared.mean()) if n else 0.0,
        "collision_rate": float(shared.mean()) if n else 0.0,
        "max_items_per_code": int(sizes.max()) if n else 0,
        "distinct_codes": int(len(sizes)),
    }


# --- collision handling ----------------------------------------------------------------------


def sinkhorn(scores: np.ndarray, iters: int = 50) -> np.ndarray:
    """Sinkhorn-Knopp: log of a transport plan with uniform row and column marginals.

    ``scores`` (n, k) are log-potentials (higher is better); rows are items, columns codes.
    """
    s = torch.from_numpy(np.asarray(scores, np.float64))
    n, k = s.shape
    log_r, log_c = -np.log(n), -np.log(k)
    u = torch.zeros(n, dtype=s.dtype)
    v = torch.zeros(k, dtype=s.dtype)
    for _ in range(iters):
        u = log_r - torch.logsumexp(s + v[None, :], dim=1)
        v = log_c - torch.logsumexp(s + u[:, None], dim=0)
    return (s + u[:, None] + v[None, :]).numpy()


def _balanced_scores(distances: np.ndarray) -> np.ndarray:
    # the temperature is the spread of the distances, so the plan is neither a hard argmin
    # (nothing moves) nor uniform (the codeword no longer means anything)
    d = np.asarray(distances, np.float64)
    scale = float(d.std()) or 1.0
    return sinkhorn(-d / (0.1 * scale))


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


# below this share of a level's codes in use, or above this share of items on a shared
# code, or with this much of the signal lost, a tokenizer's run is reported unhealthy
HEALTHY_USAGE = 0.5
HEALTHY_COLLISIONS = 0.2
HEALTHY_REL_ERROR = 0.95  # at 1.0 the reconstruction is the mean: the codes carry nothing


def code_health(m: Mapping[str, Any], collision_handling: str, items: bool = True,
                normalize: str = "none", more_training: str = "more k-means iterations"
                ) -> list[str]:
    """One line per sign that codes are unhealthy, naming the setting to change.

    ``m`` are code statistics plus ``recon_rel_error``; ``items``: codes are IDs (collisions
    matter), not tokens.
    """
    warnings = []
    for level, used in enumerate(m.get("utilization_of_reachable", [])):
        if used < HEALTHY_USAGE:
            warnings.append(f"codebook level {level} uses {used:.0%} of its codes (below "
                            f"{HEALTHY_USAGE:.0%}): {more_training} or use fewer codes "
                            "(model.codebook_size)")
    if m.get("recon_rel_error", 0.0) >= HEALTHY_REL_ERROR:
        fix = ("set model.normalize: standardize (the embeddings' scale may be far from 1)"
               if normalize == "none" else more_training)
        warnings.append(f"the reconstruction keeps almost nothing (relative error "
                        f"{m['recon_rel_error']:.2f}): {fix}")
    if items and m.get("collision_rate", 0.0) > HEALTHY_COLLISIONS:
        fix = ("set model.collision_handling to reassign or balanced"
               if collision_handling == "suffix" else
               "more codes per level (model.codebook_size) or a level more (model.levels)")
        warnings.append(f"{m['collision_rate']:.0%} of items share their code (above "
                        f"{HEALTHY_COLLISIONS:.0%}): {fix}")
    return warnings


# --- the semantic_ids.h5 file ----------------------------------------------------------------


def write_semantic_ids(path: Path, item_ids: np.ndarray, codes: np.ndarray,
                       codebooks: np.ndarray | None, attrs: dict[str, Any],
                       raw_codes: np.ndarray | None = None) -> Path:
    """Write ``semantic_ids.h5`` atomically: item_ids, codes, unique_codes, lookup_order.

    ``codes`` are the IDs after collision handling; ``raw_codes``, when given and different,
    the nearest codes before it. ``attrs['suffix_size']`` records how many values the extra
    level needs: more than ``codebook_size`` means a code tuple holds more items than a
    level has codes, and a consumer must widen that level's vocabulary (never wrap it).
    """
    unique = unique_codes(codes)
    lookup = np.lexsort(unique.T[::-1])
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
                    arrays[name] = f[name][()]
                self.attrs = dict(f.attrs)
        except OSError as exc:
            raise DataError(f"{path}: not a readable semantic_ids.h5 file ({exc})") from None
        self.item_ids = arrays["item_ids"]
        self.codes = arrays["codes"]
        self.unique_codes = arrays["unique_codes"]
        self.lookup_order = arrays["lookup_order"]
        self._check(path)
        self._row = {int(i): r for r, i in enumerate(self.item_ids)}

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


def plot_usage(codes: np.ndarray, codebook_size: int, path: Path) -> Path | None:
    """A bar chart of items per code, most used first, one row per level; None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    levels = codes.shape[1]
    fig, axes = plt.subplots(levels, 1, figsize=(8, 2.2 * levels), squeeze=False)
    for level in range(levels):
        counts = np.sort(np.bincount(codes[:, level], minlength=codebook_size))[::-1]
        axes[level, 0].bar(np.arange(len(counts)), counts, width=1.0)
        axes[level, 0].set_ylabel(f"level {level}")
    axes[-1, 0].set_xlabel("codes, most used first")
    fig.suptitle("items per code")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path
