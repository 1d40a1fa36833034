"""h5_recsys datasets and splitters on generated files and on the real benchmark files."""


import numpy as np
import pytest

from rqf.testing import clustered, real_data
from rqf_h5_recsys.testing import write_seed_items, write_seed_sequences
from rqf.builtin import IndexSplitter
from rqf.errors import ConfigError, DataError
from rqf_h5_recsys.datasets import ItemsDataset, SequencesDataset
from rqf_h5_recsys.splitters import AutoSplitter, LeaveLastOutSplitter, TemporalSplitter
from rqf_h5_recsys.storage import H5RecsysStorage


def open_data(files, max_seq_len=200):
    storage = H5RecsysStorage(str(files["items"]), str(files["sequences"])).open()
    return SequencesDataset(storage, max_seq_len=max_seq_len)


def test_leave_last_out_holds_out_last_two_items(recsys_files):
    data = open_data(recsys_files)
    splits = LeaveLastOutSplitter(seed=0).split(data)
    table = data.table
    user = 7  # 8 items
    seq = table.item_ids[table.offsets[user]:table.offsets[user + 1]]
    rows = {role: int(np.flatnonzero(v.records.user == user)[0]) for role, v in splits.items()}
    train, valid, test = (splits[r][rows[r]] for r in ("train", "valid", "test"))
    assert train["ids"][:train["length"]].tolist() == seq[:6].tolist() and train["target"] == -1
    assert valid["ids"][:valid["length"]].tolist() == seq[:6].tolist() and valid["target"] == seq[6]
    assert test["ids"][:test["length"]].tolist() == seq[:7].tolist() and test["target"] == seq[7]


def test_leave_last_out_short_sequence_rule_is_reported(recsys_files):
    splitter = LeaveLastOutSplitter(seed=0)
    splits = splitter.split(open_data(recsys_files))
    # lengths are 1 + u % 12 for 60 users: five with one item, five with two
    assert splitter.report["counts"] == {"train": 60, "valid": 50, "test": 55}
    assert splitter.report["users_without"]["valid"]["users"] == 10
    assert splitter.report["users_without"]["test"]["users"] == 5
    assert splitter.report["leakage_check"]["passed"]
    one_item_user = 0
    row = int(np.flatnonzero(splits["train"].records.user == one_item_user)[0])
    assert splits["train"][row]["length"] == 1


def test_seed_protocol_trains_on_its_validation_targets_and_says_so(recsys_files):
    splitter = LeaveLastOutSplitter(seed=0, protocol="seed")
    with pytest.warns(UserWarning, match="validation targets are in the training"):
        splits = splitter.split(open_data(recsys_files))
    assert set(splits) == {"train", "valid"}
    leak = splitter.report["leakage_check"]
    assert leak["targets_in_training_input"]["valid"] == 55 and not leak["passed"]


def test_training_vectors_exclude_held_out_items(tmp_path):
    items = write_seed_items(tmp_path / "i.h5", np.arange(1, 7), clustered(6, 4, 2))
    seqs = write_seed_sequences(tmp_path / "s.h5", ["a", "b"], [[1, 2, 3, 4], [1, 5, 6]])
    storage = H5RecsysStorage(str(items), str(seqs)).open()
    splits = LeaveLastOutSplitter(seed=0).split(SequencesDataset(storage))
    emb = storage.read_embeddings(np.arange(6))
    train = splits["train"].vectors()  # prefixes [1, 2] and [1]
    np.testing.assert_array_equal(train, emb[[0, 1]])
    np.testing.assert_array_equal(splits["test"].vectors(), emb[[3, 5]])  # items 4 and 6


def test_max_seq_len_keeps_most_recent_items(recsys_files):
    data = open_data(recsys_files, max_seq_len=3)
    sample = data[11]  # 12 items
    seq = data.table.item_ids[data.table.offsets[11]:data.table.offsets[12]]
    assert sample["ids"].tolist() == seq[-3:].tolist()
    assert sample["mask"].tolist() == [True] * 3
    np.testing.assert_array_equal(sample["x"][0], data.storage.read_embeddings(
        data.storage.rows_of(seq[-3:-2]))[0])
    assert sample["timestamps"].shape == (3,)
    assert data.describe()["input_dim"] == 16


def test_temporal_trains_on_nothing_after_the_cutoff(recsys_files):
    data = open_data(recsys_files)
    splitter = TemporalSplitter(seed=0, cutoff_quantile=0.6, valid_quantile=0.4)
    splits = splitter.split(data)
    cut, vcut = splitter.report["cutoff_time"], splitter.report["valid_cutoff_time"]
    ts = data.table.timestamps
    assert ts[splits["train"].input_positions()].max() < vcut
    assert (ts[splits["test"].target_positions()] >= cut).all()
    assert (ts[splits["test"].input_positions()] < cut).all()
    valid_t = ts[splits["valid"].target_positions()]
    assert ((valid_t >= vcut) & (valid_t < cut)).all()
    assert splitter.report["leakage_check"]["passed"]


def test_temporal_without_timestamps_is_a_clear_error(tmp_path):
    items = write_seed_items(tmp_path / "i.h5", np.arange(1, 4), clustered(3, 4, 2))
    seqs = write_seed_sequences(tmp_path / "s.h5", ["a"], [[1, 2, 3]])
    data = SequencesDataset(H5RecsysStorage(str(items), str(seqs)).open())
    with pytest.raises(DataError, match="s.h5: timestamps: the temporal splitter needs"):
        TemporalSplitter(seed=0).split(data)


def test_sequence_splitters_refuse_the_items_dataset(recsys_files):
    storage = H5RecsysStorage(str(recsys_files["items"])).open()
    with pytest.raises(ConfigError, match="'leave_last_out' splits user sequences"):
        LeaveLastOutSplitter(seed=0).split(ItemsDataset(storage))


def test_index_splitter_on_sequences_holds_out_whole_users(recsys_files):
    data = open_data(recsys_files)
    splits = IndexSplitter(seed=0, test_ratio=0.25).split(data)
    assert not set(splits["train"].records.user) & set(splits["test"].records.user)
    test = splits["test"]
    assert (test.records.target[test.records.end - test.records.start >= 1] >= -1).all()
    # an evaluated user predicts their last item from the rest
    row = int(np.flatnonzero(test.records.user == 59)[0])  # 12 items
    assert test.records.end[row] == 11 and test.records.target[row] == 11


def test_auto_picks_temporal_or_index(recsys_files, tmp_path):
    with_time = AutoSplitter(seed=0)
    with_time.split(open_data(recsys_files))
    assert with_time.report["chose"] == "temporal"
    items = write_seed_items(tmp_path / "i.h5", np.arange(1, 4), clustered(3, 4, 2))
    seqs = write_seed_sequences(tmp_path / "s.h5", [f"u{i}" for i in range(10)], [[1, 2, 3]] * 10)
    no_time = AutoSplitter(seed=0)
    splits = no_time.split(SequencesDataset(H5RecsysStorage(str(items), str(seqs)).open()))
    assert no_time.report["chose"] == "index" and len(splits["test"]) == 2


# --- the real benchmark files -------------------------------------------------------------

def real(name):
    folder = real_data(name)
    storage = H5RecsysStorage(str(folder / "item_data.h5"), str(folder / "sequence.h5")).open()
    return SequencesDataset(storage)


def test_real_ml100k_leave_last_out_and_auto_temporal():
    data = real("ml100k")
    splitter = LeaveLastOutSplitter(seed=0)
    splits = splitter.split(data)
    assert splitter.report["counts"] == {"train": 943, "valid": 943, "test": 943}
    assert splitter.report["leakage_check"]["passed"]
    assert int((splits["train"].records.end - splits["train"].records.start).sum()) == 100000 - 2 * 943
    auto = AutoSplitter(seed=0)
    auto_splits = auto.split(data)
    assert auto.report["chose"] == "temporal"
    ts = data.table.timestamps
    assert ts[auto_splits["train"].input_positions()].max() < auto.report["cutoff_time"]


def test_real_beauty_leave_last_out_and_auto_index():
    data = real("beauty")
    splitter = LeaveLastOutSplitter(seed=0)
    splitter.split(data)
    assert splitter.report["counts"] == {"train": 22363, "valid": 22363, "test": 22363}
    auto = AutoSplitter(seed=0)
    splits = auto.split(data)
    assert auto.report["chose"] == "index"
    assert (len(splits["train"]), len(splits["test"])) == (17890, 4473)
    assert auto.report["leakage_check"]["shared_keys"] == {"test/train": 0}
