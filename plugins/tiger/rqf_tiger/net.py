"""TIGER's network: torch's nn.Transformer over semantic-ID tokens."""

from __future__ import annotations

import warnings

import torch
from torch import nn

PAD, BOS = 0, 1


class TigerNet(nn.Module):
    """torch's nn.Transformer over ID tokens, with learned positions."""

    def __init__(self, *, n_tokens: int, source_len: int, levels: int, d_model: int, heads: int,
                 layers: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_tokens, d_model, padding_idx=PAD)
        self.source_pos = nn.Embedding(source_len, d_model)
        self.target_pos = nn.Embedding(levels + 1, d_model)
        with warnings.catch_warnings():  # pre-norm layers have no nested-tensor fast path
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(d_model, heads, layers, layers, ff, dropout,
                                              batch_first=True, norm_first=True)
        self.head = nn.Linear(d_model, n_tokens)

    def encode(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = source == PAD
        x = self.embed(source) + self.source_pos.weight[:source.shape[1]]
        return self.transformer.encoder(x, src_key_padding_mask=pad), pad

    def decode(self, target: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        t = target.shape[1]
        y = self.embed(target) + self.target_pos.weight[:t]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=y.device, dtype=y.dtype)
        h = self.transformer.decoder(y, memory, tgt_mask=causal, tgt_is_causal=True,
                                     memory_key_padding_mask=pad)
        return self.head(h)

    def decode_beams(self, tokens: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor
                     ) -> torch.Tensor:
        """Next-token logits (B, W, vocab) of W beams per input, decoder inputs (B, W, t).

        The beams are laid side by side in one target sequence, each attending only to its
        own earlier tokens (a block-diagonal causal mask), so the memory is projected once
        per input rather than once per beam.
        """
        b, w, t = tokens.shape
        y = self.embed(tokens) + self.target_pos.weight[:t]
        own = torch.arange(w * t, device=y.device)
        allowed = (own[:, None] // t == own[None, :] // t) & (own[None, :] <= own[:, None])
        mask = torch.zeros(w * t, w * t, device=y.device, dtype=y.dtype).masked_fill(
            ~allowed, -float("inf"))
        h = self.transformer.decoder(y.reshape(b, w * t, -1), memory, tgt_mask=mask,
                                     memory_key_padding_mask=pad)
        return self.head(h.reshape(b, w, t, -1)[:, :, -1])

    def forward(self, source: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
        memory, pad = self.encode(source)
        return self.decode(target_in, memory, pad)
