"""New items join an existing ID space (rqf encode --join): the run's IDs stay as they are,
every new item gets an ID no other item holds, and the joined file is a whole semantic_ids.h5
(real processes)."""

from __future__ import annotations

import numpy as np
import pytest

from rqf.codes import SemanticIds
from rqf.testing import clustered, one_line_error, pipeline_file, rqf_proc

pytest.importorskip("rqf_h5_recsys", reason="the item files are h5_recsys's")
pytest.importorskip("rqf_rqkmeans", reason="the IDs are made by rqkmeans")


@pytest.fixture
def catalogue(tmp_path):
    """A run's 400 items, and a new file of those 400 and 100 more, half of them near
    duplicates of the run's (so they fall on the run's code tuples)."""
    from rqf_h5_recsys.writer import write_item_data

    x = clustered(500, 16, 12, seed=1).astype(np.float32)
    x[400:450] = x[:50] + 1e-4  # new items on existing items' codes
    write_item_data(tmp_path / "old.h5", np.arange(400), x[:400])
    write_item_data(tmp_path / "all.h5", np.arange(500), x)
    config = {"name": "ids", "output_dir": str(tmp_path / "run"),
              "storage": {"type": "h5_recsys", "items": str(tmp_path / "old.h5")},
              "dataset": {"type": "items"}, "splitter": {"type": "index"},
              "model": {"type": "rqkmeans", "levels": 2, "codebook_size": 16}}
    proc = rqf_proc("run", str(pipeline_file(tmp_path, config)))
    assert proc.returncode == 0, proc.stderr
    return tmp_path


def unique_rows(codes: np.ndarray) -> set:
    return {tuple(r) for r in codes.tolist()}


def test_new_items_join_without_changing_an_existing_id_or_taking_one(catalogue):
    run, new_file = catalogue / "run", catalogue / "all.h5"
    proc = rqf_proc("encode", str(run), "--set", f"storage.items={new_file}", "--out",
                    str(catalogue / "joined.h5"), "--join")
    assert proc.returncode == 0, proc.stderr
    assert "'added': 100" in proc.stderr and "'already_in_the_run': 400" in proc.stderr
    old, joined = SemanticIds(run / "semantic_ids.h5"), SemanticIds(catalogue / "joined.h5")
    assert len(joined.item_ids) == 500
    assert (joined.item_ids[:400] == old.item_ids).all()
    assert (joined.unique_codes[:400] == old.unique_codes).all()  # every existing ID unchanged
    assert len(unique_rows(joined.unique_codes)) == 500  # no two items share an ID
    new_ids = unique_rows(joined.unique_codes[400:])
    assert not new_ids & unique_rows(old.unique_codes)
    # the near duplicates fall on existing tuples: the extra level tells them apart
    shares = [tuple(r) in unique_rows(old.codes) for r in joined.codes[400:450].tolist()]
    assert sum(shares) >= 40
    # without --join the new file's IDs are its own: many take an existing item's ID
    alone = catalogue / "alone.h5"
    assert rqf_proc("encode", str(run), "--set", f"storage.items={new_file}", "--out",
                    str(alone)).returncode == 0
    taken = unique_rows(SemanticIds(alone).unique_codes[400:]) & unique_rows(old.unique_codes)
    assert len(taken) > 0


def test_join_needs_the_runs_ids_and_leaves_nothing_on_refusal(catalogue):
    (catalogue / "run" / "semantic_ids.h5").rename(catalogue / "moved.h5")
    one_line_error(rqf_proc("encode", str(catalogue / "run"), "--set",
                            f"storage.items={catalogue / 'all.h5'}", "--out",
                            str(catalogue / "joined.h5"), "--join"),
                   "--join: ", "holds no semantic_ids.h5")
    assert not (catalogue / "joined.h5").exists()
    assert not list(catalogue.glob(".joined.h5*"))


def test_an_export_can_leave_out_the_extra_level_when_nothing_shares_a_tuple(catalogue):
    import json

    run = catalogue / "run"
    ids = SemanticIds(run / "semantic_ids.h5")
    extra_constant = (ids.unique_codes[:, -1] == 0).all()
    out = catalogue / "x.index.json"
    proc = rqf_proc("ids", "export", str(run), "--format", "index-json", "--out", str(out),
                    "--skip-constant-levels")
    assert proc.returncode == 0, proc.stderr
    tokens = json.loads(out.read_text())["0"]
    levels = ids.unique_codes.shape[1]
    assert len(tokens) == (levels - 1 if extra_constant else levels)
    from rqf.codes.interchange import trailing_constant_levels

    assert trailing_constant_levels(np.array([[1, 2, 0], [3, 4, 0]])) == 1
    assert trailing_constant_levels(np.array([[1, 2, 0], [3, 4, 1]])) == 0
    assert trailing_constant_levels(np.array([[1, 0, 0]])) == 2  # one level always stays


def test_the_extra_level_of_ids_that_never_collide_is_left_out(tmp_path):
    import json

    from rqf.codes import write_semantic_ids

    codes = np.array([[0, 1], [1, 0], [2, 2]])
    path = write_semantic_ids(tmp_path / "ids.h5", np.arange(3), codes, None,
                              {"codebook_size": 4})
    for skip, expected in ((False, ["<a_0>", "<b_1>", "<c_0>"]), (True, ["<a_0>", "<b_1>"])):
        out = tmp_path / f"{skip}.index.json"
        proc = rqf_proc("ids", "export", str(path), "--format", "index-json", "--out", str(out),
                        *(["--skip-constant-levels"] if skip else []))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(out.read_text())["0"] == expected
