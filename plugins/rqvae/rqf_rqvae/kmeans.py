"""Batched k-means on the device: every cluster updated at once, no loop over clusters."""

from __future__ import annotations

import warnings

import torch


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(n, k) squared L2 distances, computed in fp32 whatever the autocast state."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        c = centroids.float()
        return (x.pow(2).sum(1, keepdim=True) - 2.0 * (x @ c.t()) + c.pow(2).sum(1)).clamp_min_(0)


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    return torch.cat([squared_distances(x[i:i + chunk], centroids).argmin(1)
                      for i in range(0, len(x), chunk)]) if len(x) else \
        torch.zeros(0, dtype=torch.long, device=x.device)


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
        dist = squared_distances(x, centroids)
        best, assign = dist.min(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.zeros(k, device=x.device).index_add_(0, assign, ones)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if bool(empty.any()):  # one sync per iteration, only on the initialisation path
            far = best.topk(int(empty.sum())).indices
            centroids[empty] = x[far]
    return centroids
