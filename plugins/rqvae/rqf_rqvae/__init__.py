"""The RQ-VAE model plugin for rqf."""

from rqf.codes import SemanticIds, code_statistics, unique_codes
from rqf_rqvae.model import RQVAEModel

__all__ = ["RQVAEModel", "SemanticIds", "code_statistics", "unique_codes"]
