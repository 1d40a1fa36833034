"""The ``speaker`` splitter: no speaker appears in two splits."""

from __future__ import annotations

import numpy as np

from rqf import ConfigError, DataError, Dataset, Param, Splitter, check_disjoint
from rqf_h5_speech.datasets import SpeechDataset


class SpeakerSplitter(Splitter):
    """Split LibriTTS-style keys (subset/speaker/chapter/utt) by speaker."""

    name = "speaker"
    params = (
        Param("test_ratio", float, 0.1, "share of speakers held out for test", min=0, max=1),
        Param("valid_ratio", float, 0.1, "share of speakers held out for validation", min=0, max=1),
        Param("speaker_level", int, 1, "which '/'-separated part of the key names the speaker",
              min=0),
    )

    def split(self, dataset: Dataset) -> dict[str, Dataset]:
        if not isinstance(dataset, SpeechDataset):
            raise ConfigError(f"splitter.type: 'speaker' splits speech datasets, got {dataset.name!r}")
        level = self.config["speaker_level"]
        speakers = []
        for key in dataset.keys:
            parts = key.split("/")
            if len(parts) <= level:
                raise DataError(f"sample key {key!r} has no part {level} to read a speaker from "
                                "(expected subset/speaker/chapter/utt; set splitter.speaker_level)")
            speakers.append(parts[level])
        unique = np.array(sorted(set(speakers)))
        order = np.random.default_rng(self.seed).permutation(len(unique))
        n_test = int(round(len(unique) * self.config["test_ratio"]))
        n_valid = int(round(len(unique) * self.config["valid_ratio"]))
        if n_test + n_valid >= len(unique):
            raise ConfigError(f"splitter: {len(unique)} speakers leave none to train on")
        role_of = {}
        for rank, i in enumerate(order):
            role_of[unique[i]] = "test" if rank < n_test else (
                "valid" if rank < n_test + n_valid else "train")
        roles = np.array([role_of[s] for s in speakers])
        splits = {role: dataset.subset(np.flatnonzero(roles == role), role)
                  for role in ("train", "valid", "test") if (roles == role).any()}
        speaker_sets = {role: {s for s, r in zip(speakers, roles) if r == role} for role in splits}
        shared = {f"{a}/{b}": len(speaker_sets[a] & speaker_sets[b])
                  for i, a in enumerate(sorted(splits)) for b in sorted(splits)[i + 1:]}
        self.report = {"splitter": self.name,
                       "counts": {role: len(v) for role, v in splits.items()},
                       "speakers": {role: len(s) for role, s in speaker_sets.items()},
                       "leakage_check": {"shared_speakers": shared,
                                         "shared_keys": check_disjoint(splits),
                                         "passed": not any(shared.values())}}
        return splits
