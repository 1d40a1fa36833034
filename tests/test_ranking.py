"""The ranking harness (``rqf.ranking``) serves a ranker written outside the repository: the
plugin guide's example ranker (docs/writing-plugins.md), installed as a plugin, ranks, is
measured against the floors and writes ``recommendations.h5`` whose hits are its metrics."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

import rqf
from rqf.ranking import dedup_history, ranking_metrics, read_recommendations, right_align
from rqf.testing import needs

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"


def guide_block(first_line: str) -> str:
    """The plugin guide's python block that opens with ``first_line``."""
    for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no block of {GUIDE.name} starts with {first_line!r}")


def install_plugin(tmp_path: Path, module: str, source: str) -> dict[str, str]:
    """``module`` laid out as pip installs a one-module distribution, and an environment that
    sees it (the real entry-point discovery, in a real process)."""
    site = tmp_path / "site"
    info = site / f"{module}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[rqf]\n{module} = {module}\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site),
                                                          os.environ.get("PYTHONPATH", "")])}


def rqf_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "rqf", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_readme_ranker_imports_only_the_cores_faces():
    source = guide_block("# rqf_highest_ids.py")
    modules = set(re.findall(r"^(?:from|import) ([\w.]+)", source, re.M))
    assert modules == {"numpy", "rqf", "rqf.ranking"}
    assert len(source.splitlines()) <= 35


@needs("rqf_h5_recsys")  # item and sequence files, leave_last_out
def test_an_out_of_tree_ranker_is_judged_against_the_floors_and_writes_its_metrics(
        tmp_path, recsys_files):
    from rqf_h5_recsys.testing import recsys_pipeline

    env = install_plugin(tmp_path, "rqf_highest_ids", guide_block("# rqf_highest_ids.py"))
    config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                             splitter={"type": "leave_last_out"},
                             model={"type": "highest_ids", "top_k": 10})
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(config))
    proc = rqf_cli(env, "run", str(pipeline))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    test = metrics["test"]
    assert set(test["floors"]) == {"mostpop", "lastitem_nn"}  # the core's floors, beside it
    assert metrics["health"]["checked"]  # the harness's check against mostpop
    users, items, attrs = read_recommendations(tmp_path / "run" / "recommendations.h5")
    assert attrs["model"] == "highest_ids" and items.shape == (test["users"], 10)
    # every user gets the same list: the highest ids seen in training, highest first
    assert (items == items[0]).all() and (np.diff(items[0]) < 0).all()
    # the file's hits are the reported metrics: recomputed from it and the held-out items
    import h5py

    with h5py.File(recsys_files["sequences"], "r") as f:
        last = {u.decode(): s[-1] for u, s in zip(f["user_ids"][()], f["sequences"][()])}
    again = ranking_metrics(items, np.array([last[u] for u in users]))
    for key in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
        assert again[key] == pytest.approx(test[key])
    # and rqf recommend serves it, refusing an item it never saw by name
    top = rqf_cli(env, "recommend", str(tmp_path / "run"), "--history", "101,102", "--k", "3")
    assert top.returncode == 0, top.stderr
    assert top.stdout.split() == [",".join(map(str, items[0][:3]))]
    unknown = rqf_cli(env, "recommend", str(tmp_path / "run"), "--history", "99999")
    assert unknown.returncode == 2 and "item 99999 is not in the catalogue" in unknown.stderr
    if not torch.cuda.is_available():  # a ranker refit from its run honours --device too
        cuda = rqf_cli(env, "recommend", str(tmp_path / "run"), "--history", "101",
                       "--device", "cuda")
        assert (cuda.returncode, cuda.stderr) == (2, "error: device: 'cuda' was asked for, "
                                                     "but no CUDA device is available\n")


def test_metrics_are_read_at_the_models_own_k_too():
    from rqf.ranking import MostPopModel

    assert MostPopModel({}).ks == (5, 10)
    wide = MostPopModel({}, top_k=20)
    assert wide.ks == (5, 10, 20)
    wide.ranking = np.arange(100, 0, -1)
    items = wide.recommend(np.full((3, 2), -1), 20)
    target = np.array([100, 85, 7])  # ranks 1, 16 and past the list
    m = wide.evaluate(_Ranked(items, target), {"all": _ranking(items, target)})
    assert (m["recall@10"], m["recall@20"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert "R@20" in wide.summarize({"test": {**m}}).splitlines()[0]


class _Ranked:
    role = "all"

    def __init__(self, items, target):
        self.items, self.target = items, target


def _ranking(items, target):
    from rqf.ranking import Ranking

    return Ranking(np.array(["u"] * len(target), dtype=object), items, target)


# --- the harness's pieces, and the floors as models of their own ------------------------------

def test_ranking_metrics_on_hand_made_rankings():
    ranked = np.array([[7, 3, 9, 1, 4, 5, 6, 8, 2, 0],    # target 7 at rank 1
                       [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],   # target 6 at rank 6
                       [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],   # target 11: a miss
                       [5, 4, 3, 2, 1, 0, 9, 8, 7, 6]])   # target 2 at rank 4
    m = ranking_metrics(ranked, np.array([7, 6, 11, 2]))
    assert m["users"] == 4
    assert m["recall@5"] == pytest.approx(2 / 4) and m["recall@10"] == pytest.approx(3 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(7) + 1 / math.log2(5)) / 4)
    with pytest.raises(ValueError, match="needs 10 recommendations"):
        ranking_metrics(ranked[:, :5], np.array([7, 6, 11, 2]))


def test_right_align_moves_each_history_to_the_newest_end():
    left = np.array([[5, 6, -1, -1], [1, 2, 3, 4], [9, -1, -1, -1]])
    assert right_align(left).tolist() == [[-1, -1, 5, 6], [1, 2, 3, 4], [-1, -1, -1, 9]]


def test_dedup_history_keeps_each_item_at_its_latest_position():
    history = np.array([[5, 6, 5, 7, -1], [1, 1, 1, -1, -1], [3, 4, 8, 9, 2], [-1] * 5])
    assert dedup_history(history).tolist() == [[6, 5, 7, -1, -1], [1, -1, -1, -1, -1],
                                               [3, 4, 8, 9, 2], [-1] * 5]


def sequence_pipeline(files, out, model, **train):
    from rqf_h5_recsys.testing import recsys_pipeline

    config = recsys_pipeline(files, out, dataset={"type": "sequences"},
                             splitter={"type": "leave_last_out"}, model=model)
    config["train"] = {"progress": False, "checkpoint_every": 0, **train}
    return config


@needs("rqf_h5_recsys")
def test_baselines_rank_as_they_say(tmp_path, recsys_files):
    """No user of this data repeats an item, so both floors leave the history out (auto)."""
    with h5py.File(recsys_files["sequences"]) as f:
        seqs = {u.decode(): s for u, s in zip(f["user_ids"][()], f["sequences"][()])}
    pop = rqf.run(sequence_pipeline(recsys_files, tmp_path / "pop", {"type": "mostpop"}))
    users, items, attrs = read_recommendations(pop.run_dir / "recommendations.h5")
    ranking = rqf.load(pop.run_dir).ranking  # by training frequency
    for user, row in zip(users, items):
        history = set(seqs[user][:-1].tolist())
        assert row.tolist() == [i for i in ranking if i not in history][:10]
    nn = rqf.run(sequence_pipeline(recsys_files, tmp_path / "nn", {"type": "lastitem_nn"}))
    assert nn.metrics["test"]["history_excluded"]
    users, items, _ = read_recommendations(nn.run_dir / "recommendations.h5")
    with h5py.File(recsys_files["items"]) as f:
        ids, emb = f["item_ids"][()], f["embeddings"][()]
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for user, row in zip(users, items):
        history = seqs[user][:-1]  # the test history ends with the item before the target
        sims = emb @ emb[list(ids).index(history[-1])]
        sims[[list(ids).index(i) for i in history]] = -np.inf
        assert row.tolist() == ids[np.argsort(-sims, kind="stable")[:10]].tolist()


@needs("rqf_h5_recsys")
def test_history_exclusion_is_decided_from_repeats_and_the_floors_follow_it(tmp_path):
    """Data where users come back to items keeps them in the lists (auto); ``always`` and
    ``never`` are obeyed, by the model and by its floors alike, and recorded with the metrics."""
    from rqf_h5_recsys.testing import write_seed_items, write_seed_sequences

    rng = np.random.default_rng(0)
    ids = np.arange(1, 41)
    files = {"items": write_seed_items(tmp_path / "item_data.h5", ids,
                                       rng.normal(size=(40, 8)).astype(np.float32))}
    seqs = [rng.choice(ids, 8) for _ in range(50)]  # drawn with replacement: repeats
    files["sequences"] = write_seed_sequences(tmp_path / "sequence.h5",
                                              [f"u{i}" for i in range(50)], seqs)
    auto = rqf.run(sequence_pipeline(files, tmp_path / "auto", {"type": "lastitem_nn"}))
    test = auto.metrics["test"]
    assert not test["history_excluded"] and test["training_repeats"] > 0.05
    model = rqf.load(auto.run_dir)
    assert model.recommend_histories([[3, 5]], k=39)[0].tolist().count(3) == 1  # 5: itself
    for setting in ("always", "never"):
        run = rqf.run(sequence_pipeline(files, tmp_path / setting,
                                        {"type": "mostpop", "exclude_history": setting}))
        assert run.metrics["test"]["history_excluded"] == (setting == "always")
        model = rqf.load(run.run_dir)
        top = model.recommend_histories([model.ranking[:3].tolist()], k=10)[0]
        assert (top[:3].tolist() == model.ranking[:3].tolist()) == (setting == "never")
        if setting == "always":  # a ranker's floors are measured by the ranker's protocol
            ranker = rqf.run(sequence_pipeline(files, tmp_path / "sasrec", {
                "type": "sasrec", "exclude_history": "always", "d_model": 8}, max_steps=2,
                eval_every=0, monitor=None))
            measured = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "coverage@10")
            assert ranker.metrics["test"]["floors"]["mostpop"] == {
                k: run.metrics["test"][k] for k in measured}


def test_lists_without_history_and_masked_scores_on_hand_made_cases():
    from rqf.ranking import coverage, mask_history, without_history

    ranked = np.array([[5, 1, 7, 2, 9], [3, 4, 8, 6, -1]])
    history = np.array([[7, 5, -1], [4, -1, -1]])
    assert without_history(ranked, history, 3).tolist() == [[1, 2, 9], [3, 8, 6]]
    assert without_history(ranked, history, 4).tolist() == [[1, 2, 9, -1], [3, 8, 6, -1]]
    scores = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    masked = mask_history(scores.clone(), torch.tensor([[0, 5], [2, -1]]))
    assert torch.isinf(masked).nonzero().tolist() == [[0, 0], [0, 5], [1, 2]]
    assert coverage(ranked, 3, 20) == pytest.approx(6 / 20)  # 5,1,7 and 3,4,8


@needs("rqf_h5_recsys")
def test_a_baseline_run_is_refit_to_recommend(tmp_path, recsys_files):
    result = rqf.run(sequence_pipeline(recsys_files, tmp_path / "nn", {"type": "lastitem_nn"}))
    users, items, _ = read_recommendations(result.run_dir / "recommendations.h5")
    with h5py.File(recsys_files["sequences"]) as f:
        seqs = {u.decode(): s.tolist() for u, s in zip(f["user_ids"][()], f["sequences"][()])}
    model = rqf.load(result.run_dir)
    np.testing.assert_array_equal(model.recommend_histories([seqs[u][:-1] for u in users]),
                                  items)
