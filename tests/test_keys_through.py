"""The items' own keys (ASINs) go in with the data and come back out of every command that takes
or prints items: rqf recommend (--history, --user), rqf ids export (with its item2id map),
import and lookup (real processes)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from rqf.testing import one_line_error, pipeline_file, rqf_proc

pytest.importorskip("rqf_h5_recsys", reason="the data is made by rqf recsys from-interactions")
pytest.importorskip("rqf_rqkmeans", reason="the IDs are made by rqkmeans")

ASINS = [f"B0{i:03d}X" for i in range(40)]


@pytest.fixture
def keyed_data(tmp_path):
    """A review log in Amazon Reviews 2023's JSON lines (ASINs, times out of order) and item
    vectors keyed by ASIN, made into item_data.h5 and sequence.h5 by from-interactions."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16))
    vectors = (centers[np.arange(40) % 5] + 0.1 * rng.normal(size=(40, 16))).astype(np.float32)
    np.save(tmp_path / "emb.npy", vectors)
    np.save(tmp_path / "asins.npy", np.array(ASINS))
    records = []
    for u in range(30):
        items = rng.choice(40, 6, replace=False)
        for t, i in enumerate(items):
            records.append({"rating": 5.0, "title": "t", "text": "", "asin": "x",
                            "parent_asin": ASINS[i], "user_id": f"U{u:02d}",
                            "timestamp": 1_600_000_000_000 + 1000 * t})
    rng.shuffle(records)
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = rqf_proc("recsys", "from-interactions", str(tmp_path / "reviews.jsonl"), "--out",
                    str(tmp_path / "data"), "--embeddings", str(tmp_path / "emb.npy"),
                    "--item-ids", str(tmp_path / "asins.npy"))
    assert proc.returncode == 0, proc.stderr
    by_user: dict[str, list[tuple[int, str]]] = {}
    for r in records:
        by_user.setdefault(r["user_id"], []).append((r["timestamp"], r["parent_asin"]))
    return tmp_path / "data", {u: [a for _, a in sorted(v)] for u, v in by_user.items()}


def run(tmp_path, data, name, model, dataset="sequences"):
    config = {"name": name, "output_dir": str(tmp_path / name),
              "storage": {"type": "h5_recsys", "items": str(data / "item_data.h5"),
                          "sequences": str(data / "sequence.h5")},
              "dataset": {"type": dataset}, "splitter": {"type": "leave_last_out"},
              "model": model}
    proc = rqf_proc("run", str(pipeline_file(tmp_path, config, f"{name}.yaml")))
    assert proc.returncode == 0, proc.stderr
    return tmp_path / name


def test_asins_come_back_out_of_the_ids_and_every_command(tmp_path, keyed_data):
    data, histories = keyed_data
    ids_run = run(tmp_path, data, "ids", {"type": "rqkmeans", "levels": 2, "codebook_size": 8})
    with h5py.File(ids_run / "semantic_ids.h5") as f:
        keys = [k.decode() for k in f["item_keys"][()]]
        unique = f["unique_codes"][()]
    assert keys == ASINS
    # export keyed by ASIN, with LC-Rec's item2id map beside it
    out = tmp_path / "Toys.index.json"
    proc = rqf_proc("ids", "export", str(ids_run), "--format", "index-json", "--numbering", "key",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    index = json.loads(out.read_text())
    assert list(index) == ASINS and index[ASINS[3]][0] == f"<a_{unique[3][0]}>"
    assert (tmp_path / "Toys.item2id").read_text().splitlines()[:2] == [f"{ASINS[0]}\t0",
                                                                        f"{ASINS[1]}\t1"]
    # and back in, keyed by ASIN
    proc = rqf_proc("ids", "import", str(out), "--items", str(data / "item_data.h5"),
                    "--numbering", "key", "--out", str(tmp_path / "back.h5"))
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "back.h5") as f:
        assert (f["unique_codes"][()] == unique).all()
        assert [k.decode() for k in f["item_keys"][()]] == ASINS
    # lookup both ways by ASIN
    proc = rqf_proc("ids", "lookup", str(ids_run), "--item", ASINS[3])
    assert proc.stdout.strip() == ",".join(map(str, unique[3]))
    proc = rqf_proc("ids", "lookup", str(ids_run), "--code", ",".join(map(str, unique[3])))
    assert proc.stdout.strip() == f"3\t{ASINS[3]}"
    one_line_error(rqf_proc("ids", "lookup", str(ids_run), "--item", "B9999Z"),
                   "--item: 'B9999Z' is not an item key of")
    # recommend: a user of the data by key, and a history of ASINs, answered in ASINs
    ranker = run(tmp_path, data, "nn", {"type": "lastitem_nn"})
    proc = rqf_proc("recommend", str(ranker), "--user", "U07", "--k", "5")
    assert proc.returncode == 0, proc.stderr
    user, items = proc.stdout.strip().split("\t")
    assert user == "U07" and len(items.split(",")) == 5 and set(items.split(",")) <= set(ASINS)
    same = rqf_proc("recommend", str(ranker), "--history", ",".join(histories["U07"]), "--k",
                    "5")
    assert same.stdout.strip() == items  # --user reads the user's whole history, in time order
    one_line_error(rqf_proc("recommend", str(ranker), "--history", "B0001X,NOPE"),
                   "--history: 'NOPE' is not an item key of")
    one_line_error(rqf_proc("recommend", str(ranker), "--user", "U99"),
                   "--user 'U99': no such user in the sequences of")


def test_data_without_keys_keeps_ids_everywhere(tmp_path, recsys_files):
    ids_run = tmp_path / "ids"
    config = {"name": "plain", "output_dir": str(ids_run),
              "storage": {"type": "h5_recsys", "items": str(recsys_files["items"])},
              "dataset": {"type": "items"}, "splitter": {"type": "index"},
              "model": {"type": "rqkmeans", "levels": 2, "codebook_size": 8}}
    assert rqf_proc("run", str(pipeline_file(tmp_path, config))).returncode == 0
    with h5py.File(ids_run / "semantic_ids.h5") as f:
        assert "item_keys" not in f
    one_line_error(rqf_proc("ids", "export", str(ids_run), "--format", "csv", "--numbering",
                            "key", "--out", str(tmp_path / "x.csv")), "holds no item keys")
    proc = rqf_proc("ids", "export", str(ids_run), "--format", "index-json", "--out",
                    str(tmp_path / "x.index.json"))
    assert proc.returncode == 0 and not (tmp_path / "x.item2id").exists()
