"""The prefix trie of valid IDs, constrained beam search and ranking metrics (no data files)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rqf.codes import PrefixTrie
from rqf.ranking import ranking_metrics
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


# --- metrics ---------------------------------------------------------------------------------

def test_ranking_metrics_on_hand_made_rankings():
    ranked = np.array([[7, 3, 9, 1, 4, 5, 6, 8, 2, 0],    # target 7 at rank 1
                       [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],   # target 6 at rank 6
                       [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],   # target 11: a miss
                       [5, 4, 3, 2, 1, 0, 9, 8, 7, 6]])   # target 2 at rank 4
    m = ranking_metrics(ranked, np.array([7, 6, 11, 2]))
    assert m["users"] == 4
    assert m["recall@5"] == pytest.approx(2 / 4) and m["recall@10"] == pytest.approx(3 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(7) + 1 / math.log2(5)) / 4)
    with pytest.raises(ValueError, match="needs 10 recommendations"):
        ranking_metrics(ranked[:, :5], np.array([7, 6, 11, 2]))
