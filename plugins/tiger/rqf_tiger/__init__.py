"""rqf plugin: generative retrieval over semantic IDs (TIGER) and SASRec, its reference; the
harness they are judged by (metrics, floors, recommendations.h5) is ``rqf.ranking``."""

from rqf_tiger.genret import GenretModel
from rqf_tiger.model import TigerModel
from rqf_tiger.sasrec import SASRecModel

__all__ = ["GenretModel", "SASRecModel", "TigerModel"]
