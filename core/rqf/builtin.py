"""The core's own components, registered through the same hooks a third-party plugin uses."""

from __future__ import annotations

import numpy as np

from rqf.errors import ConfigError
from rqf.hookspecs import hookimpl
from rqf.interfaces import Dataset, Splitter
from rqf.params import Param


def check_disjoint(splits: dict[str, Dataset]) -> dict[str, int]:
    """Count keys shared between splits; a shared key means one split sees another's data."""
    keys = {name: set(np.asarray(view.key_ids()).tolist()) for name, view in splits.items()}
    names = sorted(keys)
    overlaps = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlaps[f"{a}/{b}"] = len(keys[a] & keys[b])
    return overlaps


class IndexSplitter(Splitter):
    """Split by position: the last test_ratio of samples for test, the valid_ratio before it."""

    name = "index"
    params = (
        Param("test_ratio", float, 0.2, "share of samples held out for test", min=0, max=1),
        Param("valid_ratio", float, 0.0, "share of samples held out for validation", min=0, max=1),
        Param("shuffle", bool, False, "shuffle positions (seeded by the pipeline seed) first"),
    )

    def split(self, dataset: Dataset) -> dict[str, Dataset]:
        test_ratio = self.config["test_ratio"]
        valid_ratio = self.config["valid_ratio"]
        if test_ratio + valid_ratio >= 1:
            raise ConfigError(f"splitter: test_ratio + valid_ratio must be below 1, got "
                              f"{test_ratio} + {valid_ratio}")
        n = len(dataset)
        order = np.arange(n)
        if self.config["shuffle"]:
            order = np.random.default_rng(self.seed).permutation(n)
        n_test = int(round(n * test_ratio))
        n_valid = int(round(n * valid_ratio))
        n_train = n - n_test - n_valid
        if n_train <= 0:
            raise ConfigError(f"splitter: {n} samples leave nothing to train on with "
                              f"test_ratio={test_ratio}, valid_ratio={valid_ratio}")
        parts = {"train": order[:n_train], "valid": order[n_train:n_train + n_valid],
                 "test": order[n_train + n_valid:]}
        splits = {role: dataset.subset(np.sort(idx), role) for role, idx in parts.items()
                  if len(idx)}
        overlaps = check_disjoint(splits)
        if any(overlaps.values()):
            raise ConfigError(f"splitter index: splits share samples {overlaps}; "
                              "the dataset has duplicate keys")
        self.report = {
            "splitter": "index",
            "counts": {role: len(view) for role, view in splits.items()},
            "shuffled": bool(self.config["shuffle"]),
            "leakage_check": {"shared_keys": overlaps, "passed": True},
        }
        return splits


@hookimpl
def register_splitters(register):
    register(IndexSplitter)


@hookimpl
def register_trackers(register):
    from rqf.tracking import MLflowTracker, TensorBoardTracker, WandbTracker

    register(TensorBoardTracker)
    register(MLflowTracker)
    register(WandbTracker)


@hookimpl
def register_models(register):
    from rqf.ranking.floors import LastItemNNModel, MostPopModel  # torch: only when asked

    register(MostPopModel)
    register(LastItemNNModel)
