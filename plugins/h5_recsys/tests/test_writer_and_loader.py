"""Writing item/sequence files, importing interaction files, and the seed-style batch API."""

import h5py
import numpy as np
import pytest
import torch

from rqf.testing import clustered, real_data
from rqf.cli import main
from rqf.errors import DataError
from rqf_h5_recsys import create_h5_dataloader, from_interactions, write_item_data, write_sequence_data
from rqf_h5_recsys.storage import H5RecsysStorage


def test_written_files_have_the_seed_layout(tmp_path):
    emb = clustered(5, 8, 2)
    write_item_data(tmp_path / "item_data.h5", [10, 20, 30, 40, 50], emb)
    write_sequence_data(tmp_path / "sequence.h5", ["u1", "u2"], [[10, 20], [30, 40, 50]],
                        [[1, 2], [3, 3, 4]])
    # read back the way the original tool's reader does: plain h5py, vlen rows
    with h5py.File(tmp_path / "item_data.h5") as f:
        assert f["item_ids"].dtype == np.int64 and f["embeddings"].dtype == np.float32
        assert f.attrs["n_items"] == 5 and f.attrs["embedding_dim"] == 8
        assert f["features"].dtype == np.int32 and f["feature_lengths"].shape == (5,)
    with h5py.File(tmp_path / "sequence.h5") as f:
        assert f["user_ids"][1].decode() == "u2"
        assert f["sequences"][1].tolist() == [30, 40, 50]
        assert f["sequences"].dtype == h5py.vlen_dtype(np.int64)
        assert f["timestamps"][1].tolist() == [3, 3, 4]
        assert f["sequence_lengths"][()].tolist() == [2, 3]
        assert f.attrs["n_sequences"] == 2 and f.attrs["max_sequence_length"] == 3
    storage = H5RecsysStorage(str(tmp_path / "item_data.h5"), str(tmp_path / "sequence.h5")).open()
    np.testing.assert_array_equal(storage.read_embeddings(storage.rows_of([30])), emb[[2]])


def test_writer_refuses_bad_arrays_and_keeps_the_old_file(tmp_path):
    path = write_item_data(tmp_path / "item_data.h5", [1, 2], clustered(2, 4, 1))
    before = path.read_bytes()
    bad = clustered(2, 4, 1)
    bad[1, 0] = np.inf
    with pytest.raises(DataError, match="embeddings: 1 rows hold NaN or Inf"):
        write_item_data(path, [1, 2], bad)
    with pytest.raises(DataError, match="ids must be unique"):
        write_item_data(path, [1, 1], clustered(2, 4, 1))
    with pytest.raises(DataError, match="user 'b' has decreasing timestamps"):
        write_sequence_data(tmp_path / "s.h5", ["a", "b"], [[1], [1, 2]], [[5], [9, 3]])
    assert path.read_bytes() == before
    assert not (tmp_path / "s.h5").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["item_data.h5"]


def test_from_interactions_orders_by_time_stably(tmp_path, capsys):
    (tmp_path / "inter.csv").write_text(
        "user,item,time\nbob,3,50\nann,1,10\nbob,1,20\nann,2,10\nann,3,5\n")
    np.save(tmp_path / "emb.npy", clustered(3, 4, 1))
    np.save(tmp_path / "ids.npy", np.array([1, 2, 3]))
    with pytest.raises(SystemExit) as exit_info:
        main(["recsys", "from-interactions", str(tmp_path / "inter.csv"), "--out",
              str(tmp_path / "out"), "--embeddings", str(tmp_path / "emb.npy"),
              "--item-ids", str(tmp_path / "ids.npy")])
        raise SystemExit(0)
    assert exit_info.value.code == 0
    storage = H5RecsysStorage(str(tmp_path / "out/item_data.h5"),
                              str(tmp_path / "out/sequence.h5")).open()
    t = storage.table
    assert t.user_ids.tolist() == ["bob", "ann"]
    # ann: item 3 at t=5, then items 1 and 2 tied at t=10 in file order
    assert t.item_ids[t.offsets[1]:t.offsets[2]].tolist() == [3, 1, 2]
    assert t.timestamps[t.offsets[1]:t.offsets[2]].tolist() == [5, 10, 10]


def test_from_interactions_unknown_item_is_an_error(tmp_path):
    (tmp_path / "inter.tsv").write_text("1\t1\t5\n1\t7\t6\n")
    np.save(tmp_path / "emb.npy", clustered(3, 4, 1))
    with pytest.raises(DataError, match="1 interactions name items missing from the item file, e.g. 7$"):
        from_interactions(tmp_path / "inter.tsv", tmp_path / "out", tmp_path / "emb.npy")


def test_from_real_movielens_interactions(tmp_path):
    raw = real_data("ml100k").parent / "raw" / "ml-100k" / "ml-100k.inter"
    if not raw.exists():
        pytest.skip("raw MovieLens file not present")
    written = from_interactions(raw, tmp_path, time_col=3)
    with h5py.File(written["sequences"]) as mine, \
            h5py.File(real_data("ml100k") / "sequence.h5") as ref:
        assert mine.attrs["n_sequences"] == ref.attrs["n_sequences"] == 943
        lengths = dict(zip([u.decode() for u in mine["user_ids"][()]], mine["sequence_lengths"][()]))
        ref_lengths = dict(zip([u.decode() for u in ref["user_ids"][()]], ref["sequence_lengths"][()]))
        assert lengths == ref_lengths
        ref_rows = {u.decode(): i for i, u in enumerate(ref["user_ids"][()])}
        for i, user in enumerate(mine["user_ids"][:50]):
            j = ref_rows[user.decode()]
            assert mine["sequences"][i].tolist() == ref["sequences"][j].tolist()


def test_seed_style_dataloader_batches(recsys_files):
    loader = create_h5_dataloader(recsys_files["items"], recsys_files["sequences"], batch_size=8,
                                  max_seq_len=5, train_test_split="test", shuffle=False,
                                  splitter="leave_last_out")
    batch = next(iter(loader))
    assert batch["user_ids"].shape == (8,) and batch["user_ids"].dtype == torch.int64
    with h5py.File(recsys_files["sequences"]) as f:  # each user's row in sequence.h5
        stored = [u.decode() for u in f["user_ids"][()]]
    assert [stored[row] for row in batch["user_ids"].tolist()] == batch["user_names"]
    assert batch["ids"].shape == (8, 5) and batch["x"].shape == (8, 5, 16)
    assert batch["x"].dtype == torch.float32 and (batch["target"] > 0).all()
    assert sum(len(b["user_ids"]) for b in loader) == 55
    # the seed guide's attribute API reads the same tensors
    assert batch.user_ids is batch["user_ids"] and batch.x is batch["x"] and batch.ids is batch["ids"]
    with pytest.raises(AttributeError, match="a batch has no 'embeddings'"):
        batch.embeddings
    everything = create_h5_dataloader(recsys_files["items"], recsys_files["sequences"],
                                      train_test_split="all", batch_size=100)
    assert (next(iter(everything))["target"] == -1).all()


GUIDE_EXAMPLE = """
for batch in dataloader:
    print(f"  user_ids: {batch.user_ids.shape}")
    print(f"  ids: {batch.ids.shape}")
    print(f"  x: {batch.x.shape}")
"""


@pytest.mark.parametrize("data", ["fixture", "ml100k"])
def test_the_seed_guides_batch_example_runs_as_written(recsys_files, data, capsys):
    if data == "ml100k":
        folder = real_data("ml100k")
        items, sequences, dim = folder / "item_data.h5", folder / "sequence.h5", 384
    else:
        items, sequences, dim = recsys_files["items"], recsys_files["sequences"], 16
    dataloader = create_h5_dataloader(item_data_path=items, sequence_data_path=sequences,
                                      batch_size=64, max_seq_len=200, train_test_split="train",
                                      shuffle=True)
    exec(GUIDE_EXAMPLE, {"dataloader": dataloader})
    lines = capsys.readouterr().out.splitlines()
    users = len(dataloader.dataset)
    first, batches = min(64, users), -(-users // 64)
    assert len(lines) == 3 * batches
    assert lines[:3] == [f"  user_ids: torch.Size([{first}])", f"  ids: torch.Size([{first}, 200])",
                         f"  x: torch.Size([{first}, 200, {dim}])"]
    assert lines[-3] == f"  user_ids: torch.Size([{users - 64 * (batches - 1)}])"
    rows = torch.cat([b.user_ids for b in dataloader])
    assert sorted(rows.tolist()) == sorted(set(rows.tolist()))  # one row per training user


def test_dataloader_workers_read_the_same_batches(recsys_files):
    kwargs = dict(batch_size=16, max_seq_len=6, train_test_split="train", shuffle=False,
                  splitter="leave_last_out")
    plain = [b["x"] for b in create_h5_dataloader(recsys_files["items"], recsys_files["sequences"], **kwargs)]
    workers = [b["x"] for b in create_h5_dataloader(recsys_files["items"], recsys_files["sequences"],
                                                    num_workers=2, **kwargs)]
    assert len(plain) == len(workers)
    for a, b in zip(plain, workers):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("in_memory", [True, False])
def test_batched_reads_match_single_reads(recsys_files, in_memory):
    from rqf_h5_recsys.datasets import ItemsDataset, SequencesDataset

    storage = H5RecsysStorage(str(recsys_files["items"]), str(recsys_files["sequences"]),
                              in_memory=in_memory).open()
    for data in (ItemsDataset(storage), SequencesDataset(storage, max_seq_len=4)):
        picks = [7, 0, 33, 7, 59]
        batched = data.__getitems__(picks)
        for i, sample in zip(picks, batched):
            single = data[i]
            assert sample.keys() == single.keys()
            for key in sample:
                np.testing.assert_array_equal(sample[key], single[key])
    items = ItemsDataset(storage)
    with h5py.File(recsys_files["items"]) as f:
        np.testing.assert_array_equal(items.__getitems__([3, 1])[0]["embedding"], f["embeddings"][3])


def test_items_without_feature_tokens_read_lazily_in_batches(tmp_path):
    from rqf_h5_recsys.datasets import ItemsDataset

    emb = clustered(50, 4, 2)
    write_item_data(tmp_path / "items.h5", np.arange(50), emb)  # features (50, 0)
    storage = H5RecsysStorage(str(tmp_path / "items.h5"), in_memory=False).open()
    batch = ItemsDataset(storage).__getitems__([40, 3, 17])
    np.testing.assert_array_equal(batch[0]["embedding"], emb[40])
    assert batch[1]["features"].shape == (0,) and batch[2]["feature_length"] == 0
