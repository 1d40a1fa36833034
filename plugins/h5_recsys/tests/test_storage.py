"""h5_recsys: format validation on a corpus of broken files, lazy reads, inspect."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from rqf.testing import clustered, real_data
from rqf.testing import needs
from rqf_h5_recsys.testing import write_seed_items, write_seed_sequences
from rqf.cli import main
from rqf.errors import DataError
from rqf_h5_recsys.storage import H5RecsysStorage

IDS = np.arange(1, 11)


def good_items(path: Path) -> Path:
    return write_seed_items(path, IDS, clustered(10, 4, 2))


def good_sequences(path: Path, **changes) -> Path:
    args = dict(user_ids=["a", "b"], sequences=[[1, 2, 3], [4, 5]],
                timestamps=[[10, 20, 20], [5, 6]])
    args.update(changes)
    return write_seed_sequences(path, **args)


def edit(path: Path, fn) -> Path:
    with h5py.File(path, "a") as f:
        fn(f)
    return path


def broken_items(tmp_path: Path, kind: str) -> Path:
    p = good_items(tmp_path / "item_data.h5")
    if kind == "missing dataset":
        edit(p, lambda f: f.__delitem__("embeddings"))
    elif kind == "wrong dtype":
        def fn(f):
            del f["item_ids"]
            f["item_ids"] = IDS.astype(np.float64)
        edit(p, fn)
    elif kind == "wrong rank":
        def fn(f):
            del f["embeddings"]
            f["embeddings"] = np.zeros(10, np.float32)
        edit(p, fn)
    elif kind == "length mismatch":
        def fn(f):
            del f["embeddings"]
            f["embeddings"] = np.zeros((9, 4), np.float32)
        edit(p, fn)
    elif kind == "nan embedding":
        def fn(f):
            f["embeddings"][3, 1] = np.nan
        edit(p, fn)
    elif kind == "duplicate id":
        def fn(f):
            f["item_ids"][4] = 1
        edit(p, fn)
    elif kind == "attribute disagrees":
        edit(p, lambda f: f.attrs.__setitem__("n_items", 11))
    elif kind == "truncated":
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "not hdf5":
        p.write_text("item_id,embedding\n1,0.5\n")
    elif kind in ("external link", "virtual dataset", "external storage"):
        elsewhere = tmp_path / "elsewhere.bin"
        elsewhere.write_bytes(np.ones((10, 4), np.float32).tobytes())
        with h5py.File(tmp_path / "other.h5", "w") as f:
            f["embeddings"] = np.ones((10, 4), np.float32)

        def fn(f):
            del f["embeddings"]
            if kind == "external link":
                f["embeddings"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "embeddings")
            elif kind == "virtual dataset":
                layout = h5py.VirtualLayout(shape=(10, 4), dtype=np.float32)
                layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "embeddings", (10, 4))
                f.create_virtual_dataset("embeddings", layout)
            else:
                f.create_dataset("embeddings", (10, 4), np.float32,
                                 external=[(str(elsewhere), 0, 160)])
        edit(p, fn)
    return p


ITEM_CASES = {
    "missing dataset": "embeddings: missing dataset",
    "wrong dtype": "item_ids: expected (n,) integer item ids, found dtype float64",
    "wrong rank": "embeddings: expected (n, d) float embeddings, found 1-d shape (10,)",
    "length mismatch": "embeddings: has 9 rows but item_ids has 10",
    "nan embedding": "embeddings: 1 rows hold NaN or Inf, first at row 3 (item id 4)",
    "duplicate id": "item_ids: 1 duplicate ids, e.g. [1]",
    "attribute disagrees": "attrs/n_items: says 11 but item_ids has 10",
    "truncated": "cannot be opened as HDF5, the file may be truncated",
    "not hdf5": "not an HDF5 file",
    "external link": "embeddings: is an external link to",
    "virtual dataset": "embeddings: is a virtual dataset mapped from other files; rqf reads only",
    "external storage": "embeddings: keeps its values in an external file",
}


@pytest.mark.parametrize("kind", ITEM_CASES)
def test_broken_item_files_are_named_errors(tmp_path, kind):
    path = broken_items(tmp_path, kind)
    with pytest.raises(DataError) as err:
        # metadata is checked at open, values at the first read of an embedding
        H5RecsysStorage(str(path)).open().read_embedding_range(0, 1)
    assert str(err.value).startswith(str(path))
    assert ITEM_CASES[kind] in str(err.value)


SEQUENCE_CASES = {
    "unknown item": (dict(sequences=[[1, 2, 99], [4, 77]], timestamps=None),
                     "sequences: 2 interactions with 2 item ids not in the item file, e.g. [77, 99]"),
    "empty sequence": (dict(sequences=[[1, 2, 3], []], timestamps=None),
                       "sequences: 1 empty sequences, first user 'b'"),
    "decreasing timestamps": (dict(timestamps=[[10, 20, 15], [5, 6]]),
                              "timestamps: decrease within 1 sequences, first user 'a' (row 0): item 3 is earlier than the one before"),
    "timestamps length": (dict(timestamps=[[10, 20], [5, 6]]),
                          "timestamps: 1 rows differ in length from their sequence, first user 'a'"),
    "length mismatch": (dict(lengths=[3, 3]),
                        "sequence_lengths: 1 rows disagree with their sequence, first user 'b' (row 1): says 3"),
    "duplicate user": (dict(user_ids=["a", "a"]),
                       "user_ids: 1 user ids appear more than once, e.g. 'a' (row 0)"),
    "user id not utf-8": (dict(user_ids=[b"a", b"\xff\xfe"]), "user_ids: row 1 is not UTF-8 text"),
}


@pytest.mark.parametrize("kind", SEQUENCE_CASES)
def test_broken_sequence_files_are_named_errors(tmp_path, kind):
    changes, expected = SEQUENCE_CASES[kind]
    items = good_items(tmp_path / "item_data.h5")
    seqs = good_sequences(tmp_path / "sequence.h5", **changes)
    with pytest.raises(DataError) as err:
        H5RecsysStorage(str(items), str(seqs)).open()
    assert str(err.value).startswith(f"{seqs}: ")
    assert expected in str(err.value)


@pytest.mark.parametrize("kind", list(ITEM_CASES))
def test_cli_inspect_reports_each_broken_item_file(tmp_path, capsys, kind):
    path = broken_items(tmp_path, kind)
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(path)])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert ITEM_CASES[kind] in out and "Traceback" not in out


@needs("rqf_rqvae")  # a model to validate and run the pipeline with
def test_cli_validate_on_broken_sequences_is_one_line(tmp_path):
    good_items(tmp_path / "item_data.h5")
    good_sequences(tmp_path / "sequence.h5", sequences=[[1, 2, 99], [4, 5]], timestamps=None)
    (tmp_path / "p.yaml").write_text(
        "storage: {type: h5_recsys, items: item_data.h5, sequences: sequence.h5}\n"
        "dataset: sequences\nsplitter: leave_last_out\nmodel: {type: rqvae, latent_dim: 2, "
        "hidden_dims: [8], codebook_size: 4}\n")
    proc = subprocess.run([sys.executable, "-m", "rqf", "validate", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "sequence.h5: sequences: 1 interactions with 1 item ids not in the item file" in proc.stderr


def test_unknown_items_can_be_dropped_with_a_warning(tmp_path):
    items = good_items(tmp_path / "item_data.h5")
    seqs = good_sequences(tmp_path / "sequence.h5", sequences=[[1, 99, 3], [4, 5]],
                          timestamps=[[1, 2, 3], [4, 5]])
    with pytest.warns(UserWarning, match="dropped 1 interactions with unknown items"):
        storage = H5RecsysStorage(str(items), str(seqs), drop_unknown_items=True).open()
    assert storage.table.item_ids.tolist() == [1, 3, 4, 5]
    assert storage.table.timestamps.tolist() == [1, 3, 4, 5]
    assert storage.table.offsets.tolist() == [0, 2, 4]


def test_lazy_storage_reads_slices_and_reopens_per_process(tmp_path):
    emb = clustered(10, 4, 2)
    items = write_seed_items(tmp_path / "item_data.h5", IDS, emb)
    storage = H5RecsysStorage(str(items), in_memory=False).open()
    assert storage._embeddings is None
    np.testing.assert_array_equal(storage.read_embeddings(np.array([7, 2, 7])), emb[[7, 2, 7]])
    handle = storage._handle()
    storage._pid = -1  # as seen from a forked worker: the handle is not ours
    assert storage._handle() is not handle
    storage.close()


def test_a_lazy_file_checks_the_rows_it_reads_not_the_whole_file_up_front(tmp_path):
    emb = clustered(10, 4, 2)
    emb[6, 1] = np.inf
    emb[8, 0] = 3e17
    items = write_seed_items(tmp_path / "item_data.h5", IDS, emb)
    storage = H5RecsysStorage(str(items), in_memory=False).open()
    np.testing.assert_array_equal(storage.read_embeddings(np.array([0, 5, 2])), emb[[0, 5, 2]])
    np.testing.assert_array_equal(storage.read_embedding_range(0, 6), emb[:6])
    with pytest.raises(DataError, match=r"embeddings: 1 rows hold NaN or Inf, first at row 6 "
                                        r"\(item id 7\)"):
        storage.read_embeddings(np.array([1, 6, 3]))
    with pytest.raises(DataError, match=r"1 rows hold values of magnitude >= 1e\+15 "
                                        r"\(up to 3e\+17, first at row 8, item id 9\)"):
        storage.read_embedding_range(7, 10)
    # in memory, the same file is refused whole at the first read
    with pytest.raises(DataError, match=r"first at row 6 \(item id 7\)"):
        H5RecsysStorage(str(items)).open().read_embeddings(np.array([0]))


def test_item_ids_are_mapped_to_rows_not_assumed(tmp_path):
    ids = np.array([40, 10, 30, 20])
    storage = H5RecsysStorage(str(write_seed_items(tmp_path / "i.h5", ids,
                                                   clustered(4, 4, 2)))).open()
    assert storage.rows_of(np.array([10, 20, 30, 40, 50])).tolist() == [1, 3, 2, 0, -1]


def test_inspect_real_ml100k_sequences(capsys):
    folder = real_data("ml100k")
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(folder / "sequence.h5")])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "sequences: 943, interactions: 100000, distinct items: 1682" in out
    assert "timestamps: yes" in out and "auto would use: temporal" in out
    assert "item ids checked against" in out and "problems: none" in out
