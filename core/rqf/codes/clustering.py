"""k-means on the device (the initialisation of residual codebooks) and balanced assignment
by Sinkhorn-Knopp."""

from __future__ import annotations

import warnings

import numpy as np
import torch

DISTANCE_CHUNK = 16384
UNIQUE_SAMPLE = 65536  # rows searched for distinct seeds before all of them are

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
    # distinct points for the seeds, found in a sample (sorting every row costs more time
    # and memory than the clustering); the whole set only when the sample has too few
    sample = x if n <= UNIQUE_SAMPLE else \
        x[torch.randperm(n, generator=generator, device="cpu")[:UNIQUE_SAMPLE].to(x.device)]
    uniq = torch.unique(sample, dim=0)
    if len(uniq) < k and len(sample) < n:
        uniq = torch.unique(x, dim=0)
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
    d = torch.cat([squared_distances(x[i:i + DISTANCE_CHUNK], centroids).cpu()
                   for i in range(0, len(x), DISTANCE_CHUNK)]).numpy()
    return torch.from_numpy(BalancedScores(d).argmax()).to(x.device)


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


def sinkhorn(scores: np.ndarray, iters: int = 50) -> np.ndarray:
    """Sinkhorn-Knopp: log of a transport plan with uniform row and column marginals.

    ``scores`` (n, k) are log-potentials (higher is better); rows are items, columns codes.
    """
    s = np.asarray(scores, np.float32)
    plan = BalancedScores(-s, iters=iters, temperature=1.0)
    return plan.rows(np.arange(len(s)))


# Up to this many (n x k) entries (1 GiB of float32: 1M items x 256 codes) the kernel is kept
# between iterations, as large as the distances it is made of; above it each iteration
# recomputes it a chunk of rows at a time (about 7x slower), so memory stays at
# SINKHORN_CHUNK x k.
SINKHORN_CACHE = 1 << 28
SINKHORN_CHUNK = 65536


class BalancedScores:
    """Balanced scores of (n, k) distances (lower is nearer) by Sinkhorn-Knopp with uniform
    row and column marginals, in float32, the potentials kept rather than the plan.

    The temperature is ``temperature`` times the spread of the distances (by default 0.1 of
    it), so the plan is neither a hard argmin (nothing moves) nor uniform (the codeword no
    longer means anything). Each iteration is one pass over the rows: a chunk's kernel
    ``exp(-d / t)`` (shifted by its row's best) gives the chunk's row scaling against the
    current column scaling, and adds the chunk's share of the column sums.
    """

    def __init__(self, distances: np.ndarray, iters: int = 50,
                 temperature: float | None = None) -> None:
        d = np.asarray(distances)
        self.d = d if d.dtype == np.float32 else d.astype(np.float32)
        n, k = self.d.shape
        self.t = temperature if temperature is not None else 0.1 * (_std(self.d) or 1.0)
        self.row_best = np.empty(n, np.float32)  # min distance of each row: the kernel's shift
        cache = [] if n * k <= SINKHORN_CACHE else None
        for a in range(0, n, SINKHORN_CHUNK):
            self.row_best[a:a + SINKHORN_CHUNK] = self.d[a:a + SINKHORN_CHUNK].min(1)
        row_mass, col_mass = 1.0 / n, 1.0 / k
        x = torch.ones(n)
        y = torch.ones(k)
        for it in range(iters):
            col = torch.zeros(k, dtype=torch.float64)
            for c, a in enumerate(range(0, n, SINKHORN_CHUNK)):
                if cache is not None and it:
                    kern = cache[c]
                else:
                    kern = self._kernel(a, a + SINKHORN_CHUNK)
                    if cache is not None:
                        cache.append(kern)
                xa = row_mass / (kern @ y).clamp_min_(1e-30)
                x[a:a + len(xa)] = xa
                col += (xa @ kern).double()
            y = (col_mass / col.clamp_min(1e-30)).float()
        self.log_x = x.log().numpy()
        self.log_y = y.log().numpy()

    def _kernel(self, a: int, b: int) -> torch.Tensor:
        d = torch.from_numpy(self.d[a:b])
        return torch.exp((torch.from_numpy(self.row_best[a:b])[:, None] - d) / self.t)

    def rows(self, items: np.ndarray) -> np.ndarray:
        """(len(items), k) log-plan of these rows (higher: more likely), float32."""
        return (self.row_best[items, None] - self.d[items]) / self.t \
            + self.log_x[items, None] + self.log_y[None, :]

    def at(self, items: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """The log-plan of each item at one code, the same values ``rows`` holds there."""
        return (self.row_best[items] - self.d[items, codes]) / self.t \
            + self.log_x[items] + self.log_y[codes]

    def argmax(self) -> np.ndarray:
        """Each row's most likely code."""
        out = np.empty(len(self.d), np.int64)
        for a in range(0, len(self.d), SINKHORN_CHUNK):
            out[a:a + SINKHORN_CHUNK] = (self.log_y[None, :] - self.d[a:a + SINKHORN_CHUNK]
                                         / self.t).argmax(1)
        return out


def _std(d: np.ndarray) -> float:
    """Standard deviation of every entry, accumulated in float64 a chunk at a time."""
    total = squares = 0.0
    for a in range(0, len(d), SINKHORN_CHUNK):
        part = d[a:a + SINKHORN_CHUNK].astype(np.float64)
        total += float(part.sum())
        squares += float((part * part).sum())
    count = d.size
    if not count:
        return 0.0
    mean = total / count
    return float(np.sqrt(max(squares / count - mean * mean, 0.0)))
