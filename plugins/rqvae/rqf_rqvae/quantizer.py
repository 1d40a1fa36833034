"""The residual quantizer: ``levels`` codebooks, each quantizing what the previous left over."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rqf.codes import kmeans, squared_distances


class ResidualQuantizer(nn.Module):
    """Residual vector quantization with straight-through, rotation-trick or Gumbel forward.

    Distances are always computed in fp32. Code usage is counted on the device (no host sync)
    for dead-code restarts and for metrics.
    """

    def __init__(self, *, levels: int, codebook_size: int, dim: int, distance: str = "l2",
                 forward_mode: str = "ste", commitment_weight: float = 0.25,
                 gumbel_tau: float = 1.0) -> None:
        super().__init__()
        self.levels, self.codebook_size, self.dim = levels, codebook_size, dim
        self.distance, self.forward_mode = distance, forward_mode
        self.commitment_weight, self.gumbel_tau = commitment_weight, gumbel_tau
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * dim ** -0.5)
        self.register_buffer("usage", torch.zeros(levels, codebook_size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _codebook(self, level: int) -> torch.Tensor:
        c = self.codebooks[level].float()
        return F.normalize(c, dim=-1) if self.distance == "cosine" else c

    def _distances(self, r: torch.Tensor, level: int) -> torch.Tensor:
        c = self._codebook(level)
        if self.distance == "cosine":
            with torch.autocast(device_type=r.device.type, enabled=False):
                return 2.0 - 2.0 * (F.normalize(r.float(), dim=-1) @ c.t())
        return squared_distances(r, c)

    @torch.no_grad()
    def init_from_data(self, z: torch.Tensor, iters: int = 25,
                       generator: torch.Generator | None = None) -> None:
        r = z.float()
        for level in range(self.levels):
            data = F.normalize(r, dim=-1) if self.distance == "cosine" else r
            self.codebooks.data[level] = kmeans(data, self.codebook_size, iters, generator)
            r = r - self._codebook(level)[self._distances(r, level).argmin(1)]
        self.initialized.fill_(True)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        z = z.float()
        residual = z
        quantized = torch.zeros_like(z)
        codes, residuals = [], []
        loss = z.new_zeros(())
        for level in range(self.levels):
            r = residual
            dist = self._distances(r, level)
            c = self._codebook(level)
            if self.training and self.forward_mode == "gumbel":
                soft = F.gumbel_softmax(-dist, tau=self.gumbel_tau, hard=True)
                idx = soft.argmax(1)
                e = soft @ c
                q = e
            else:
                idx = dist.argmin(1)
                e = c[idx]
                if self.forward_mode == "rotation" and self.training:
                    q = _rotate_onto(r, e)
                else:
                    q = r + (e - r).detach()
            loss = loss + ((r.detach() - e) ** 2).sum(-1).mean() \
                + self.commitment_weight * ((r - e.detach()) ** 2).sum(-1).mean()
            if self.training:
                self.usage[level].index_add_(0, idx, torch.ones_like(idx, dtype=self.usage.dtype))
                residuals.append(r.detach())
            codes.append(idx)
            quantized = quantized + q
            residual = r - e.detach()
        return {"quantized": quantized, "codes": torch.stack(codes, 1), "quant_loss": loss,
                "residuals": residuals}

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        residual = z.float()
        codes = []
        for level in range(self.levels):
            idx = self._distances(residual, level).argmin(1)
            codes.append(idx)
            residual = residual - self._codebook(level)[idx]
        return torch.stack(codes, 1)

    @torch.no_grad()
    def distances_at(self, z: torch.Tensor, codes: torch.Tensor, level: int) -> torch.Tensor:
        """(n, k) distances from what the levels before ``level`` left of ``z`` (with their
        ``codes``) to that level's codewords."""
        residual = z.float()
        for before in range(level):
            residual = residual - self._codebook(before)[codes[:, before]]
        return self._distances(residual, level)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return sum(self._codebook(level)[codes[:, level]] for level in range(self.levels))

    @torch.no_grad()
    def restart_dead_codes(self, residuals: list[torch.Tensor], threshold: float) -> torch.Tensor:
        """Re-seed codes used fewer than ``threshold`` times since the last call.

        Dead codes take random residuals of the latest batch at their level. Sync-free: the
        replacement is a masked select on the device. Returns the dead count per level.
        """
        dead_counts = []
        for level, r in enumerate(residuals):
            dead = self.usage[level] < threshold
            pick = torch.randint(len(r), (self.codebook_size,), device=r.device)
            fresh = r[pick].to(self.codebooks.dtype)
            if self.distance == "cosine":
                fresh = F.normalize(fresh, dim=-1)
            self.codebooks.data[level] = torch.where(dead[:, None], fresh, self.codebooks.data[level])
            dead_counts.append(dead.sum())
        self.usage.zero_()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.codebooks.data, src=0)  # rank 0's choice wins
        return torch.stack(dead_counts) if dead_counts else torch.zeros(0)


def _rotate_onto(r: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Rotation trick: map r onto e by a rotation and rescale treated as constants.

    The forward value equals e; the gradient reaching r is rotated by the same transform, so
    it keeps the angle it had to the codeword instead of being copied unchanged.
    """
    eps = 1e-8
    r_norm = r.norm(dim=-1, keepdim=True).clamp_min(eps)
    e_norm = e.norm(dim=-1, keepdim=True).clamp_min(eps)
    u = (r / r_norm).detach()
    w = (e / e_norm).detach()
    s = F.normalize(u + w, dim=-1, eps=eps).detach()
    scale = (e_norm / r_norm).detach()
    rotated = r - 2 * (r * s).sum(-1, keepdim=True) * s + 2 * (r * u).sum(-1, keepdim=True) * w
    return scale * rotated
