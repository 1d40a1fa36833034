"""The ``speaker`` splitter: no speaker appears in two splits."""

from __future__ import annotations

import re

import numpy as np

from rqf import ConfigError, DataError, Dataset, Param, Splitter, check_disjoint
from rqf_h5_speech.datasets import SpeechDataset


class SpeakerSplitter(Splitter):
    """Split utterance keys by speaker (LibriTTS subset/speaker/..., or any key by a pattern)."""

    name = "speaker"
    params = (
        Param("test_ratio", float, 0.1, "share of speakers held out for test", min=0, max=1),
        Param("valid_ratio", float, 0.1, "share of speakers held out for validation", min=0, max=1),
        Param("speaker_level", int, 1, "which part of the key (split at speaker_separator) "
              "names the speaker", min=0),
        Param("speaker_separator", str, "/", "what separates the parts of a key: '/' for "
              "LibriTTS (subset/84/121123/...), '_' for VCTK (p225_001), '-' for LibriSpeech "
              "(84-121123-0000)"),
        Param("speaker_pattern", str, None, "a regular expression with one group, searched in "
              "each key: the group is the speaker (e.g. '(p\\d+)_'); set, it replaces "
              "speaker_level and speaker_separator", nullable=True),
    )

    def _speaker_of(self):
        """key -> speaker, from the pattern or the separator and part, checked once."""
        pattern, level = self.config["speaker_pattern"], self.config["speaker_level"]
        if pattern is not None:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"splitter.speaker_pattern: {pattern!r} is not a regular "
                                  f"expression ({exc})") from None
            if compiled.groups != 1:
                raise ConfigError(f"splitter.speaker_pattern: {pattern!r} has "
                                  f"{compiled.groups} groups; it needs exactly one, the speaker")

            def by_pattern(key: str) -> str:
                match = compiled.search(key)
                if match is None or not match.group(1):
                    raise DataError(f"sample key {key!r}: splitter.speaker_pattern {pattern!r} "
                                    "finds no speaker in it")
                return match.group(1)
            return by_pattern
        separator = self.config["speaker_separator"]
        if not separator:
            raise ConfigError("splitter.speaker_separator: empty; e.g. '/', '_' or '-'")

        def by_part(key: str) -> str:
            parts = key.split(separator)
            if len(parts) <= level or not parts[level]:
                raise DataError(f"sample key {key!r} has no part {level} (split at "
                                f"{separator!r}) to read a speaker from; set "
                                "splitter.speaker_level, speaker_separator or speaker_pattern")
            return parts[level]
        return by_part

    def split(self, dataset: Dataset) -> dict[str, Dataset]:
        if not isinstance(dataset, SpeechDataset):
            raise ConfigError(f"splitter.type: 'speaker' splits speech datasets, got {dataset.name!r}")
        speaker_of = self._speaker_of()
        speakers = [speaker_of(key) for key in dataset.keys]
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
