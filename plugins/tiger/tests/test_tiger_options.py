"""TIGER's options from the paper and its reproductions: a hashed user token read before the
history, and histories with each item kept at its latest position only."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from rqf.codes import write_semantic_ids
from rqf_tiger.model import TigerModel, TigerTask


@pytest.fixture
def ids_file(tmp_path):
    items = np.arange(10, 22)
    codes = np.stack([np.arange(12) // 4, np.arange(12) % 4], 1)  # 2 levels, every ID distinct
    return write_semantic_ids(tmp_path / "ids.h5", items, codes, None, {"codebook_size": 4})


def trained(ids_file, user_tokens: int, users, history, target, steps=300) -> TigerModel:
    torch.manual_seed(0)
    model = TigerModel({}, semantic_ids=str(ids_file), history=2, user_tokens=user_tokens,
                       d_model=32, heads=2, layers=1, ff=64, dropout=0.0, beam=12, floors=False)
    task = TigerTask(model, torch.from_numpy(model._rows(history, "h")),
                     torch.from_numpy(model._rows(target, "t")),
                     model._user_tokens(users, len(users)), None)
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, _ = task.training_step(model.net, torch.arange(len(users)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.net.eval()
    return model


def test_a_user_token_lets_tiger_tell_apart_users_with_the_same_history(ids_file):
    users = np.array([f"user{i}" for i in range(6)], dtype=object)
    buckets = [zlib.crc32(u.encode()) % 64 for u in users]
    assert len(set(buckets)) == 6  # six users, six tokens
    history = np.tile([10, 11], (6, 1))  # one history for all, a different next item each
    target = np.arange(12, 18)
    model = trained(ids_file, 64, users, history, target)
    tokens = model._user_tokens(np.array(["user0", None], dtype=object), 2)
    assert tokens[:, 0].tolist() == [model.user_base + buckets[0], model.user_base + 64]
    assert model.recommend(history, 1, users)[:, 0].tolist() == target.tolist()
    # an unknown user still gets whole, valid items
    unknown = model.recommend(history[:2], 3)
    assert set(unknown.ravel()) <= set(range(10, 22)) and (unknown >= 0).all()
    # without the token, one history can only have one answer
    blind = trained(ids_file, 0, users, history, target)
    assert len(set(blind.recommend(history, 1, users)[:, 0])) == 1
    width = 2 * blind.levels  # two items of ID tokens; the user token one more
    assert blind.net.source_pos.num_embeddings == width == model.net.source_pos.num_embeddings - 1


def test_dedup_history_reaches_training_and_ranking_alike(ids_file):
    model = TigerModel({}, semantic_ids=str(ids_file), history=4, dedup_history=True,
                       d_model=16, heads=2, layers=1, ff=32, beam=12, floors=False)
    rows = model._history_rows(np.array([[10, 11, 10, -1]]), "h")
    assert rows.tolist() == [[1, 0, 12, 12]]  # 11, 10 (catalogue rows), then padding (row 12)
    model.config["dedup_history"] = False
    assert model._history_rows(np.array([[10, 11, 10, -1]]), "h").tolist() == [[0, 1, 0, 12]]
