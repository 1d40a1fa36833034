"""The network of ``genret``: a causal (decoder-only) transformer over a user's items written as
their semantic-ID tokens, one position per token.

A position carries its token, the slot of its item in the sequence and its level inside the
item. Every position reads only itself and the positions before it, and no position reads
padding, so each item's tokens are predicted from everything before them: one forward pass
trains every next item of a sequence. Ranking runs the history once, keeps its keys and values
per layer, and then decodes the beams of the next item against them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD = 0


class Block(nn.Module):
    """A pre-norm self-attention block whose attention can also read cached keys and values."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(ff, d_model))
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` (B, T, d); ``allowed`` (B, 1, T, C + T) bool, what each position may read among
        the ``C`` cached positions then its own; returns the output and this call's keys and
        values (B, heads, T, d/heads)."""
        q, k, v = (self._split(part) for part in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        keys, values = (k, v) if cache is None else (torch.cat([cache[0], k], 2),
                                                     torch.cat([cache[1], v], 2))
        attended = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=allowed,
            dropout_p=self.dropout if self.training else 0.0)
        b, _, t, _ = attended.shape
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(b, t, -1)))
        return x + self.drop(self.ff(self.norm2(x))), (k, v)


class CausalIdNet(nn.Module):
    """Token, item-slot and level embeddings, causal blocks, and per-level output scores."""

    def __init__(self, *, n_tokens: int, slots: int, levels: int, d_model: int, heads: int,
                 layers: int, ff: int, dropout: float, tied: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_tokens, d_model, padding_idx=PAD)
        self.slot = nn.Embedding(slots, d_model)
        self.level = nn.Embedding(levels + 1, d_model)  # the last: a user token
        self.blocks = nn.ModuleList(Block(d_model, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.tied = tied
        self.head = None if tied else nn.Linear(d_model, n_tokens, bias=False)
        for table in (self.embed, self.slot, self.level):
            nn.init.normal_(table.weight, std=d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()

    def inputs(self, tokens: torch.Tensor, slots: torch.Tensor, levels: torch.Tensor
               ) -> torch.Tensor:
        return self.drop(self.embed(tokens) + self.slot(slots) + self.level(levels))

    def forward(self, tokens: torch.Tensor, slots: torch.Tensor, levels: torch.Tensor,
                segments: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """(B, T) tokens, their item slots and levels ((T,) or (B, T)) -> hidden states
        (B, T, d) and each layer's keys and values. ``segments`` (B, T) packs several users
        into a row: a position reads only earlier positions of its own segment (0: padding);
        without it each row is one user, left-padded with PAD."""
        t = tokens.shape[1]
        own = torch.eye(t, dtype=torch.bool, device=tokens.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        if segments is None:
            readable = (tokens != PAD)[:, None, :]
        else:
            readable = (segments[:, :, None] == segments[:, None, :]) & (segments > 0)[:, None]
        # a padding position reads itself only, so its attention is never empty
        allowed = (causal & (readable | own))[:, None]
        x = self.inputs(tokens, slots, levels)
        cache = []
        for block in self.blocks:
            x, kv = block(x, allowed)
            cache.append(kv)
        return self.norm(x), cache

    def scores(self, hidden: torch.Tensor, first: int, count: int) -> torch.Tensor:
        """Scores of tokens ``first`` .. ``first + count - 1`` (one level's codes)."""
        weight = (self.embed.weight if self.tied else self.head.weight)[first:first + count]
        return hidden @ weight.T

    def extend(self, tokens: torch.Tensor, slot: int, cache: list, real: torch.Tensor
               ) -> torch.Tensor:
        """Hidden state of the last token of each beam: ``tokens`` (B, W, t), the first ``t``
        tokens of W beams per input, each beam reading the cached history (``real`` (B, C)
        marks its non-padding positions) and its own earlier tokens only."""
        b, w, t = tokens.shape
        device = tokens.device
        levels = torch.arange(t, device=device).repeat(w)
        x = self.inputs(tokens.reshape(b, w * t), torch.full_like(levels, slot), levels)
        own = torch.arange(w * t, device=device)
        mine = (own[:, None] // t == own[None, :] // t) & (own[None, :] <= own[:, None])
        allowed = torch.cat([real[:, None, :].expand(b, w * t, -1),
                             mine[None].expand(b, -1, -1)], 2)[:, None]
        for block, kv in zip(self.blocks, cache):
            x, _ = block(x, allowed, kv)
        return self.norm(x).reshape(b, w, t, -1)[:, :, -1]


def codebook_embeddings(codebooks: np.ndarray, d_model: int, std: float) -> np.ndarray:
    """(levels, K, d_model) token embeddings from a tokenizer's (levels, K, dim) codebooks.

    Each level's codewords are centred and scaled to unit mean square; all levels share one
    projection onto the ``d_model`` principal directions of the codewords (an orthogonal map
    when ``dim <= d_model``, the rest of the width left at zero), so distances between a
    level's codewords are kept up to one factor per level; each level is then scaled to a root
    mean square of ``std`` per coordinate, the network's initial scale.
    """
    books = np.asarray(codebooks, np.float64)
    levels, k, dim = books.shape
    books = books - books.mean(1, keepdims=True)
    books /= np.sqrt((books ** 2).mean((1, 2), keepdims=True)) + 1e-12
    flat = books.reshape(-1, dim)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    width = min(d_model, vt.shape[0])
    out = np.zeros((levels, k, d_model))
    out[..., :width] = books @ vt[:width].T
    rms = np.sqrt((out ** 2).mean((1, 2), keepdims=True)) + 1e-12
    return (out / rms * std).astype(np.float32)
