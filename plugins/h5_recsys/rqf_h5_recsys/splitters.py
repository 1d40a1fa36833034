"""Splitters over user sequences: leave-last-out, a global temporal cut-off, and the seed's auto rule.

Each reports its counts and the users it left out of a split (and why) in ``report``, and
checks that no evaluation target is visible in the training input of the same user.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from rqf import (ConfigError, DataError, Dataset, IndexSplitter, Param, SequenceRecords,
                 SequenceView, Splitter, input_positions, missing_members, positions)


def _sequences(dataset: Dataset, splitter: str) -> SequenceView:
    if missing_members(dataset, SequenceView):
        raise ConfigError(f"splitter.type: {splitter!r} splits user sequences; use "
                          f"dataset.type: sequences (got {dataset.name!r}), or the 'index' splitter")
    if not len(dataset.records):  # type: ignore[attr-defined]
        where = getattr(getattr(dataset, "storage", None), "sequences_path", None) or "the data"
        raise DataError(f"{where}: holds no user sequences; {splitter!r} needs users with items "
                        "(a catalogue without interactions trains item models with dataset: "
                        "items and the 'index' splitter)")
    return dataset  # type: ignore[return-value]


def leaked_targets(train: SequenceRecords, held_out: SequenceRecords, n_users: int) -> int:
    """Evaluation records whose target position lies inside the same user's training input."""
    train_end = np.zeros(n_users, np.int64)
    np.maximum.at(train_end, train.user, train.end)
    has = held_out.target >= 0
    return int((train_end[held_out.user[has]] > held_out.target[has]).sum())


def _leakage_report(splits: dict[str, SequenceView], n_users: int) -> dict[str, Any]:
    train = splits["train"].records
    counts = {role: leaked_targets(train, view.records, n_users)
              for role, view in splits.items() if role != "train"}
    return {"targets_in_training_input": counts, "passed": not any(counts.values())}


def _views(dataset: SequenceView, records: dict[str, SequenceRecords]) -> dict[str, SequenceView]:
    return {role: dataset.with_records(r, role) for role, r in records.items() if len(r)}


class LeaveLastOutSplitter(Splitter):
    """Hold out each user's last two items: valid predicts item N-1, test predicts item N."""

    name = "leave_last_out"
    params = (
        Param("protocol", str, "standard",
              "standard: train on the prefix, valid = first N-1 -> item N-1, test = first N -> "
              "item N. seed: the original guide's variant, train on full sequences (target -1) "
              "and validate on first N-1 -> item N (its targets are trained on)",
              choices=("standard", "seed")),
    )

    def split(self, dataset: Dataset) -> dict[str, Dataset]:
        data = _sequences(dataset, self.name)
        n = data.records.end - data.records.start
        user, start = data.records.user, data.records.start
        protocol = self.config["protocol"]
        if protocol == "seed":
            has_valid = n >= 2
            records = {
                "train": SequenceRecords.build(user, start, start + n, np.full(len(n), -1)),
                "valid": SequenceRecords.build(user[has_valid], start[has_valid],
                                               (start + n - 1)[has_valid], (start + n - 1)[has_valid]),
            }
            dropped = {"valid": {"users": int((~has_valid).sum()),
                                 "why": "a single item leaves no history to predict it from"}}
        else:
            # Rule for short sequences: 1 item -> train only; 2 items -> train on item 1 and
            # test on item 2, no validation; 3 or more -> all three splits.
            train_len = np.where(n >= 3, n - 2, 1)
            has_valid, has_test = n >= 3, n >= 2
            records = {
                "train": SequenceRecords.build(user, start, start + train_len, np.full(len(n), -1)),
                "valid": SequenceRecords.build(user[has_valid], start[has_valid],
                                               (start + n - 2)[has_valid], (start + n - 2)[has_valid]),
                "test": SequenceRecords.build(user[has_test], start[has_test],
                                              (start + n - 1)[has_test], (start + n - 1)[has_test]),
            }
            dropped = {
                "valid": {"users": int((~has_valid).sum()),
                          "why": "fewer than 3 items: train on the first, test on the second"},
                "test": {"users": int((~has_test).sum()),
                         "why": "a single item: kept for training only"},
            }
        splits = _views(data, records)
        leakage = _leakage_report(splits, len(data.table))
        if protocol == "seed":
            leakage["note"] = "protocol=seed trains on the targets it validates on, by design"
            warnings.warn("leave_last_out protocol=seed: validation targets are in the training "
                          "sequences", stacklevel=2)
        elif not leakage["passed"]:
            raise DataError(f"leave_last_out: evaluation targets leak into training {leakage}")
        self.report = {"splitter": self.name, "protocol": protocol,
                       "counts": {r: len(v) for r, v in splits.items()},
                       "users_without": dropped, "leakage_check": leakage}
        return splits


def _where(view: Any) -> str:
    storage = getattr(view, "storage", None)
    return str(getattr(storage, "sequences_path", None) or getattr(storage, "name", "sequences"))


CUTOFF_QUANTILE = Param("cutoff_quantile", float, 0.8,
                        "cut-off at this quantile of all interaction timestamps", min=0, max=1)


class TemporalSplitter(Splitter):
    """A global time cut-off: nothing at or after it is trained on; test predicts past it."""

    name = "temporal"
    params = (
        CUTOFF_QUANTILE,
        Param("cutoff_time", int, None, "absolute cut-off (unix time); overrides the quantile",
              nullable=True),
        Param("valid_quantile", float, None,
              "optional earlier cut-off for validation; training then stops there",
              nullable=True, min=0, max=1),
    )

    def _cutoffs(self, ts: np.ndarray) -> tuple[int, int | None]:
        """The test cut-off time and, with valid_quantile, the validation cut-off before it."""
        q, cut = self.config["cutoff_quantile"], self.config["cutoff_time"]
        cut = int(np.quantile(ts, q, method="higher")) if cut is None else int(cut)
        vq = self.config["valid_quantile"]
        valid_cut = int(np.quantile(ts, vq, method="higher")) if vq is not None else None
        if valid_cut is not None and valid_cut > cut:
            raise ConfigError(f"splitter.valid_quantile: {vq} gives a cut-off after the test "
                              f"cut-off ({valid_cut} > {cut})")
        return cut, valid_cut

    def split(self, dataset: Dataset) -> dict[str, Dataset]:
        data = _sequences(dataset, self.name)
        ts = data.table.timestamps
        if ts is None:
            raise DataError(f"{_where(data)}: timestamps: the temporal splitter "
                            "needs per-interaction timestamps and this file has none (use "
                            "splitter.type: auto or index)")
        cut, valid_cut = self._cutoffs(ts)
        r = data.records
        base = data.table.offsets[r.user]

        lengths = r.end - r.start
        flat = positions(base + r.start, lengths)
        local = flat - np.repeat(base, lengths)
        seg = np.zeros(len(r), np.int64)
        np.cumsum(lengths[:-1], out=seg[1:])

        def first_at_or_after(t: int) -> np.ndarray:
            # per record: first input position whose time is >= t (end when none); times are
            # sorted within a user, so this is where the user's history crosses the cut-off
            candidate = np.where(ts[flat] >= t, local, np.iinfo(np.int64).max)
            return np.minimum(np.minimum.reduceat(candidate, seg), r.end) if len(r) else r.end

        p_test = first_at_or_after(cut)
        train_end = first_at_or_after(valid_cut) if valid_cut is not None else p_test
        in_train = train_end > r.start
        records = {"train": SequenceRecords.build(r.user[in_train], r.start[in_train],
                                                  train_end[in_train], np.full(in_train.sum(), -1))}
        has_test = (p_test > r.start) & (p_test < r.end)
        records["test"] = SequenceRecords.build(r.user[has_test], r.start[has_test],
                                                p_test[has_test], p_test[has_test])
        dropped = {"train": {"users": int((~in_train).sum()),
                             "why": "no interaction before the training cut-off"},
                   "test": {"users": int((~has_test).sum()),
                            "why": "no history before the cut-off or no interaction after it"}}
        if valid_cut is not None:
            has_valid = (train_end > r.start) & (train_end < p_test)
            records["valid"] = SequenceRecords.build(r.user[has_valid], r.start[has_valid],
                                                     train_end[has_valid], train_end[has_valid])
            dropped["valid"] = {"users": int((~has_valid).sum()),
                                "why": "no interaction between the two cut-offs or no history"}
        splits = _views(data, records)
        train_pos = input_positions(splits["train"]) if "train" in splits else np.zeros(0, int)
        last_train_time = int(ts[train_pos].max()) if len(train_pos) else None
        train_cut = valid_cut if valid_cut is not None else cut
        leakage = _leakage_report(splits, len(data.table))
        leakage["latest_training_time"] = last_train_time
        leakage["passed"] = leakage["passed"] and (last_train_time is None
                                                   or last_train_time < train_cut)
        if not leakage["passed"]:
            raise DataError(f"temporal: training input reaches past the cut-off {leakage}")
        self.report = {"splitter": self.name, "cutoff_time": cut,
                       "cutoff_quantile": self.config["cutoff_quantile"],
                       "valid_cutoff_time": valid_cut,
                       "counts": {role: len(v) for role, v in splits.items()},
                       "users_without": dropped, "leakage_check": leakage}
        return splits


class AutoSplitter(Splitter):
    """The seed's rule: temporal when the sequences carry timestamps, else index with test_ratio."""

    name = "auto"
    params = (
        Param("test_ratio", float, 0.2, "test share for the index split (no timestamps)",
              min=0, max=1),
        CUTOFF_QUANTILE,
    )

    def split(self, dataset: Dataset) -> dict[str, Dataset]:
        data = _sequences(dataset, self.name)
        inner: Splitter
        if data.table.timestamps is not None:
            inner = TemporalSplitter(seed=self.seed,
                                     cutoff_quantile=self.config["cutoff_quantile"])
            reason = "the sequences have timestamps"
        else:
            inner = IndexSplitter(seed=self.seed, test_ratio=self.config["test_ratio"])
            reason = "the sequences have no timestamps"
        splits = inner.split(data)
        self.report = {**inner.report, "splitter": self.name, "chose": inner.name,
                       "because": reason}
        return splits
