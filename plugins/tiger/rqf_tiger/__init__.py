"""rqf plugin: generative retrieval over semantic IDs, judged by Recall/NDCG@K."""

from rqf_tiger.baselines import LastItemNNModel, MostPopModel
from rqf_tiger.evaluation import ranking_metrics, read_recommendations, write_recommendations
from rqf_tiger.model import TigerModel
from rqf_tiger.sasrec import SASRecModel

__all__ = ["LastItemNNModel", "MostPopModel", "SASRecModel", "TigerModel", "ranking_metrics",
           "read_recommendations", "write_recommendations"]
