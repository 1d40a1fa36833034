"""TIGER through the pipeline over item files, and that recommendations.h5
gives exactly the metrics reported."""

from __future__ import annotations

import math
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import yaml

import rqf
from rqf.codes import write_semantic_ids
from rqf.training import TensorBatches, TrainConfig, Trainer, TrainingTask, build_scheduler
from rqf.ranking import ranking_metrics, read_recommendations

recsys = pytest.importorskip("rqf_h5_recsys.testing", reason="runs over item files need h5_recsys")
recsys_pipeline = recsys.recsys_pipeline


# --- models through the pipeline ------------------------------------------------------------

def sequence_pipeline(files, out, model, **train):
    config = recsys_pipeline(files, out, dataset={"type": "sequences"},
                           splitter={"type": "leave_last_out"}, model=model)
    config["train"] = {"progress": False, "checkpoint_every": 0, **train}
    return config


@pytest.fixture
def tiger_run(tmp_path, recsys_files):
    ids = rqf.run(sequence_pipeline(recsys_files, tmp_path / "ids",
                                    {"type": "rqkmeans", "levels": 2, "codebook_size": 16}))
    model = {"type": "tiger", "semantic_ids": ids.artifacts["semantic_ids"], "d_model": 32,
             "ff": 64, "layers": 1, "beam": 12}
    result = rqf.run(sequence_pipeline(recsys_files, tmp_path / "tiger", model, max_steps=30,
                                       eval_every=10, batch_size=32))
    return result, ids.artifacts["semantic_ids"]


def test_tiger_trains_decodes_valid_items_and_exports_exactly_its_metrics(tiger_run,
                                                                          recsys_files):
    from rqf.codes import sha256_of

    result, ids_path = tiger_run
    users, items, attrs = read_recommendations(result.run_dir / "recommendations.h5")
    catalogue = set(range(101, 401))
    assert items.shape == (len(users), 10)
    assert all(set(row) <= catalogue and len(set(row)) == 10 for row in items)
    # the test targets: each user's last item; metrics recomputed from the file agree
    with h5py.File(recsys_files["sequences"]) as f:
        last = {u.decode(): s[-1] for u, s in zip(f["user_ids"][()], f["sequences"][()])}
    recomputed = ranking_metrics(items, np.array([last[u] for u in users]))
    for key, value in recomputed.items():
        assert result.metrics["test"][key] == pytest.approx(value)
    assert attrs["semantic_ids"] == ids_path
    assert attrs["semantic_ids_sha256"] == result.metrics["fit"]["semantic_ids_sha256"] \
        == sha256_of(ids_path)
    fit = result.metrics["fit"]
    assert fit["best_step"] in (10, 20, 30) and (result.run_dir / "checkpoints" / "best.pt").exists()
    assert [h["step"] for h in fit["history"]] == [10, 20, 30]
    assert fit["best_value"] == max(h["valid_ndcg@10"] for h in fit["history"])


def test_a_tiger_run_measures_the_floors_exactly_as_their_own_runs(tiger_run, recsys_files,
                                                                   tmp_path):
    result, _ = tiger_run
    for floor in ("mostpop", "lastitem_nn"):
        alone = rqf.run(sequence_pipeline(recsys_files, tmp_path / floor, {"type": floor}))
        for role in ("valid", "test"):
            own = {k: v for k, v in alone.metrics[role].items()
                   if k not in ("users", "history_excluded", "exclude_history",
                                "training_repeats")}
            assert result.metrics[role]["floors"][floor] == own
            # the same protocol: no user of this data repeats an item, so both leave it out
            assert alone.metrics[role]["history_excluded"] \
                and result.metrics[role]["history_excluded"]
        assert alone.metrics["health"] == {"checked": False, "healthy": None, "warnings": []}
    assert result.metrics["health"]["checked"]
    lines = result.summary.splitlines()
    assert [line.split()[:2] for line in lines[1:-1]] == [
        [role, name] for role in ("valid", "test") for name in ("tiger", "mostpop", "lastitem_nn")]
    assert lines[-1].startswith("history items left out of every list (exclude_history: auto")


def test_a_ranker_below_mostpop_is_unhealthy(tiger_run):
    model = rqf.load(tiger_run[0].run_dir)
    floors = {"mostpop": {"recall@10": 0.2, "ndcg@10": 0.1}}
    below = {"test": {"users": 9, "recall@10": 0.1, "ndcg@10": 0.05, "floors": floors}}
    [warning] = model.health(below)
    assert "tiger ranks below mostpop on test (NDCG@10 0.0500 < 0.1000)" in warning
    assert model.health({"test": {**below["test"], "ndcg@10": 0.2}}) == []
    assert model.health({"test": {"users": 9, "ndcg@10": 0.2}}) is None  # floors: false


def test_a_loaded_run_recommends_what_its_test_split_was_scored_on(tiger_run, recsys_files,
                                                                  tmp_path):
    result, _ = tiger_run
    users, items, _ = read_recommendations(result.run_dir / "recommendations.h5")
    with h5py.File(recsys_files["sequences"]) as f:
        seqs = {u.decode(): s.tolist() for u, s in zip(f["user_ids"][()], f["sequences"][()])}
    histories = [seqs[u][:-1] for u in users]  # leave-last-out: all but the held-out item
    model = rqf.load(result.run_dir)
    np.testing.assert_array_equal(model.recommend_histories(histories), items)
    np.testing.assert_array_equal(model.recommend_histories(histories[:3], k=4), items[:3, :4])
    with pytest.raises(rqf.DataError, match="history 2: item 999 is not in the catalogue"):
        model.recommend_histories([histories[0], [101, 999]])
    with pytest.raises(rqf.ConfigError, match="k: 13 items from 12 beams"):
        model.recommend_histories(histories[:1], k=13)
    (tmp_path / "users.tsv").write_text("".join(f"{u}\t{','.join(map(str, h))}\n"
                                                for u, h in zip(users[:5], histories[:5])))
    proc = subprocess.run([sys.executable, "-m", "rqf", "recommend", str(result.run_dir),
                           "--users", str(tmp_path / "users.tsv"), "--k", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{u}\t{','.join(map(str, row[:5]))}"
                                        for u, row in zip(users[:5], items)]


@pytest.mark.parametrize("ids, fragment", [
    (np.arange(101, 301), "100 of the 300 items of the data have no semantic ID (e.g. [301, 302"),
    (np.r_[np.arange(101, 401), 9000, 9001], "and 2 IDs name items it does not hold (e.g. [9000"),
])
def test_tiger_refuses_ids_of_another_catalogue_in_validate_and_run(tmp_path, recsys_files, ids,
                                                                    fragment):
    path = write_semantic_ids(tmp_path / "other.h5", ids,
                              np.random.default_rng(0).integers(0, 8, (len(ids), 3)), None,
                              {"codebook_size": 8})
    config = sequence_pipeline(recsys_files, tmp_path / "t", {"type": "tiger",
                                                              "semantic_ids": str(path)},
                               max_steps=2)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "rqf", "validate", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "made for another catalogue" in proc.stderr and fragment in proc.stderr
    with pytest.raises(rqf.DataError, match="made for another catalogue"):
        rqf.run(config)
    assert not (tmp_path / "t").exists()  # refused before the run folder was made


# --- the training loop's seams used here ----------------------------------------------------

def test_monitor_keeps_the_best_weights_and_schedules_shape_the_rate(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 1)
    cfg = TrainConfig.from_mapping({"epochs": None, "max_steps": 12, "batch_size": 8,
                                    "eval_every": 3, "monitor": "score", "progress": False,
                                    "scheduler": "linear", "checkpoint_every": 0})
    weights = {}

    def valid_fn(m):
        step = len(weights) * 3 + 3
        weights[step] = m.weight.detach().clone()
        return {"score": -abs(step - 6)}  # best at step 6

    trainer = Trainer(cfg, tmp_path, seed=0)
    result = trainer.fit(TrainingTask.of(module, lambda m, b: ((m(b) ** 2).mean(), {}), valid_fn),
                         TensorBatches(torch.randn(40, 4), 8))
    assert result.best_step == 6 and result.best_value == 0
    assert torch.equal(module.weight, weights[6])  # the kept weights are step 6's
    lrs = {}
    for kind in ("linear", "inverse_sqrt", "cosine"):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = build_scheduler(TrainConfig.from_mapping({"scheduler": kind, "warmup_steps": 4,
                                                          "lr": 1.0}), opt, 20)
        lrs[kind] = []
        for _ in range(20):
            lrs[kind].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert lrs["linear"][3] == pytest.approx(1.0) and lrs["linear"][12] == pytest.approx(0.5)
    assert lrs["inverse_sqrt"][15] == pytest.approx(math.sqrt(4 / 16))
    assert lrs["cosine"][-1] > 0.05 - 1e-9
