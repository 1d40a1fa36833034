"""rqkmeans with only the core and this plugin: data from ``rqf.testing``, nothing installed
beside them is loaded."""

from __future__ import annotations

import numpy as np
import pytest

import rqf
from rqf.codes import SemanticIds
from rqf.testing import MemoryItems, toy_items, use_plugins
from rqf_rqkmeans import plugin


def pipeline(out, storage: MemoryItems, **model):
    return {"output_dir": str(out),
            "storage": {"type": "memory_items",
                        **{k: storage.config[k] for k in ("item_ids", "embeddings")}},
            "dataset": {"type": "memory_items"},
            "splitter": {"type": "index", "test_ratio": 0.1},
            "model": {"type": "rqkmeans", **model},
            "train": {"device": "cpu", "progress": False}}


@pytest.fixture(autouse=True)
def only_this_plugin():
    with use_plugins(plugin, entry_points=False) as pm:
        # this plugin's model, beside the core's own (the ranking floors)
        assert pm.registry.names("model") == ["lastitem_nn", "mostpop", "rqkmeans"]
        yield


def test_unique_ids_for_every_item_and_encode_reproduces_them(tmp_path):
    items = toy_items(300, 16)
    result = rqf.run(pipeline(tmp_path / "run", items, levels=3, codebook_size=16))
    ids = SemanticIds(result.artifacts["semantic_ids"])
    assert ids.item_ids.tolist() == list(range(1, 301))
    assert result.metrics["all"]["collision_rate"] == 0.0 and result.metrics["health"]["healthy"]
    assert len({tuple(r) for r in ids.unique_codes}) == 300
    again = rqf.encode(tmp_path / "run", tmp_path / "again.h5")
    np.testing.assert_array_equal(SemanticIds(again).codes, ids.codes)
    # the same methods on every tokenizer: nearest codes of raw vectors, before collision
    # handling, which moves items within their prefix only
    nearest = rqf.load(tmp_path / "run", device="cpu").codes_of(items.config["embeddings"])
    np.testing.assert_array_equal(nearest[:, :-1], ids.codes[:, :-1])
    assert (nearest == ids.codes).all(1).mean() > 0.5


def test_balanced_clusters_are_even_on_skewed_data(tmp_path):
    rng = np.random.default_rng(0)
    skewed = np.vstack([rng.normal(size=(240, 16)) * 0.05 + 3, rng.normal(size=(60, 16))])
    storage = MemoryItems.from_arrays(np.arange(101, 401), skewed.astype(np.float32))
    sizes = {}
    for balanced in (False, True):
        result = rqf.run(pipeline(tmp_path / f"b{balanced}", storage, levels=1, codebook_size=8,
                                  balanced=balanced, normalize="none",
                                  collision_handling="suffix"))
        codes = SemanticIds(result.artifacts["semantic_ids"]).codes[:, 0]
        sizes[balanced] = np.bincount(codes, minlength=8)
    assert sizes[True].max() < sizes[False].max()
    assert sizes[True].std() < 0.5 * sizes[False].std()


@pytest.mark.parametrize("mode", ["reassign", "balanced", "optimal"])
def test_coding_in_chunks_reads_only_the_movers_again_and_gives_the_full_matrix_ids(
        monkeypatch, mode):
    import torch

    from rqf.codes import handle_collisions, nearest, squared_distances
    from rqf_rqkmeans import model as rqk

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 12)).astype(np.float32)
    m = rqk.RQKMeansModel({"input_dim": 12, "unit": "item", "n_items": 3000}, levels=3,
                          codebook_size=8, collision_handling=mode)
    m.codebooks = torch.from_numpy(rng.standard_normal((3, 8, 12)).astype(np.float32) * 0.3)
    monkeypatch.setattr(rqk, "ENCODE_CHUNK", 256)  # many chunks
    reads = []

    def read(a, b):
        reads.append(b - a)
        return x[a:b]

    coded = m.code_rows(read, len(x))
    # the reference: every item's last-level distances in memory at once
    residual = m._prepare(torch.from_numpy(x))
    for level in range(2):
        residual = residual - m.codebooks[level][nearest(residual, m.codebooks[level])[1]]
    full = squared_distances(residual, m.codebooks[2]).numpy()
    np.testing.assert_array_equal(coded.codes, handle_collisions(coded.raw_codes, full, mode))
    recon = m.codebooks[0][coded.codes[:, 0]] + m.codebooks[1][coded.codes[:, 1]] \
        + m.codebooks[2][coded.codes[:, 2]]
    np.testing.assert_allclose(coded.per_row["sq_err"],
                               ((m._prepare(torch.from_numpy(x)) - recon) ** 2).sum(1).numpy(),
                               rtol=1e-4, atol=1e-5)
    first_pass = sum(reads[:12])
    assert first_pass == 3000 and all(r <= 256 for r in reads)


def test_kmeans_reads_only_the_sampled_rows(monkeypatch):
    import torch

    from rqf_rqkmeans import model as rqk

    items = toy_items(2000, 8)
    items.open()
    asked = []
    real = items.read_embeddings
    monkeypatch.setattr(items, "read_embeddings", lambda rows: asked.append(len(rows)) or real(rows))
    monkeypatch.setattr(items, "read_embedding_range", lambda a, b: pytest.fail("read whole"))
    from rqf.testing import MemoryItemsDataset

    train = MemoryItemsDataset(items).subset(np.arange(1500))
    m = rqk.RQKMeansModel({"input_dim": 8, "unit": "item", "n_items": 2000}, levels=2,
                          codebook_size=4, kmeans_samples=300)
    x = m._training_vectors(train, torch.Generator().manual_seed(0))
    assert asked == [300] and x.shape == (300, 8)
    # the same draw as sampling the rows of every training vector read at once
    everything = real(np.arange(1500))
    expected = everything[torch.randperm(1500, generator=torch.Generator().manual_seed(0))[:300]
                          .numpy()]
    np.testing.assert_array_equal(x, expected)
