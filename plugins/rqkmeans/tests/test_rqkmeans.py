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
        assert pm.registry.names("model") == ["rqkmeans"]
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
