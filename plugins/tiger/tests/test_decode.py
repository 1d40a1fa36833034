"""The prefix trie of valid IDs and constrained beam search (no data files)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rqf.codes import PrefixTrie
from rqf_tiger.decode import constrained_beam_search

CODES = np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0], [0, 3, 0], [2, 2, 5]])


# --- the trie -------------------------------------------------------------------------------

def test_trie_spells_every_id_and_only_those():
    trie = PrefixTrie(CODES)
    np.testing.assert_array_equal(trie.lookup(CODES), np.arange(5))
    assert trie.lookup(np.array([[0, 1, 2], [1, 0, 0], [2, 2, 4], [0, 3, 0]])).tolist() == \
        [-1, -1, -1, 3]
    assert trie.allowed(0, torch.tensor([0])).tolist() == [[True, False, True]]
    node = trie.step(0, torch.tensor([0]), torch.tensor([2]))
    assert trie.allowed(1, node).tolist() == [[True, False, True, False]]
    assert trie.step(0, torch.tensor([0]), torch.tensor([1])).item() == -1
    with pytest.raises(ValueError, match="not unique"):
        PrefixTrie(np.vstack([CODES, CODES[:1]]))


# --- constrained beam search ----------------------------------------------------------------

def fixed_logits(table: list[torch.Tensor], offsets: list[int], width: int):
    """Next-token logits that depend only on the level: level l scores table[l]."""
    def step(tokens: torch.Tensor, expand: int) -> torch.Tensor:
        level = tokens.shape[1]
        out = torch.full((len(tokens), width), -50.0)
        out[:, offsets[level]:offsets[level] + len(table[level])] = table[level]
        return out
    return step


def test_beam_search_returns_the_most_likely_valid_ids_in_order():
    rng = np.random.default_rng(0)
    codes = np.array(list(itertools.product(range(4), range(3), range(5))))
    codes = codes[rng.permutation(len(codes))[:25]]  # a sparse set of valid IDs
    trie = PrefixTrie(codes)
    offsets = [2, 2 + 4, 2 + 4 + 3]
    table = [torch.tensor(rng.normal(size=v), dtype=torch.float32) for v in trie.vocab]
    nodes, scores = constrained_beam_search(fixed_logits(table, offsets, 20), 2, trie, offsets,
                                            8, torch.device("cpu"))
    # brute force: each level's log-softmax is over the tokens allowed after that prefix
    def score(code):
        total, prefix_rows = 0.0, codes
        for level, c in enumerate(code):
            allowed = np.unique(prefix_rows[:, level])
            logp = torch.log_softmax(table[level][allowed], 0)
            total += float(logp[list(allowed).index(c)])
            prefix_rows = prefix_rows[prefix_rows[:, level] == c]
        return total
    expected = sorted(range(len(codes)), key=lambda i: -score(codes[i]))[:8]
    for row in range(2):
        assert trie.rows[nodes[row].numpy()].tolist() == expected
        np.testing.assert_allclose(scores[row].numpy(), [score(codes[i]) for i in expected],
                                   rtol=1e-5)


def test_beam_search_never_leaves_the_valid_ids_even_when_the_model_wants_to():
    trie = PrefixTrie(CODES)
    offsets = [2, 5, 9]
    # the model's favourite tokens are all invalid continuations
    table = [torch.tensor([0.0, 9.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 0.0]),
             torch.tensor([0.0, 0.0, 0.0, 0.0, 9.0, 0.0])]
    nodes, scores = constrained_beam_search(fixed_logits(table, offsets, 20), 3, trie, offsets,
                                            10, torch.device("cpu"))
    found = nodes[nodes >= 0].numpy()
    assert sorted(trie.rows[found[:5]].tolist()) == [0, 1, 2, 3, 4]  # all five, once each
    assert (nodes[:, 5:] == -1).all() and torch.isinf(scores[:, 5:]).all()  # nothing invented


def test_excluded_ids_are_never_completed_and_the_rest_keep_their_order():
    rng = np.random.default_rng(3)
    codes = np.array(list(itertools.product(range(4), range(3), range(2))))[:20]
    trie = PrefixTrie(codes)
    offsets = [2, 6, 9]
    table = [torch.tensor(rng.normal(size=v), dtype=torch.float32) for v in trie.vocab]
    step = fixed_logits(table, offsets, 20)
    full, _ = constrained_beam_search(step, 2, trie, offsets, 20, torch.device("cpu"))
    ranked = full[0].tolist()  # every ID, best first (the beam holds them all)
    # row 0 excludes the three best IDs, row 1 two others (and -1 padding)
    exclude = torch.tensor([ranked[:3], [ranked[5], ranked[9], -1]])
    nodes, _ = constrained_beam_search(step, 2, trie, offsets, 6, torch.device("cpu"), exclude)
    assert nodes[0].tolist() == ranked[3:9]
    assert nodes[1].tolist() == [n for n in ranked if n not in (ranked[5], ranked[9])][:6]
