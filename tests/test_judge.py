"""rqf ids judge: sets of IDs judged by the same retriever, one table whose figures are the
runs' own recommendations.h5 against each user's held-out item (real processes)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from rqf.testing import one_line_error, pipeline_file, rqf_proc

pytest.importorskip("rqf_h5_recsys", reason="the data is h5_recsys's")
pytest.importorskip("rqf_rqkmeans", reason="the IDs are made by rqkmeans")
pytest.importorskip("rqf_tiger", reason="the judge's retriever, genret, is in the tiger plugin")


def ids_run(tmp_path, recsys_files, name, levels):
    config = {"name": name, "output_dir": str(tmp_path / name),
              "storage": {"type": "h5_recsys", "items": str(recsys_files["items"]),
                          "sequences": str(recsys_files["sequences"])},
              "dataset": {"type": "sequences"}, "splitter": {"type": "leave_last_out"},
              "model": {"type": "rqkmeans", "levels": levels, "codebook_size": 8}}
    assert rqf_proc("run", str(pipeline_file(tmp_path, config, f"{name}.yaml"))).returncode == 0
    return tmp_path / name


def test_the_judge_table_is_what_each_runs_recommendations_hold(tmp_path, recsys_files):
    a = ids_run(tmp_path, recsys_files, "two_levels", 2)
    b = ids_run(tmp_path, recsys_files, "three_levels", 3)
    out = tmp_path / "judge"
    proc = rqf_proc("ids", "judge", str(a), str(b / "semantic_ids.h5"), "--data",
                    str(recsys_files["dir"]), "--out", str(out), "--steps", "5",
                    "--set", "model.d_model=32", timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = (out / "judge.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) >= {"two_levels", "three_levels", "floor: mostpop", "floor: lastitem_nn"}
    with h5py.File(recsys_files["sequences"]) as f:
        last = {u.decode(): int(s[-1]) for u, s in zip(f["user_ids"][()], f["sequences"][()])}
    from rqf.ranking import ranking_metrics, read_recommendations

    for name in ("two_levels", "three_levels", "mostpop", "lastitem_nn"):
        users, items, _ = read_recommendations(out / name / "recommendations.h5")
        again = ranking_metrics(items, np.array([last[u] for u in users]))
        everything = json.loads((out / name / "metrics.json").read_text())
        metrics = everything["test"]
        row = rows[name if name.endswith("levels") else f"floor: {name}"]
        valid = everything["valid"]  # the columns to choose on
        assert row[-2:] == [f"{valid['recall@10']:.4f}", f"{valid['ndcg@10']:.4f}"]
        for i, key in enumerate(("recall@5", "recall@10", "ndcg@5", "ndcg@10")):
            shown = float(row[i].split(" ± ")[0])
            assert shown == pytest.approx(again[key], abs=6e-5)
            assert shown == pytest.approx(metrics[key], abs=6e-5)
    assert rows["two_levels"][4] == "-"  # the first set is the reference of the paired test
    assert 0 <= float(rows["three_levels"][4]) <= 1
    # started again, every finished run is kept
    again = rqf_proc("ids", "judge", str(a), str(b / "semantic_ids.h5"), "--data",
                     str(recsys_files["dir"]), "--out", str(out), "--steps", "5",
                     "--set", "model.d_model=32")
    assert again.returncode == 0 and again.stderr.count("kept the finished run") == 4


def test_a_judge_that_cannot_run_says_so_before_training(tmp_path, recsys_files):
    a = ids_run(tmp_path, recsys_files, "ids", 2)
    one_line_error(rqf_proc("ids", "judge", str(a), "--data", str(tmp_path / "nowhere"),
                            "--out", str(tmp_path / "j")), "no item_data.h5")
    one_line_error(rqf_proc("ids", "judge", str(a), "--data", str(recsys_files["dir"]),
                            "--out", str(tmp_path / "j"), "--set", "model.d_modle=32"),
                   "rqf ids judge: ids: ", "d_modle")
    assert not (tmp_path / "j").exists()
