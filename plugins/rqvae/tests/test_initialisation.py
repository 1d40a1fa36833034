"""rqvae's initialisation survives the first optimizer step (only the core and rqvae needed)."""

import h5py
import numpy as np
import torch

from rqf.codes import code_statistics
from rqf.testing import real_data
from rqf_rqvae.module import RQVAE


def offset_embeddings(n=2000, dim=96, seed=0):
    """Sentence-embedding-like vectors: a large shared direction, small differences."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    x = 8 * common / np.linalg.norm(common) + 0.4 * rng.normal(size=(n, dim)) / np.sqrt(dim) * 8
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def level1_use_after_one_step(x: np.ndarray, data_init: bool, latent_norm: bool) -> float:
    torch.manual_seed(0)
    net = RQVAE(input_dim=x.shape[1], hidden_dims=[128, 64], latent_dim=16, levels=3,
                codebook_size=64, latent_norm=latent_norm)
    t = torch.from_numpy(x)
    with torch.no_grad():
        if data_init:
            net.calibrate(t)
        net.quantizer.init_from_data(net.encoder(t), 25, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    opt.zero_grad()
    net(t[:1024])["loss"].backward()
    opt.step()
    return code_statistics(net.encode(t).numpy(), 64)["utilization"][0]


def test_first_step_collapses_level_one_without_the_data_init():
    x = offset_embeddings()
    assert level1_use_after_one_step(x, data_init=False, latent_norm=False) < 0.2
    assert level1_use_after_one_step(x, data_init=True, latent_norm=True) >= 0.9


def test_data_init_gives_a_unit_scale_latent():
    x = torch.from_numpy(offset_embeddings(500))
    net = RQVAE(input_dim=x.shape[1], hidden_dims=[64], latent_dim=8, levels=1, codebook_size=16,
                latent_norm=False)
    before = net.encoder(x).detach().std(0).mean()
    net.calibrate(x)
    z = net.encoder(x).detach()
    assert before < 0.1
    torch.testing.assert_close(z.std(0), torch.ones(8), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), rtol=1e-3, atol=1e-3)


def test_real_ml100k_keeps_level_one_after_init_and_one_step():
    folder = real_data("ml100k")
    with h5py.File(folder / "item_data.h5") as f:
        x = f["embeddings"][()]
    assert level1_use_after_one_step(x, data_init=True, latent_norm=True) >= 0.5
