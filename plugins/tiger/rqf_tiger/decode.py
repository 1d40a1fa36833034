"""Beam search constrained to valid semantic IDs: every beam stays on a path of the trie."""

from __future__ import annotations

import torch

from rqf.codes import PrefixTrie


@torch.no_grad()
def constrained_beam_search(step_logits, batch: int, trie: PrefixTrie, offsets: list[int],
                            beam: int, device: torch.device, exclude: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``beam`` most likely valid IDs of each of ``batch`` inputs, best first.

    ``step_logits(tokens, expand)`` returns the next-token logits (rows, vocabulary) for
    decoder inputs ``tokens`` (rows, t), where row j belongs to input j // expand.
    Level l's code c is token ``offsets[l] + c``. Returns (leaf nodes, log-probabilities),
    both (batch, beam); a beam that found no valid ID (fewer IDs than beams) has node -1 and
    log-probability -inf. Distinct beams are distinct leaves, so distinct items.
    ``exclude`` (batch, E) leaves (-1: none) are never completed: the levels before the last
    keep E more beams (each excluded leaf can empty at most one of them), and at the last the
    tokens that would spell an excluded leaf are taken off, so ``beam`` other IDs remain.
    """
    search = beam
    if exclude is not None:
        parent, code = _leaf_parents(trie, device)
        exclude = exclude.to(device)
        ex_parent = torch.where(exclude >= 0, parent[exclude.clamp_min(0)], -2)
        ex_code = code[exclude.clamp_min(0)]
        search = beam + int((exclude >= 0).sum(1).max()) if exclude.numel() else beam
    nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)
    scores = torch.zeros(batch, 1, device=device)
    tokens = torch.empty(batch, 1, 0, dtype=torch.long, device=device)
    for level in range(trie.levels):
        width = nodes.shape[1]
        vocab = trie.vocab[level]
        live = nodes >= 0
        flat_nodes = nodes.clamp_min(0).reshape(-1)
        logits = step_logits(tokens.reshape(batch * width, level), width)
        logits = logits[:, offsets[level]:offsets[level] + vocab].float()
        allowed = trie.allowed(level, flat_nodes) & live.reshape(-1, 1)
        logp = torch.log_softmax(logits.masked_fill(~allowed, -float("inf")), dim=-1)
        logp = logp.masked_fill(~allowed, -float("inf"))
        total = (scores.reshape(-1, 1) + logp).reshape(batch, width * vocab)
        if exclude is not None and level == trie.levels - 1:
            hit = nodes[:, :, None] == ex_parent[:, None, :]  # (batch, width, E)
            at = torch.arange(width, device=device)[None, :, None] * vocab + ex_code[:, None, :]
            marks = torch.zeros_like(total).scatter_add_(1, at.reshape(batch, -1),
                                                         hit.reshape(batch, -1).to(total.dtype))
            total = total.masked_fill(marks > 0, -float("inf"))
        k = min(beam if level == trie.levels - 1 else search, width * vocab)
        best, index = total.topk(k, dim=1)
        parent, code = index // vocab, index % vocab
        prev = nodes.gather(1, parent)
        nxt = trie.step(level, prev.clamp_min(0).reshape(-1), code.reshape(-1)).reshape(batch, k)
        valid = torch.isfinite(best) & (prev >= 0)
        nodes = torch.where(valid, nxt, torch.full_like(nxt, -1))
        scores = best
        tokens = torch.cat([tokens.gather(1, parent[..., None].expand(-1, -1, level)),
                            (code + offsets[level])[..., None]], dim=2)
    return nodes, scores


def _leaf_parents(trie: PrefixTrie, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each leaf's node one level up and its last token."""
    table = trie.children[-1]
    parent, code = torch.nonzero(table >= 0, as_tuple=True)
    leaves = table[parent, code]
    n = int(leaves.max()) + 1
    p = torch.empty(n, dtype=torch.long, device=table.device).scatter_(0, leaves, parent)
    c = torch.empty(n, dtype=torch.long, device=table.device).scatter_(0, leaves, code)
    return p.to(device), c.to(device)
