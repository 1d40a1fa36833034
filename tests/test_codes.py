"""rqf.codes: collision handling, the semantic_ids.h5 contract, chunked distances, k-means."""

import h5py
import numpy as np
import pytest
import torch

from rqf.codes import (SemanticIds, code_statistics, handle_collisions,
                       handle_collisions_streamed, kmeans, nearest, squared_distances,
                       write_semantic_ids)
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


def sequential_greedy(codes, score, movers, fallback):
    """The greedy spelled out one item at a time: most confident first, each item on its best
    code still free in its prefix, its fallback when none is."""
    out = codes.copy()
    out[movers, -1] = -1
    prefix = [tuple(row) for row in codes[:, :-1].tolist()]
    taken = {(prefix[i], int(out[i, -1])) for i in range(len(codes)) if out[i, -1] >= 0}
    own = np.where(np.isin(np.arange(len(codes)), movers), fallback, codes[:, -1])
    confidence = score[movers, own[movers]]
    for i in movers[np.argsort(-confidence, kind="stable")]:
        for c in np.argsort(-score[i], kind="stable"):
            if (prefix[i], int(c)) not in taken:
                taken.add((prefix[i], int(c)))
                out[i, -1] = c
                break
        else:
            out[i, -1] = fallback[i]
    return out


@pytest.mark.parametrize("n, k, prefixes, favoured", [(3000, 16, 40, 6), (2000, 8, 30, 3),
                                                      (500, 64, 5, 40)])
def test_placement_in_rounds_gives_the_one_at_a_time_greedy(n, k, prefixes, favoured):
    """Many items per prefix, more than its codes in places (fallbacks), ties in the scores."""
    from rqf.codes.clustering import BalancedScores
    from rqf.codes.statistics import group_codes

    rng = np.random.default_rng(n)
    codes = np.stack([rng.integers(0, prefixes, n), rng.integers(0, 2, n),
                      rng.integers(0, favoured, n)], 1)
    d = rng.integers(1, 20, (n, k)).astype(np.float32)  # integer distances: many ties
    d[np.arange(n), codes[:, -1]] = 0
    group, sizes = group_codes(codes)
    movers = np.flatnonzero(sizes[group] > 1)
    expected = sequential_greedy(codes, -d.astype(np.float64), movers, codes[:, -1])
    np.testing.assert_array_equal(handle_collisions(codes, d, "reassign"), expected)
    balanced = BalancedScores(d)
    scores = balanced.rows(np.arange(n)).astype(np.float64)
    expected = sequential_greedy(codes, scores, np.arange(n), balanced.argmax())
    np.testing.assert_array_equal(handle_collisions(codes, d, "balanced"), expected)


@pytest.mark.parametrize("mode", ["reassign", "balanced", "suffix", "optimal"])
@pytest.mark.parametrize("budget_rows", [10**9, 300, 1])
def test_collisions_from_the_movers_rows_in_parts_give_the_same_ids(mode, budget_rows):
    """Rows asked for only where needed (sorted, each once), in parts of bounded size."""
    from rqf.codes.statistics import group_codes

    rng = np.random.default_rng(7)
    n, k = 3000, 16  # 25 items a prefix on average: some alone, some prefixes over-full
    codes = np.stack([rng.integers(0, 40, n), rng.integers(0, 3, n), rng.integers(0, k, n)], 1)
    d = rng.integers(1, 30, (n, k)).astype(np.float32)  # ties, and prefixes over-full
    d[np.arange(n), codes[:, -1]] = 0
    asked = []

    def rows(items):
        assert (np.diff(items) > 0).all()
        asked.append(items)
        return d[items]

    out, final = handle_collisions_streamed(codes, mode, k, rows, budget=budget_rows * 4 * k)
    np.testing.assert_array_equal(out, handle_collisions(codes, d, mode))
    asked = np.concatenate(asked) if asked else np.zeros(0, np.int64)
    assert len(np.unique(asked)) == len(asked)  # no row computed twice
    group, sizes = group_codes(codes)
    if mode == "reassign":
        np.testing.assert_array_equal(np.sort(asked), np.flatnonzero(sizes[group] > 1))
        assert len(asked) < n  # the items alone on their tuple are never read again
    placed = ~np.isnan(final)
    np.testing.assert_array_equal(np.flatnonzero(placed), np.sort(asked))
    np.testing.assert_array_equal(final[placed], d[placed, out[placed, -1]])


@pytest.mark.parametrize("streamed", [False, True])
def test_float32_sinkhorn_matches_the_float64_log_domain_one(monkeypatch, streamed):
    from rqf.codes import clustering
    from rqf.codes.clustering import BalancedScores

    if streamed:  # the kernel recomputed a chunk of rows at a time, as for large catalogues
        monkeypatch.setattr(clustering, "SINKHORN_CACHE", 0)
        monkeypatch.setattr(clustering, "SINKHORN_CHUNK", 700)

    rng = np.random.default_rng(0)
    d = (rng.random((3000, 32)) * 4 + rng.random(32) * 2).astype(np.float32)
    s = torch.from_numpy(-d.astype(np.float64) / (0.1 * d.astype(np.float64).std()))
    u, v = torch.zeros(len(d), dtype=torch.float64), torch.zeros(32, dtype=torch.float64)
    for _ in range(50):  # the textbook log-domain iteration, in float64
        u = -np.log(len(d)) - torch.logsumexp(s + v[None, :], 1)
        v = -np.log(32) - torch.logsumexp(s + u[:, None], 0)
    reference = (s + u[:, None] + v[None, :]).numpy()
    balanced = BalancedScores(d)
    plan = balanced.rows(np.arange(len(d)))
    np.testing.assert_allclose(plan, reference, atol=2e-3)
    assert (balanced.argmax() == reference.argmax(1)).mean() > 0.999
    # uniform marginals: every row 1/n, every code 1/k
    np.testing.assert_allclose(np.exp(plan).sum(1), 1 / len(d), rtol=1e-3)
    np.testing.assert_allclose(np.exp(plan).sum(0), 1 / 32, rtol=2e-2)


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


@pytest.mark.parametrize("k, levels", [(8, 3), (256, 3), (2 ** 40, 2)])  # the last unpacked
def test_one_sort_of_the_tuples_gives_groups_suffixes_lookup_and_prefix_counts(k, levels):
    from rqf.codes.statistics import TupleOrder, group_codes, unique_codes

    rng = np.random.default_rng(k)
    codes = rng.integers(0, min(k, 6), (2000, levels)) * (k // min(k, 6))
    codes[:700] = codes[700:1400]  # many shared tuples
    order = TupleOrder(codes)
    unique = unique_codes(codes, order)
    # the extra level numbers the items of a tuple in row order
    for row in (0, 5, 1999):
        same = np.flatnonzero((codes == codes[row]).all(1))
        assert unique[row, -1] == int(np.flatnonzero(same == row)[0])
    np.testing.assert_array_equal(order.order, np.lexsort(unique.T[::-1]))
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    group, sizes = group_codes(codes)
    np.testing.assert_array_equal(sizes[group], counts[inverse.ravel()])
    stats = code_statistics(codes, min(k, 2 ** 20) if k < 2 ** 20 else int(codes.max()) + 1) \
        if k < 2 ** 20 else None
    if stats is not None:
        assert stats["distinct_prefixes"] == [len(np.unique(codes[:, :l + 1], axis=0))
                                              for l in range(levels)]
        assert stats["collision_rate"] == (counts[inverse.ravel()] > 1).mean()
        assert stats["distinct_codes"] == len(counts)


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


def brute_force_least_cost(d: np.ndarray) -> float:
    """The least total distance of any placement of every row on a distinct column."""
    import itertools

    m, k = d.shape
    return min(sum(d[i, c] for i, c in enumerate(cols))
               for cols in itertools.permutations(range(k), m))


@pytest.mark.parametrize("seed", range(12))
def test_optimal_gives_distinct_ids_at_the_least_total_distance(seed):
    rng = np.random.default_rng(seed)
    k, m = 5, int(rng.integers(2, 6))  # one prefix of m items over k last-level codes
    codes = np.zeros((m, 3), np.int64)
    codes[:, 2] = rng.integers(0, 2, m)  # two favoured codes: the items collide
    d = rng.random((m, k)).astype(np.float32) * 4 + 1
    d[np.arange(m), codes[:, 2]] = rng.random(m).astype(np.float32)  # own code nearest
    out = handle_collisions(codes, d, "optimal")
    assert (out[:, :2] == 0).all() and len(set(out[:, 2])) == m  # the prefix kept, distinct
    total = float(d[np.arange(m), out[:, 2]].sum())
    assert total == pytest.approx(brute_force_least_cost(d.astype(np.float64)), abs=1e-5)
    greedy = handle_collisions(codes, d, "reassign")
    assert total <= float(d[np.arange(m), greedy[:, 2]].sum()) + 1e-5


def test_optimal_beats_the_greedy_where_the_greedy_is_not_optimal():
    # both items nearest code 0; the first is surest there, but its second choice is as good
    # as its first while the second item's other codes are far: the greedy keeps the first
    # on 0 and sends the second far, the assignment does the opposite
    codes = np.array([[0, 0, 0], [0, 0, 0]])
    d = np.array([[0.10, 0.11, 9.0], [0.20, 5.00, 6.0]], np.float32)
    greedy = handle_collisions(codes, d, "reassign")
    optimal = handle_collisions(codes, d, "optimal")
    assert greedy[:, 2].tolist() == [0, 1] and optimal[:, 2].tolist() == [1, 0]
    assert d[[0, 1], optimal[:, 2]].sum() == pytest.approx(0.31)  # against 5.10


def test_optimal_leaves_prefixes_without_a_shared_tuple_and_overfull_ones_keep_the_rest():
    codes = np.array([[0, 0, 0], [0, 0, 1],  # a prefix with no shared tuple: untouched
                      [1, 0, 0], [1, 0, 0], [1, 0, 0]])  # 3 items, 2 codes: one keeps its own
    d = np.array([[9, 9], [9, 9], [0, 1], [0, 2], [0, 3]], np.float32)
    out = handle_collisions(codes, d, "optimal")
    assert out[:2].tolist() == codes[:2].tolist()
    assert sorted(out[2:, 2].tolist()) == [0, 0, 1] and out[4, 2] == 0  # the farthest from 1
