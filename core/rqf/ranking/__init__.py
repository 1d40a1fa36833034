"""Ranking, shared by every model that recommends items and by the floors it is measured against.

The twin of ``rqf.codes``: what a ranker plugin imports instead of writing its own harness.
``examples`` (next-item examples from a sequence view, histories, monitored validation users),
``metrics`` (Recall/NDCG at K), ``recommendations`` (the ``recommendations.h5`` format),
``ranker`` (``NextItemModel``, the base whose ``recommend`` is all a ranker must write, and its
training task) and ``floors`` (``mostpop`` and ``lastitem_nn``, registered by the core).
"""

from rqf.ranking.examples import (Examples, catalogue_positions, dedup_history, eval_examples,
                                  monitored_examples, parse_history, right_align, sequence_rows,
                                  sequence_table, train_examples)
from rqf.ranking.floors import LastItemNNModel, MostPopModel, fit_floors
from rqf.ranking.metrics import KS, coverage, per_user_metrics, ranking_metrics
from rqf.ranking.ranker import (EXCLUDE_HISTORY, FLOORS, HISTORY, TOP_K, NextItemModel, Ranking,
                                RankingTask, mask_history, without_history)
from rqf.ranking.recommendations import FORMAT, read_recommendations, write_recommendations

__all__ = [
    # the base of a ranker and what it declares
    "NextItemModel", "RankingTask", "Ranking", "HISTORY", "TOP_K", "FLOORS", "EXCLUDE_HISTORY",
    "without_history", "mask_history",
    # next-item examples and histories
    "Examples", "eval_examples", "train_examples", "sequence_rows", "sequence_table",
    "monitored_examples", "right_align", "dedup_history", "catalogue_positions", "parse_history",
    # judging a ranking
    "ranking_metrics", "per_user_metrics", "coverage", "KS", "MostPopModel", "LastItemNNModel",
    "fit_floors",
    # the recommendations.h5 contract
    "write_recommendations", "read_recommendations", "FORMAT",
]
