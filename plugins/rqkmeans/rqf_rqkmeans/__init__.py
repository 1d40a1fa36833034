"""rqf plugin: residual k-means semantic IDs."""

from rqf_rqkmeans.model import RQKMeansModel

__all__ = ["RQKMeansModel"]
