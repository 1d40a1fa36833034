"""The RQ-VAE network: MLP encoder, residual quantizer, mirrored MLP decoder."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rqf_rqvae.quantizer import ResidualQuantizer

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


def mlp(dims: Sequence[int], activation: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(ACTIVATIONS[activation]())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder, residual quantizer and mirrored decoder. Keyword-only, named like the model's
    YAML keys (``quantizer`` is the forward mode: ste, rotation or gumbel)."""

    def __init__(self, *, input_dim: int, hidden_dims: Sequence[int], latent_dim: int,
                 levels: int, codebook_size: int, distance: str = "l2", quantizer: str = "ste",
                 commitment_weight: float = 0.25, gumbel_tau: float = 1.0,
                 activation: str = "silu", dropout: float = 0.0, normalize: str = "none",
                 latent_norm: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        self.encoder = mlp([input_dim, *hidden_dims, latent_dim], activation, dropout)
        if latent_norm:
            # a parameter-free LayerNorm keeps the latent at the scale k-means initialised the
            # codebooks at: without it the encoder's early steps shrink or shift the latent
            # faster than codewords follow, and most items fall into a few cells
            self.encoder.append(nn.LayerNorm(latent_dim, elementwise_affine=False))
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), input_dim], activation, dropout)
        self.quantizer = ResidualQuantizer(
            levels=levels, codebook_size=codebook_size, dim=latent_dim, distance=distance,
            forward_mode=quantizer, commitment_weight=commitment_weight, gumbel_tau=gumbel_tau)
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the network sees it (after the optional normalisation)."""
        x = x.float()
        if self.normalize == "standardize":
            return (x - self.mean) / self.std
        if self.normalize == "l2":
            return F.normalize(x, dim=-1)
        return x

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Data-dependent init: scale each encoder layer to zero mean, unit variance on ``x``.

        Item embeddings often differ by far less than their common offset (MiniLM vectors:
        per-dimension spread ~6e-4 in the untrained latent against an offset of ~3e-2); one
        optimizer step then moves every item more than the items differ, and a k-means
        initialised codebook collapses at once. With unit-scale activations layer by layer,
        one step is small against the spread of the items.
        """
        h = self.prepare(x)
        for layer in self.encoder:
            if isinstance(layer, nn.Linear):
                out = layer(h)
                mean, std = out.mean(0), out.std(0).clamp_min(1e-6)
                layer.weight.div_(std[:, None])
                layer.bias.sub_(mean).div_(std)
            h = layer(h)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        target = self.prepare(x)
        z = self.encoder(target)
        out = self.quantizer(z)
        recon = self.decoder(out["quantized"].to(z.dtype))
        recon_loss = ((recon.float() - target) ** 2).sum(-1).mean()  # summed over dimensions
        out.update(recon_loss=recon_loss, loss=recon_loss + out["quant_loss"])
        return out

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.encoder(self.prepare(x)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prepared input, reconstruction, codes)."""
        target = self.prepare(x)
        codes = self.quantizer.encode(self.encoder(target))
        recon = self.decoder(self.quantizer.decode_codes(codes).to(target.dtype))
        return target, recon.float(), codes
