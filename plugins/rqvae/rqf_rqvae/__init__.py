"""The RQ-VAE model plugin for rqf."""

from rqf_rqvae.model import RQVAEModel
from rqf_rqvae.semantic_ids import SemanticIds, code_statistics, unique_codes

__all__ = ["RQVAEModel", "SemanticIds", "code_statistics", "unique_codes"]
