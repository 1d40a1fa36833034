"""The collaborative view: tokenizers code items by their text and by the items users put
beside them in the *training* sequences; no validation or test item reaches the codes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import rqf
from rqf.codes import SemanticIds
from rqf.codes.collaborative import cooccurrence, ppmi_vectors
from rqf.testing import clustered

pytest.importorskip("rqf_h5_recsys", reason="the sequences dataset is h5_recsys's")
from rqf_h5_recsys.testing import write_seed_items, write_seed_sequences  # noqa: E402

ITEMS = np.arange(101, 401)


def tastes(tmp_path, seed=0, ends=None):
    """300 items with clustered 16-d text; 240 users, each buying 8 items of one of 12 taste
    groups that cut across the text clusters. ``ends``: replace every user's last two items."""
    rng = np.random.default_rng(seed)
    group = rng.permutation(np.arange(300) % 12)
    users, seqs = [], []
    for u in range(240):
        mine = ITEMS[group == u % 12]
        seq = list(rng.choice(mine, 8, replace=False))
        if ends is not None:
            seq[-2:] = ends(u)
        users.append(f"u{u}")
        seqs.append(np.array(seq))
    tmp_path.mkdir(parents=True, exist_ok=True)
    items = write_seed_items(tmp_path / "item_data.h5", ITEMS, clustered(300, 16, 6))
    return {"items": items, "sequences": write_seed_sequences(tmp_path / "sequence.h5", users,
                                                               seqs)}


def run(files, out, model):
    config = {"name": out.name, "output_dir": str(out), "seed": 0,
              "storage": {"type": "h5_recsys", "items": str(files["items"]),
                          "sequences": str(files["sequences"])},
              "dataset": {"type": "sequences"}, "splitter": {"type": "leave_last_out"},
              "model": model, "train": {"device": "cpu", "progress": False, "max_steps": 30,
                                        "batch_size": 64, "checkpoint_every": 0}}
    result = rqf.run(config)
    return SemanticIds(result.artifacts["semantic_ids"])


def test_counts_pair_items_within_the_window_of_one_record_both_ways():
    # records [0 1 2] and [3 0]: distance 1 counts 1, distance 2 counts 1/2, none across records
    counts = cooccurrence(np.array([0, 1, 2, 3, 0]), np.array([0, 3, 5]), 4, window=2).toarray()
    expected = np.zeros((4, 4))
    for a, b, w in ((0, 1, 1), (1, 2, 1), (0, 2, 0.5), (3, 0, 1)):
        expected[a, b] += w
        expected[b, a] += w
    np.testing.assert_allclose(counts, expected)
    assert counts[2, 3] == 0  # 2 ends one record, 3 starts the next


def test_items_bought_together_get_close_vectors_and_lone_items_none():
    # two groups that never meet: vectors within a group agree more than across
    rows = np.array([0, 1, 2, 0, 2, 1, 3, 4, 5, 5, 3, 4])
    bounds = np.array([0, 3, 6, 9, 12])
    vectors, has = ppmi_vectors(cooccurrence(rows, bounds, 7), dim=4)
    assert has[:6].all() and not has[6]  # item 6 is in no sequence
    np.testing.assert_allclose(np.linalg.norm(vectors[:6], axis=1), 1, atol=1e-5)
    sims = vectors[:6] @ vectors[:6].T
    assert sims[:3, :3].min() > sims[:3, 3:].max()


@pytest.mark.parametrize("model", [
    {"type": "rqkmeans", "levels": 2, "codebook_size": 8},
    {"type": "rqvae", "levels": 2, "codebook_size": 8, "latent_dim": 8, "hidden_dims": [32]}])
def test_no_validation_or_test_item_shapes_the_ids(tmp_path, model):
    rng = np.random.default_rng(5)
    base = run(tastes(tmp_path / "a"), tmp_path / "run_a", model)
    # every user's validation and test items replaced by other items: the same IDs
    other = run(tastes(tmp_path / "b", ends=lambda u: rng.choice(ITEMS, 2, replace=False)),
                tmp_path / "run_b", model)
    np.testing.assert_array_equal(base.item_ids, other.item_ids)
    np.testing.assert_array_equal(base.codes, other.codes)
    # ... while the training sequences do shape them: the same items in other groups
    moved = run(tastes(tmp_path / "c", seed=1), tmp_path / "run_c", model)
    assert (moved.codes != base.codes).any()
    # and without the view the text alone decides
    text = run(tastes(tmp_path / "a"), tmp_path / "run_text", {**model, "collaborative": 0.0})
    assert (text.codes != base.codes).any()


def test_the_view_puts_taste_groups_into_the_first_level(tmp_path):
    files = tastes(tmp_path / "a")
    model = {"type": "rqkmeans", "levels": 2, "codebook_size": 12, "collaborative": 0.8}
    ids = run(files, tmp_path / "run", model)
    text = run(files, tmp_path / "text", {**model, "collaborative": 0.0})
    rng = np.random.default_rng(0)
    group = rng.permutation(np.arange(300) % 12)  # the groups tastes() drew

    def purity(codes):  # share of items whose first code's majority group is theirs
        hits = 0
        for c in np.unique(codes[:, 0]):
            members = group[codes[:, 0] == c]
            hits += np.bincount(members).max()
        return hits / len(codes)

    assert purity(ids.codes) > purity(text.codes) + 0.2


def test_a_loaded_run_codes_again_and_new_items_take_what_their_text_predicts(tmp_path):
    files = tastes(tmp_path / "a")
    ids = run(files, tmp_path / "run", {"type": "rqkmeans", "levels": 2, "codebook_size": 8})
    again = rqf.encode(tmp_path / "run", tmp_path / "again.h5")
    np.testing.assert_array_equal(SemanticIds(again).codes, ids.codes)
    view = rqf.load(tmp_path / "run", device="cpu").view
    with h5py.File(files["items"]) as f:
        text = f["embeddings"][()]
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    # every item of a training prefix has a learned vector; an unknown id gets the prediction
    joined = view.join(np.array([10_000]), text[:1])
    predicted = text[:1] @ view.text_map
    predicted /= np.linalg.norm(predicted)
    np.testing.assert_allclose(joined[0, 16:] / np.sqrt(view.weight), predicted[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(view.join(ITEMS[:50], text[:50]), axis=1), 1,
                               atol=1e-5)
    assert set(view.ids.tolist()) <= set(ITEMS.tolist()) and len(view.ids) > 250


def test_a_model_file_from_before_the_view_still_loads(tmp_path):
    files = tastes(tmp_path / "a")
    ids = run(files, tmp_path / "run", {"type": "rqkmeans", "levels": 2, "codebook_size": 8,
                                        "collaborative": 0.0})
    path = tmp_path / "run" / "model.pt"
    payload = torch.load(path, weights_only=True)
    del payload["config"]["collaborative"]  # what such a file holds
    torch.save(payload, path)
    model = rqf.load(tmp_path / "run", device="cpu")
    assert model.view is None and model.config["collaborative"] == 0.0
    np.testing.assert_array_equal(SemanticIds(rqf.encode(tmp_path / "run", tmp_path / "e.h5"))
                                  .codes, ids.codes)


def test_a_loaded_models_own_evaluation_codes_through_the_view(tmp_path):
    from rqf.pipeline import build, resolve_config

    files = tastes(tmp_path / "a")
    out = tmp_path / "run"
    run(files, out, {"type": "rqkmeans", "levels": 2, "codebook_size": 8})
    saved = __import__("json").loads((out / "metrics.json").read_text())["all"]
    model = rqf.load(out, device="cpu")
    parts = build(resolve_config(out / "config.yaml"))
    try:
        again = model.evaluate(parts.dataset)  # no predictions: the dataset's vectors coded
    finally:
        parts.storage.close()
    assert again["recon_mse"] == pytest.approx(saved["recon_mse"], rel=1e-5)
    assert again["quantizer_collision_rate"] == saved["quantizer_collision_rate"]
