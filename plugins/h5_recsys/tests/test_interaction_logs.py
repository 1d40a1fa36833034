"""Interaction logs and item files as they arrive: columns by their header's names, times in
order to the fraction, and every bad value one line naming the file and line (real processes)."""

from __future__ import annotations

import h5py
import pytest

from rqf.testing import one_line_error, rqf_proc


def sequences(path):
    with h5py.File(path, "r") as f:
        users = [u.decode() for u in f["user_ids"][()]]
        times = {u: t.tolist() for u, t in zip(users, f["timestamps"][()])} \
            if "timestamps" in f else None
        return {u: s.tolist() for u, s in zip(users, f["sequences"][()])}, times


def from_interactions(tmp_path, text, *args, name="log.csv"):
    log = tmp_path / name
    log.write_text(text)
    return rqf_proc("recsys", "from-interactions", str(log), "--out", str(tmp_path / "out"),
                    *args), log


def test_amazon_column_order_takes_the_time_by_its_name_not_the_rating(tmp_path):
    proc, _ = from_interactions(tmp_path, "user_id,parent_asin,rating,timestamp\n"
                                          "u1,B2,5,1700000300\nu1,B1,1,1700000100\n"
                                          "u1,B3,3,1700000200\n")
    assert proc.returncode == 0, proc.stderr
    seqs, times = sequences(tmp_path / "out" / "sequence.h5")
    assert times == {"u1": [1700000100, 1700000200, 1700000300]}  # not the ratings
    proc = rqf_proc("recsys", "from-interactions", str(tmp_path / "log.csv"), "--out",
                    str(tmp_path / "out"), "--force", "--time-column", "rating")
    assert proc.returncode == 0, proc.stderr  # a column named on purpose is taken


def test_recbole_atomic_headers_are_read_by_name(tmp_path):
    proc, _ = from_interactions(tmp_path, "user_id:token\titem_id:token\trating:float\t"
                                          "timestamp:float\n196\t242\t3\t881250949\n"
                                          "196\t302\t3\t881250000\n", name="ml.inter")
    assert proc.returncode == 0, proc.stderr
    seqs, times = sequences(tmp_path / "out" / "sequence.h5")
    assert seqs == {"196": [302, 242]} and times == {"196": [881250000, 881250949]}


def test_fractional_times_order_the_interactions_exactly(tmp_path):
    proc, _ = from_interactions(tmp_path, "user,item,time\nu,1,1.7\nu,2,1.2\nu,3,1.5\n")
    assert proc.returncode == 0, proc.stderr
    assert sequences(tmp_path / "out" / "sequence.h5")[0] == {"u": [2, 3, 1]}
    assert "times with fractions" in proc.stderr


@pytest.mark.parametrize("text, expected", [
    ("user_id,item_id,rating\nu,1,5\n", "has no time column"),
    ("user,item,time\nu,-1,5\n", "line 2: item -1: ids are whole numbers from 0"),
    ("user,item,time\nu,,5\n", "line 2: the item is empty"),
    ("user,item,time\nu,1,inf\n", "line 2: the time 'inf' is not a finite number"),
    ("user,item,time\nu,1,1e30\n", "line 2: the time '1e30' is not a finite number"),
    ('user,item,time\nu,"1,5\nu,2,6\n', "not readable as CSV"),
    ("user,item,time\nu,1," + "9" * 200000 + "\n", "not readable as CSV (field larger"),
])
def test_bad_values_in_a_log_are_one_line_with_the_file_and_line(tmp_path, text, expected):
    proc, log = from_interactions(tmp_path, text)
    one_line_error(proc, str(log), expected)
    assert not (tmp_path / "out" / "sequence.h5").exists()


def test_a_log_that_is_not_utf8_names_the_file(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes(b"user,item,time\nu,\xff\xfe,5\n")
    one_line_error(rqf_proc("recsys", "from-interactions", str(log), "--out",
                            str(tmp_path / "out")), f"{log}: not UTF-8 text")


@pytest.mark.parametrize("name, text, expected", [
    ("items.jsonl", '{"item_id": null, "title": "x"}\n', "line 1: item_id is null"),
    ("items.jsonl", '{"item_id": -1, "title": "x"}\n', "line 1: item -1: ids are whole numbers"),
    ("items.csv", 'item_id,title\n1,"unclosed\n2,b\n3,c\n', "not readable as CSV"),
    ("items.jsonl", '{"item_id": 1, "title": ' + "[" * 100000 + "\n", "nested too deeply"),
])
def test_embed_refuses_ids_that_are_no_ids_and_unclosed_quotes(tmp_path, name, text, expected):
    items = tmp_path / name
    items.write_text(text)
    out = tmp_path / "item_data.h5"
    one_line_error(rqf_proc("recsys", "embed", str(items), "--text", "title", "--out", str(out)),
                   str(items), expected)
    assert not out.exists()


AMAZON_2023 = [  # Amazon Reviews 2023 review records, fields in the published order
    {"rating": 5.0, "title": "Great", "text": "ok", "images": [], "asin": "B0A", "parent_asin": "P2",
     "user_id": "AGX", "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": True},
    {"rating": 4.0, "title": "Fine", "text": "", "images": [], "asin": "B0B", "parent_asin": "P1",
     "user_id": "AGX", "timestamp": 1588615855070, "helpful_vote": 1, "verified_purchase": True},
    {"rating": 3.0, "title": "Meh", "text": "x", "images": [], "asin": "B0C", "parent_asin": "P3",
     "user_id": "AHZ", "timestamp": 1600000000000, "helpful_vote": 0, "verified_purchase": False},
]


@pytest.mark.parametrize("name", ["reviews.jsonl", "reviews.jsonl.gz", "reviews.parquet",
                                  "reviews.csv.gz"])
def test_amazon_review_logs_in_any_format_become_sequences_in_time_order(tmp_path, name):
    import gzip
    import json

    path = tmp_path / name
    if name.endswith(".parquet"):
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(AMAZON_2023), path)
    else:
        text = "\n".join(json.dumps(r) for r in AMAZON_2023) + "\n" if ".jsonl" in name else \
            "user_id,parent_asin,rating,timestamp\n" + "".join(
                f"{r['user_id']},{r['parent_asin']},{r['rating']},{r['timestamp']}\n"
                for r in AMAZON_2023)
        with (gzip.open(path, "wt") if name.endswith(".gz") else open(path, "w")) as fh:
            fh.write(text)
    proc = rqf_proc("recsys", "from-interactions", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    seqs, times = sequences(tmp_path / "out" / "sequence.h5")
    with h5py.File(tmp_path / "out" / "sequence.h5") as f:
        keys = [k.decode() for k in f["item_keys"][()]]
    assert {u: [keys[i] for i in s] for u, s in seqs.items()} == {"AGX": ["P1", "P2"],
                                                                  "AHZ": ["P3"]}
    assert times["AGX"] == [1588615855070, 1588687728923]


@pytest.mark.parametrize("name, content, expected", [
    ("log.jsonl.gz", b"not gzip at all", "named .gz but not a gzip file"),
    ("log.jsonl", b'{"uid": "a", "iid": "b"}\n', "has no user column"),
    ("log.jsonl", b'{"user_id": "a", "item_id": "b", "timestamp": 1}\n[1, 2]\n',
     "line 2: expected a JSON object, got list"),
    ("log.parquet", b"PAR1 not really", "not a readable Parquet file"),
])
def test_a_broken_log_of_any_format_is_one_line(tmp_path, name, content, expected):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow", reason="Parquet is read with pyarrow")
    path = tmp_path / name
    path.write_bytes(content)
    one_line_error(rqf_proc("recsys", "from-interactions", str(path), "--out",
                            str(tmp_path / "out")), name, expected)
    assert not (tmp_path / "out").exists()


def test_a_gzip_stream_cut_short_is_one_line(tmp_path):
    import gzip

    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(b"user_id,item_id,timestamp\n" + b"u,i,1\n" * 5000)[:-40])
    one_line_error(rqf_proc("recsys", "from-interactions", str(path), "--out",
                            str(tmp_path / "out")), "log.csv.gz: the gzip stream is cut short")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path):
    import subprocess
    import sys

    (tmp_path / "log.parquet").write_bytes(b"PAR1")
    probe = ("import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
             "from rqf.cli import main; sys.argv = ['rqf'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", probe, "recsys", "from-interactions",
                           str(tmp_path / "log.parquet"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    one_line_error(proc, "log.parquet: reading Parquet needs pyarrow: pip install pyarrow")
