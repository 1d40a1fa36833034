"""rqf.codes: collision handling, the semantic_ids.h5 contract, chunked distances, k-means."""

import h5py
import numpy as np
import pytest
import torch

from rqf.codes import (SemanticIds, code_statistics, handle_collisions, kmeans, nearest,
                       squared_distances, write_semantic_ids)
from rqf.errors import DataError


# --- collision handling ----------------------------------------------------------------------


def test_reassign_moves_colliding_items_to_their_nearest_free_code():
    codes = np.array([[0, 5], [0, 5], [0, 5], [1, 5]])
    d = np.full((4, 8), 10.0)
    d[:, 5] = [0.3, 0.1, 0.5, 0.0]       # item 1 is nearest to code 5: it keeps it
    d[0, 2], d[2, 2] = 1.0, 2.0          # code 2 is next for item 0 and for item 2
    d[2, 7] = 3.0                        # item 2 then takes code 7
    out = handle_collisions(codes, d, "reassign")
    assert out.tolist() == [[0, 2], [0, 5], [0, 7], [1, 5]]
    assert code_statistics(out, 8)["collision_rate"] == 0.0


def test_reassign_keeps_the_prefix_and_suffix_takes_overflow():
    # five items on one prefix with only four last-level codes: one must keep a shared code
    codes = np.zeros((5, 2), np.int64)
    rng = np.random.default_rng(0)
    out = handle_collisions(codes, rng.random((5, 4)), "reassign")
    assert (out[:, 0] == 0).all()
    assert sorted(set(out[:, 1].tolist())) == [0, 1, 2, 3]
    assert code_statistics(out, 4)["collision_rate"] == pytest.approx(2 / 5)


def test_suffix_mode_changes_nothing():
    codes = np.array([[1, 2], [1, 2]])
    assert handle_collisions(codes, None, "suffix").tolist() == codes.tolist()


def test_balanced_assignment_evens_the_last_level():
    rng = np.random.default_rng(0)
    n, k = 400, 16
    d = rng.random((n, k))
    d[:, 0] -= 1.0                        # every item is nearest to code 0
    prefixes = rng.integers(0, 40, n)
    codes = np.stack([prefixes, d.argmin(1)], 1)
    nearest_counts = np.bincount(codes[:, 1], minlength=k)
    out = handle_collisions(codes, d, "balanced")
    counts = np.bincount(out[:, 1], minlength=k)
    assert nearest_counts.max() == n
    assert counts.max() < 3 * n / k       # near the even n / k = 25 per code
    assert (out[:, 0] == prefixes).all()
    assert code_statistics(out, k)["collision_rate"] == 0.0


def test_duplicate_items_get_distinct_ids_only_with_handling():
    rng = np.random.default_rng(1)
    codes = np.repeat(rng.integers(0, 8, (10, 3)), 2, axis=0)  # every item twice
    d = rng.random((20, 8))
    assert code_statistics(handle_collisions(codes, d, "suffix"), 8)["collision_rate"] == 1.0
    assert code_statistics(handle_collisions(codes, d, "reassign"), 8)["collision_rate"] == 0.0


def test_suffix_wider_than_the_codebook_is_recorded_not_wrapped(tmp_path):
    codes = np.zeros((300, 2), np.int64)  # 300 items on one tuple, codebook of 256
    path = write_semantic_ids(tmp_path / "ids.h5", np.arange(300), codes, None,
                              {"codebook_size": 256})
    with h5py.File(path) as f:
        assert f.attrs["suffix_size"] == 300
        assert f["unique_codes"][()][:, -1].max() == 299
    ids = SemanticIds(path)
    assert ids.item_of([0, 0, 299]) == 299


def test_semantic_ids_file_that_disagrees_with_itself_is_refused(tmp_path):
    path = write_semantic_ids(tmp_path / "ids.h5", np.arange(10), np.zeros((10, 2)), None, {})
    with h5py.File(path, "a") as f:
        del f["item_ids"]
        f["item_ids"] = np.arange(8)
    with pytest.raises(DataError, match="codes has 10 rows, item_ids has 8"):
        SemanticIds(path)
    with h5py.File(path, "a") as f:
        del f["lookup_order"]
    with pytest.raises(DataError, match="no 'lookup_order'"):
        SemanticIds(path)


# --- k-means ---------------------------------------------------------------------------------


def test_chunked_nearest_matches_the_full_distance_matrix():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1000, 12, generator=g), torch.randn(64, 12, generator=g)
    full = torch.cdist(x, c) ** 2
    dist, idx = nearest(x, c, chunk=97)
    assert torch.equal(idx, full.argmin(1))
    torch.testing.assert_close(dist, full.min(1).values, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(squared_distances(x, c), full, rtol=1e-4, atol=1e-4)


def test_kmeans_over_several_chunks_uses_every_code(monkeypatch):
    import rqf.codes.clustering as codes_mod

    monkeypatch.setattr(codes_mod, "DISTANCE_CHUNK", 128)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(32, 8, generator=g) * 5
    x = centers.repeat_interleave(40, 0) + 0.05 * torch.randn(1280, 8, generator=g)
    found = kmeans(x, 32, iters=10, generator=g)
    assert len(torch.unique(nearest(x, found)[1])) == 32


# --- an initialisation that survives the first step ------------------------------------------
