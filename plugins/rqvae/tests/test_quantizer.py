"""rqvae's quantizer: forward modes, distances, k-means, dead-code restart, code statistics."""

import numpy as np
import pytest
import torch

from rqf.codes import kmeans
from rqf_rqvae import code_statistics, unique_codes
from rqf_rqvae.quantizer import ResidualQuantizer, _rotate_onto


@pytest.mark.parametrize("mode", ["ste", "rotation"])
def test_forward_value_is_the_codeword_sum_and_gradient_reaches_the_encoder(mode):
    q = ResidualQuantizer(levels=2, codebook_size=8, dim=4, forward_mode=mode).train()
    z = torch.randn(16, 4, requires_grad=True)
    out = q(z)
    expected = q.decode_codes(out["codes"])
    torch.testing.assert_close(out["quantized"], expected, rtol=1e-4, atol=1e-5)
    out["quantized"].sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_rotation_trick_maps_r_onto_e_and_rotates_the_gradient():
    r = torch.tensor([[1.0, 0.0]], requires_grad=True)
    e = torch.tensor([[0.0, 2.0]])
    q = _rotate_onto(r, e)
    torch.testing.assert_close(q, e)
    q.backward(torch.tensor([[0.0, 1.0]]))
    # the gradient along e, rotated back by 90 degrees and scaled by |e|/|r| = 2
    torch.testing.assert_close(r.grad, torch.tensor([[2.0, 0.0]]))


def test_gumbel_mode_trains_codebooks_through_soft_assignment():
    q = ResidualQuantizer(levels=1, codebook_size=8, dim=4, forward_mode="gumbel").train()
    out = q(torch.randn(32, 4))
    out["quantized"].pow(2).sum().backward()
    assert q.codebooks.grad.abs().sum() > 0


def test_cosine_distance_assigns_by_angle():
    q = ResidualQuantizer(levels=1, codebook_size=2, dim=2, distance="cosine")
    q.codebooks.data[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    codes = q.encode(torch.tensor([[10.0, 1.0], [0.1, 3.0]]))
    assert codes[:, 0].tolist() == [0, 1]


def test_kmeans_finds_separated_clusters_without_duplicates():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = centers.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2, generator=g)
    found = kmeans(x, 4, iters=20, generator=g)
    dist = torch.cdist(centers, found)
    assert (dist.min(1).values < 0.5).all()


def test_kmeans_with_fewer_points_than_codes_warns_and_keeps_points():
    x = torch.randn(5, 3)
    with pytest.warns(UserWarning, match="5 distinct vectors for 8 codes"):
        c = kmeans(x, 8)
    assert c.shape == (8, 3)
    assert len(torch.unique(c, dim=0)) == 8
    assert all(any(torch.allclose(p, ci) for ci in c) for p in x)


def test_dead_codes_are_reseeded_from_residuals():
    q = ResidualQuantizer(levels=1, codebook_size=4, dim=2).train()
    q.codebooks.data[0] = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [0.1, 0.0]])
    x = torch.cat([torch.zeros(32, 2), torch.tensor([[0.1, 0.0]]).repeat(32, 1)])
    out = q(x + 0.001 * torch.randn(64, 2))
    assert q.usage[0, 1] == 0 and q.usage[0, 2] == 0
    dead = q.restart_dead_codes(out["residuals"], threshold=1.0)
    assert dead.tolist() == [2]
    assert q.codebooks[0, 1].abs().max() < 1 and q.codebooks[0, 2].abs().max() < 1
    assert (q.usage == 0).all()


def test_unique_codes_follow_tigers_rule():
    codes = np.array([[1, 2], [3, 4], [1, 2], [1, 2], [3, 4], [0, 0]])
    assert unique_codes(codes)[:, 2].tolist() == [0, 0, 1, 2, 1, 0]


def test_code_statistics():
    codes = np.array([[0, 1], [0, 1], [1, 0], [2, 0]])
    stats = code_statistics(codes, 4)
    assert stats["utilization"] == [0.75, 0.5]
    assert stats["utilization_of_reachable"] == [0.75, 0.5]
    assert stats["collision_rate"] == 0.5 and stats["max_items_per_code"] == 2
    assert stats["distinct_prefixes"] == [3, 3]
    assert stats["perplexity"][1] == pytest.approx(2.0)
