"""Semantic IDs out to the formats other tools read, and back in: the same IDs either way."""

import csv
import json

import numpy as np
import pytest

from rqf.codes import SemanticIds, write_semantic_ids
from rqf.codes.interchange import export_ids, import_ids
from rqf.errors import DataError
from rqf.testing import needs, one_line_error, rqf_proc


@pytest.fixture
def ids_file(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, (60, 2))  # many items share a tuple: the extra level is busy
    return write_semantic_ids(tmp_path / "semantic_ids.h5", np.arange(1001, 1061), codes, None,
                              {"codebook_size": 4, "levels": 2})


def test_index_json_round_trip_gives_back_the_same_ids(tmp_path, ids_file):
    ids = SemanticIds(ids_file)
    assert ids.unique_codes[:, -1].max() > 0  # a real collision level to carry
    out = export_ids(ids, "index-json", tmp_path / "x.index.json")
    index = json.loads(out.read_text())
    first = ids.unique_codes[0]
    assert index["1001"] == [f"<a_{first[0]}>", f"<b_{first[1]}>", f"<c_{first[2]}>"]
    back = SemanticIds(import_ids(out, ids.item_ids, tmp_path / "back.h5"))
    np.testing.assert_array_equal(back.item_ids, ids.item_ids)
    np.testing.assert_array_equal(back.codes, ids.codes)  # the suffix is recognised as one
    np.testing.assert_array_equal(back.unique_codes, ids.unique_codes)


def test_rows_and_a_token_template_round_trip(tmp_path, ids_file):
    ids = SemanticIds(ids_file)
    out = export_ids(ids, "index-json", tmp_path / "rows.json", numbering="row",
                     template="[{level}:{code}]")
    assert json.loads(out.read_text())["0"][0] == f"[1:{ids.unique_codes[0, 0]}]"  # from 1
    back = SemanticIds(import_ids(out, ids.item_ids, tmp_path / "back.h5", numbering="row"))
    np.testing.assert_array_equal(back.unique_codes, ids.unique_codes)


def test_another_tools_index_keeps_every_token_as_a_code(tmp_path):
    index = tmp_path / "other.index.json"
    index.write_text(json.dumps({"7": ["<a_1>", "<b_2>"], "8": ["<a_1>", "<b_2>"],
                                 "9": ["<a_3>", "<b_0>"]}))
    ids = SemanticIds(import_ids(index, np.array([9, 8, 7]), tmp_path / "ids.h5"))
    assert ids.item_ids.tolist() == [9, 8, 7]
    assert ids.codes.tolist() == [[3, 0], [1, 2], [1, 2]]
    assert ids.unique_codes[:, -1].tolist() == [0, 0, 1]  # a suffix tells 8 and 7 apart
    assert ids.item_of(ids.of_item(7)) == 7


@pytest.mark.parametrize("content, fragment", [
    ({"1": ["<a_1>"]}, "2 of the 3 items have no ID, e.g. item 2"),
    ({"1": ["<a_1>"], "2": ["<a_1>", "<b_1>"], "3": ["<a_0>"]}, "key '2': 2 tokens"),
    ({"1": ["<a_1>"], "2": ["<a_x>"], "3": ["<a_0>"]}, "token '<a_x>' holds no code"),
    ({"1": ["<a_1>"], "2": ["<a_1>"], "99": ["<a_0>"]}, "key '99': no such item id"),
    ({"one": ["<a_1>"]}, "key 'one': expected an integer item id"),
    ([1, 2], "expected a mapping of item"),
])
def test_a_broken_index_names_the_file_and_the_key(tmp_path, content, fragment):
    index = tmp_path / "bad.json"
    index.write_text(json.dumps(content))
    with pytest.raises(DataError, match=f"{index}: .*{fragment}".replace("[", "\\[").replace(
            "(", "\\(").replace(")", "\\)")):
        import_ids(index, np.array([1, 2, 3]), tmp_path / "ids.h5")
    assert not (tmp_path / "ids.h5").exists()


def test_csv_recbole_and_parquet_hold_the_same_rows(tmp_path, ids_file):
    ids = SemanticIds(ids_file)
    rows = list(csv.reader(export_ids(ids, "csv", tmp_path / "x.csv").read_text().splitlines()))
    assert rows[0] == ["item_id", "level_1", "level_2", "level_3"]  # counted as in messages
    assert [[int(v) for v in r] for r in rows[1:]] == \
        np.column_stack([ids.item_ids, ids.unique_codes]).tolist()
    recbole = export_ids(ids, "recbole", tmp_path / "x.item").read_text().splitlines()
    assert recbole[0] == "item_id:token\tsemantic_id:token_seq"
    assert recbole[1].split("\t")[1].split() == [f"<{l}_{c}>" for l, c in
                                                 zip("abc", ids.unique_codes[0])]


@needs("pyarrow")
def test_parquet_holds_the_same_rows(tmp_path, ids_file):
    import pyarrow.parquet as pq

    ids = SemanticIds(ids_file)
    table = pq.read_table(export_ids(ids, "parquet", tmp_path / "x.parquet")).to_pydict()
    assert table["item_id"] == ids.item_ids.tolist()
    assert table["level_3"] == ids.unique_codes[:, 2].tolist()  # levels counted from 1


@needs("rqf_h5_recsys")
def test_export_and_import_commands_round_trip_and_never_overwrite(tmp_path, ids_file):
    from rqf_h5_recsys.testing import write_seed_items

    items = write_seed_items(tmp_path / "item_data.h5", np.arange(1001, 1061),
                             np.random.default_rng(1).normal(size=(60, 4)))
    index = tmp_path / "ids.index.json"
    proc = rqf_proc("export", str(ids_file), "--format", "index-json", "--out", str(index))
    assert proc.returncode == 0, proc.stderr
    proc = rqf_proc("import-ids", str(index), "--items", str(items), "--out",
                    str(tmp_path / "back.h5"))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(SemanticIds(tmp_path / "back.h5").unique_codes,
                                  SemanticIds(ids_file).unique_codes)
    before = items.read_bytes()
    one_line_error(rqf_proc("import-ids", str(index), "--items", str(items), "--out", str(items)),
                   "is the file this command reads")
    one_line_error(rqf_proc("export", str(ids_file), "--format", "csv", "--out", str(index)),
                   "exists; pass --force")
    link = tmp_path / "ids_link.h5"
    link.hardlink_to(ids_file)  # the same file under another name: never written over
    ids_bytes = ids_file.read_bytes()
    one_line_error(rqf_proc("export", str(ids_file), "--format", "csv", "--out", str(link),
                            "--force"), "is the file this command reads")
    assert ids_file.read_bytes() == ids_bytes
    assert items.read_bytes() == before and index.read_text().startswith("{")
