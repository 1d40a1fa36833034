"""Semantic codes, shared by every tokenizer and every model that consumes them.

What lives here: k-means on the device (the initialisation of residual codebooks), code
statistics (usage, perplexity, collisions), collision handling (``suffix``, ``reassign``,
``balanced``), the ``semantic_ids.h5`` format with its reader, and ``ItemTokenizer``, the
shell every item tokenizer (a ``Model``) shares, with the collaborative view it codes beside
the item vectors where the data holds user sequences. One idea a file: ``clustering``,
``statistics``, ``collisions``, ``semantic_ids``, ``collaborative``, ``tokenizer``.

A semantic ID is an item's code tuple ``codes`` (n, levels) plus one extra level that tells
apart the items still sharing a tuple (``unique_codes`` (n, levels + 1)). Collision handling
decides the last level of ``codes``:

- ``suffix``: every item keeps its nearest codeword; the extra level numbers the items that
  share a tuple (TIGER's scheme).
- ``reassign``: within a shared prefix (all levels but the last), an item whose tuple is taken
  moves to its nearest *free* last-level codeword, so the ID stays semantic (a second-best
  codeword, not a counter). Items that find no free codeword keep their tuple and get a suffix.
- ``balanced``: the last level is assigned by Sinkhorn-Knopp with equal code marginals
  (LC-Rec's balanced assignment), then made unique within each prefix as ``reassign`` does.
"""

from rqf.codes.clustering import (DISTANCE_CHUNK, balanced_assignment, balanced_kmeans, kmeans,
                                  kmeans_plus_plus, nearest, sinkhorn, squared_distances)
from rqf.codes.collisions import (COLLISION_MODES, MOVER_ROWS_BUDGET, handle_collisions,
                                  handle_collisions_streamed)
from rqf.codes.semantic_ids import FORMAT, PrefixTrie, SemanticIds, sha256_of, write_semantic_ids
from rqf.codes.statistics import (HEALTHY_COLLISIONS, HEALTHY_REL_ERROR, HEALTHY_USAGE,
                                  code_health, code_statistics, group_codes, plot_usage,
                                  unique_codes)
from rqf.codes.tokenizer import CodedItems, ItemTokenizer

__all__ = [
    # making codes
    "kmeans", "kmeans_plus_plus", "balanced_kmeans", "balanced_assignment", "nearest",
    "squared_distances", "sinkhorn", "DISTANCE_CHUNK",
    # judging them
    "code_statistics", "code_health", "group_codes", "unique_codes", "plot_usage",
    "HEALTHY_USAGE", "HEALTHY_COLLISIONS", "HEALTHY_REL_ERROR",
    # making them unique
    "handle_collisions", "handle_collisions_streamed", "COLLISION_MODES", "MOVER_ROWS_BUDGET",
    # the semantic_ids.h5 contract
    "write_semantic_ids", "SemanticIds", "PrefixTrie", "sha256_of", "FORMAT",
    # the shell of an item tokenizer (a Model): rqvae and rqkmeans build on it
    "ItemTokenizer", "CodedItems",
]
