"""genret: every position a target with no future item reaching an earlier prediction, ID
tokens that start from the codebooks of the IDs file, cached decoding equal to a full pass,
history left out of every list, and recommendations.h5 equal to the reported metrics."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import rqf
from rqf.codes import write_semantic_ids
from rqf.ranking import ranking_metrics, read_recommendations
from rqf_tiger.causal_net import codebook_embeddings
from rqf_tiger.genret import GenretModel, pack_sequences, training_windows

recsys = pytest.importorskip("rqf_h5_recsys.testing", reason="runs over item files need h5_recsys")


def ids_file(path, levels=2, size=8, dim=6, n=40, codebooks=True, seed=0):
    """``n`` items (ids 0..n-1) with distinct codes over ``levels`` codebooks of ``size``."""
    rng = np.random.default_rng(seed)
    codes = np.stack(np.unravel_index(rng.choice(size ** levels, n, replace=False),
                                      (size,) * levels), 1).astype(np.int64)
    books = rng.normal(size=(levels, size, dim)).astype(np.float32) if codebooks else None
    return write_semantic_ids(path, np.arange(n), codes, books, {"model": "hand-made"}), books


def small_model(path, **params):
    return GenretModel({}, semantic_ids=str(path), d_model=16, heads=2, layers=2, ff=32,
                       history=5, beam=10, dropout=0.0, **params)


def test_no_future_item_reaches_an_earlier_positions_prediction(tmp_path):
    path, _ = ids_file(tmp_path / "ids.h5")
    model = small_model(path, user_tokens=4).net.eval()
    m = small_model(path, user_tokens=4)
    m.net.load_state_dict(model.state_dict())
    slots, levels = m.layout(6)
    rows = torch.tensor([[40, 40, 3, 7, 11, 20], [1, 2, 3, 4, 5, 6]])  # 40: the padding row
    tokens = torch.cat([torch.tensor([[m.user_base + 1], [m.user_base + 2]]),
                        m.item_tokens[rows].flatten(1)], 1)
    hidden, _ = m.net(tokens, slots, levels)
    for changed in range(2, 6):  # every item from the third on, replaced by another
        other = rows.clone()
        other[:, changed] = 30
        tokens2 = torch.cat([tokens[:, :1], m.item_tokens[other].flatten(1)], 1)
        hidden2, _ = m.net(tokens2, slots, levels)
        first = 1 + changed * m.levels  # the first position of the changed item
        torch.testing.assert_close(hidden2[:, :first], hidden[:, :first])
        assert not torch.allclose(hidden2[:, first:], hidden[:, first:])


def test_packed_users_see_exactly_what_each_sees_alone(tmp_path):
    """Several users' sequences in one row: every position's state and which positions are
    scored are those of the user's own left-padded row."""
    path, _ = ids_file(tmp_path / "ids.h5")
    m = small_model(path, user_tokens=4)  # history 5: rows of 6 items
    m.net.eval()
    pad = len(m.item_ids)
    rows = np.full((5, 6), pad)
    for u, items in enumerate([[3, 7], [1, 2, 3, 4, 5, 6], [9, 8, 30], [11, 12], [0, 5, 6]]):
        rows[u, 6 - len(items):] = items
    users = np.arange(5)[:, None] + m.user_base
    packed = pack_sequences(m, rows, users, seed=0)
    assert len(packed["tokens"]) < 5  # some users share a row
    alone_slots, alone_levels = m.layout(6)
    hidden, _ = m.net(packed["tokens"], packed["slots"], packed["levels"], packed["segments"])
    for u in range(5):
        tokens = torch.cat([torch.from_numpy(users[u]), m.item_tokens[rows[u]].flatten()])
        own, _ = m.net(tokens[None], alone_slots, alone_levels)
        real = (tokens != 0).numpy()
        where = packed["segments"] == u + 1
        torch.testing.assert_close(hidden[where], own[0][torch.from_numpy(real)],
                                   atol=1e-5, rtol=1e-5)
        n = int((rows[u] != pad).sum())
        assert packed["scored"][where].tolist() == [False] * (1 + m.levels) + \
            [True] * ((n - 1) * m.levels)


def test_a_beam_decoded_against_the_cached_history_equals_a_full_pass(tmp_path):
    path, _ = ids_file(tmp_path / "ids.h5")
    m = small_model(path)
    m.net.eval()
    rows = torch.tensor([[40, 40, 3, 7, 11], [1, 2, 3, 4, 5]])
    tokens = m.item_tokens[rows].flatten(1)
    slots, levels = m.layout(5)
    _, cache = m.net(tokens, slots, levels)
    beams = torch.stack([m.item_tokens[[9, 12, 17]], m.item_tokens[[0, 25, 33]]])[:, :, :1]
    got = m.net.extend(beams, 6, cache, tokens != 0)  # (2 inputs, 3 beams, d)
    full_slots, full_levels = m.layout(6)
    for w in range(3):
        longer = torch.cat([tokens, beams[:, w]], 1)
        hidden, _ = m.net(longer, full_slots[:longer.shape[1]], full_levels[:longer.shape[1]])
        torch.testing.assert_close(got[:, w], hidden[:, -1], atol=1e-5, rtol=1e-5)


def test_token_embeddings_start_from_the_codebooks_the_ids_file_holds(tmp_path):
    path, books = ids_file(tmp_path / "ids.h5", dim=6)
    m = small_model(path)
    table = codebook_embeddings(books, 16, 16 ** -0.5)
    for level in range(2):
        first = m.offsets[level]
        size = m.trie.vocab[level]
        np.testing.assert_allclose(m.net.embed.weight[first:first + size].detach().numpy(),
                                   table[level, :size], atol=1e-6)
        # an orthogonal map of the centred codewords: distances kept up to one factor
        centred = books[level] - books[level].mean(0)
        d_books = np.linalg.norm(centred[:, None] - centred[None], axis=-1)
        d_table = np.linalg.norm(table[level][:, None] - table[level][None], axis=-1)
        ratio = d_table[d_books > 0] / d_books[d_books > 0]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert m.initialised_levels == [0, 1]
    # IDs imported without codebooks start from the network's random embeddings
    bare, _ = ids_file(tmp_path / "bare.h5", codebooks=False)
    assert small_model(bare).initialised_levels == []
    assert small_model(path, codebook_init=False).initialised_levels == []


def sequence_pipeline(files, out, model, **train):
    config = recsys.recsys_pipeline(files, out, dataset={"type": "sequences"},
                                    splitter={"type": "leave_last_out"}, model=model)
    config["train"] = {"progress": False, "checkpoint_every": 0, **train}
    return config


def test_every_training_next_item_is_a_target_once_after_enough_of_its_history(tmp_path):
    """Long sequences are cut into overlapping windows; each next item of the training inputs
    (never a valid or test target) is scored exactly once, after at least half a window."""
    from rqf.pipeline import build, resolve_config

    rng = np.random.default_rng(0)
    ids = np.arange(1, 201)
    files = {"items": recsys.write_seed_items(tmp_path / "item_data.h5", ids,
                                              rng.normal(size=(200, 4)).astype(np.float32))}
    seqs = [rng.choice(ids, n, replace=False) for n in (3, 4, 7, 12, 25, 60)]
    files["sequences"] = recsys.write_seed_sequences(tmp_path / "sequence.h5",
                                                     [f"u{i}" for i in range(6)], seqs)
    parts = build(resolve_config(sequence_pipeline(files, tmp_path / "run", {"type": "mostpop"})))
    try:
        windows, skip, users = training_windows(parts.splits["train"], 6)
    finally:
        parts.storage.close()
    scored: dict[tuple[int, int], int] = {}
    for window, k, user in zip(windows, skip, users):
        items = window[window >= 0].tolist()
        position = {item: i for i, item in enumerate(seqs[user].tolist())}
        for j, item in enumerate(items):
            if j >= k:
                key = (int(user), position[item])
                scored[key] = scored.get(key, 0) + 1
                assert j >= min(position[item], 3)  # read after min(all it has, 3) items
        # a window is a run of consecutive items of its user's sequence
        assert [position[i] for i in items] == list(range(position[items[0]],
                                                          position[items[0]] + len(items)))
    # leave-last-out keeps the last two items out of training: targets 1 .. n-3 of each user
    expected = {(u, p) for u, s in enumerate(seqs) for p in range(1, len(s) - 2)}
    assert set(scored) == expected and set(scored.values()) == {1}


@pytest.fixture
def genret_run(tmp_path, recsys_files):
    ids = rqf.run(sequence_pipeline(recsys_files, tmp_path / "ids",
                                    {"type": "rqkmeans", "levels": 2, "codebook_size": 16}))
    model = {"type": "genret", "semantic_ids": ids.artifacts["semantic_ids"], "d_model": 32,
             "ff": 64, "beam": 12}
    result = rqf.run(sequence_pipeline(recsys_files, tmp_path / "genret", model, max_steps=40,
                                       eval_every=20, batch_size=16))
    return result, ids.artifacts["semantic_ids"]


def test_genret_exports_exactly_its_metrics_and_never_lists_a_users_own_items(genret_run,
                                                                              recsys_files):
    result, ids_path = genret_run
    users, items, attrs = read_recommendations(result.run_dir / "recommendations.h5")
    with h5py.File(recsys_files["sequences"]) as f:
        seqs = {u.decode(): s.tolist() for u, s in zip(f["user_ids"][()], f["sequences"][()])}
    assert items.shape == (len(users), 10)
    assert all(set(row) <= set(range(101, 401)) and len(set(row)) == 10 for row in items)
    recomputed = ranking_metrics(items, np.array([seqs[u][-1] for u in users]))
    for key, value in recomputed.items():
        assert result.metrics["test"][key] == pytest.approx(value)
    # no user repeats an item in this data, so auto leaves the history out of every list
    test = result.metrics["test"]
    assert test["history_excluded"] and test["exclude_history"] == "auto" \
        and test["training_repeats"] == 0
    assert not any(set(row) & set(seqs[u][:-1]) for u, row in zip(users, items))
    assert result.metrics["fit"]["codebook_levels_initialised"] == [0, 1]
    assert attrs["semantic_ids"] == ids_path
    # a loaded run ranks as the run did, history exclusion included
    model = rqf.load(result.run_dir)
    np.testing.assert_array_equal(model.recommend_histories([seqs[u][:-1] for u in users]),
                                  items)
    assert "history items left out of every list (exclude_history: auto" in result.summary
