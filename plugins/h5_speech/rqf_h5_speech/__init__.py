"""Sharded MaskGCT feature caches for rqf: reader, crash-safe parallel writer, NPZ migration."""

from rqf_h5_speech.datasets import SpeechFramesDataset, UtterancesDataset, collate_utterances
from rqf_h5_speech.loader import UtteranceLoader
from rqf_h5_speech.migrate import migrate_npz
from rqf_h5_speech.storage import H5ShardedStorage
from rqf_h5_speech.writer import ShardedCacheWriter

__all__ = ["H5ShardedStorage", "ShardedCacheWriter", "SpeechFramesDataset", "UtteranceLoader",
           "UtterancesDataset", "collate_utterances", "migrate_npz"]
