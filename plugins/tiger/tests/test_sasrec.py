"""SASRec: no future item reaches a prediction, the ranking covers the whole catalogue, and
recommendations.h5 gives exactly the metrics reported."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import rqf
from rqf.testing import needs
from rqf.ranking import ranking_metrics, read_recommendations
from rqf_tiger.sasrec import PAD, SASRecModel, SASRecNet


def test_no_future_item_reaches_an_earlier_position():
    torch.manual_seed(0)
    net = SASRecNet(n_items=30, width=8, d_model=16, heads=2, layers=2, dropout=0.0).eval()
    seq = torch.tensor([[0, 0, 3, 7, 9, 2, 11, 5]])
    out = net(seq)
    for t in range(2, 8):
        changed = seq.clone()
        changed[0, t:] = torch.tensor([29, 28, 27, 26, 25, 24][:8 - t])  # rewrite the future
        again = net(changed)
        torch.testing.assert_close(again[0, :t], out[0, :t])  # the past does not move
        assert not torch.allclose(again[0, t], out[0, t])    # the present does
    # padding carries nothing: what sits on a padded position does not matter
    padded = seq.clone()
    padded[0, :2] = PAD
    torch.testing.assert_close(net(padded)[0, 2:], out[0, 2:])


def test_recommend_ranks_the_whole_catalogue_by_the_scores(monkeypatch):
    ids = np.array([10, 20, 30, 40, 50, 60])
    model = SASRecModel({}, history=4, d_model=8, heads=2, layers=1)
    model.set_catalogue(ids)
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0, 0.5],     # hand-made: 20, 40, 60, 30, ...
                           [5.0, -1.0, 2.0, 2.5, 9.0, 1.0]])   # 50, 10, 40, 30, 60, 20
    seen = []

    def fake_scores(history):
        seen.append(history.copy())
        return scores[:len(history)]

    monkeypatch.setattr(model, "item_scores", fake_scores)
    top = model.recommend(np.array([[10, 20, -1], [30, -1, -1]]), 6)
    assert top.tolist() == [[20, 40, 60, 30, 10, 50], [50, 10, 40, 30, 60, 20]]
    assert model.recommend(np.array([[10, 20, -1]]), 2).tolist() == [[20, 40]]
    # an item the model never saw is refused by name, as for every ranker
    with pytest.raises(rqf.DataError, match="item 70 is not in the catalogue"):
        model.recommend_histories([[10, 70]])


def test_histories_longer_than_the_model_reads_keep_their_newest_items():
    model = SASRecModel({}, history=3, d_model=8, heads=2, layers=1)
    model.set_catalogue(np.arange(1, 21))
    long = np.array([[1, 2, 3, 4, 5, -1], [7, 8, -1, -1, -1, -1]])
    short = np.array([[3, 4, 5], [7, 8, -1]])
    torch.testing.assert_close(model.item_scores(long), model.item_scores(short))


@needs("rqf_h5_recsys")  # a run over item files
def test_sasrec_run_exports_exactly_its_metrics_and_reloads(tmp_path, recsys_files):
    from rqf_h5_recsys.testing import recsys_pipeline

    config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                             splitter={"type": "leave_last_out"},
                             model={"type": "sasrec", "d_model": 16, "layers": 1})
    config["train"] = {"max_steps": 40, "eval_every": 20, "batch_size": 16, "progress": False}
    result = rqf.run(config)
    users, items, attrs = read_recommendations(tmp_path / "run" / "recommendations.h5")
    assert attrs["model"] == "sasrec" and items.shape == (len(users), 10)
    assert all(set(row) <= set(range(101, 401)) and len(set(row)) == 10 for row in items)
    with h5py.File(recsys_files["sequences"]) as f:
        seqs = {u.decode(): s.tolist() for u, s in zip(f["user_ids"][()], f["sequences"][()])}
    recomputed = ranking_metrics(items, np.array([seqs[u][-1] for u in users]))
    for key, value in recomputed.items():
        assert result.metrics["test"][key] == pytest.approx(value)
    fit = result.metrics["fit"]
    assert [h["step"] for h in fit["history"]] == [20, 40] and fit["losses"]
    assert set(result.metrics["test"]["floors"]) == {"mostpop", "lastitem_nn"}
    model = rqf.load(tmp_path / "run")
    histories = [seqs[u][:-1] for u in users]
    np.testing.assert_array_equal(model.recommend_histories(histories), items)
