"""Recommendation data for rqf: item and sequence HDF5 files, their datasets and splitters."""

from rqf_h5_recsys.loader import create_h5_dataloader
from rqf_h5_recsys.storage import H5RecsysStorage
from rqf_h5_recsys.writer import from_interactions, write_item_data, write_sequence_data

__all__ = ["H5RecsysStorage", "create_h5_dataloader", "from_interactions", "write_item_data",
           "write_sequence_data"]
