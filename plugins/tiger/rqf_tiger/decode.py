"""Beam search constrained to valid semantic IDs: every beam stays on a path of the trie."""

from __future__ import annotations

import torch

from rqf.codes import PrefixTrie


@torch.no_grad()
def constrained_beam_search(step_logits, batch: int, trie: PrefixTrie, offsets: list[int],
                            beam: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``beam`` most likely valid IDs of each of ``batch`` inputs, best first.

    ``step_logits(tokens, expand)`` returns the next-token logits (rows, vocabulary) for
    decoder inputs ``tokens`` (rows, t), where row j belongs to input j // expand.
    Level l's code c is token ``offsets[l] + c``. Returns (leaf nodes, log-probabilities),
    both (batch, beam); a beam that found no valid ID (fewer IDs than beams) has node -1 and
    log-probability -inf. Distinct beams are distinct leaves, so distinct items.
    """
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
        k = min(beam, width * vocab)
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
