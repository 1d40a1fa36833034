"""rqvae over item files: training quality, save and load, rqf encode, bad input, CUDA."""

import h5py
import numpy as np
import pytest
import torch

import rqf
from rqf.cli import main
from rqf.errors import ConfigError, DataError, RqfError
from rqf.testing import clustered
from rqf_rqvae import RQVAEModel, SemanticIds

recsys = pytest.importorskip("rqf_h5_recsys.testing", reason="runs over item files need h5_recsys")
recsys_pipeline, write_seed_items = recsys.recsys_pipeline, recsys.write_seed_items
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def manifold_items(n: int = 2000, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Vectors on a curved 6-dimensional manifold: compressible, unlike isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(6, dim))
    coef = rng.normal(size=(n, 6)) * np.array([3, 2, 1.5, 1, 0.7, 0.5])
    return (np.tanh(coef @ basis / 3) + 0.02 * rng.normal(size=(n, dim))).astype(np.float32)


def test_training_uses_codes_and_reconstructs(tmp_path):
    items = write_seed_items(tmp_path / "i.h5", np.arange(2000), manifold_items())
    config = {"output_dir": str(tmp_path / "run"),
              "storage": {"type": "h5_recsys", "items": str(items)},
              "dataset": "items", "splitter": {"type": "index", "test_ratio": 0.1},
              "model": {"type": "rqvae", "levels": 3, "codebook_size": 32, "latent_dim": 8,
                        "hidden_dims": [64]},
              "train": {"epochs": 200, "batch_size": 256, "progress": False}}
    before = rqf.run(config, ["train.epochs=0", f"output_dir={tmp_path / 'untrained'}"]).metrics
    m = rqf.run(config).metrics
    assert min(m["all"]["utilization"]) > 0.9
    assert m["test"]["recon_rel_error"] < 0.3 * before["test"]["recon_rel_error"]
    assert m["all"]["collision_rate"] <= before["all"]["collision_rate"]
    assert m["all"]["distinct_codes"] > 0.8 * 2000
    with h5py.File(tmp_path / "run" / "semantic_ids.h5") as f:
        assert f["codes"].shape == (2000, 3) and f["unique_codes"].shape == (2000, 4)
        assert f["item_ids"][()].tolist() == list(range(2000))
        assert len({tuple(r) for r in f["unique_codes"][()]}) == 2000
        assert f["codebooks"].shape == (3, 32, 8)
    ids = SemanticIds(tmp_path / "run" / "semantic_ids.h5")
    assert ids.item_of(ids.of_item(1234)) == 1234


def test_items_are_encoded_the_same_after_save_and_load(tmp_path, recsys_files):
    rqf.run(recsys_pipeline(recsys_files, tmp_path / "run"))
    model = RQVAEModel.load(tmp_path / "run" / "model.pt", device="cpu")
    with h5py.File(tmp_path / "run" / "semantic_ids.h5") as f:
        raw, codes = f["raw_codes"][()], f["codes"][()]
    with h5py.File(recsys_files["items"]) as f:
        emb = f["embeddings"][()]
    np.testing.assert_array_equal(model.codes_of(emb), raw)
    # collision handling only ever changes the last level
    np.testing.assert_array_equal(codes[:, :-1], raw[:, :-1])


def test_encode_command_with_a_trained_run(tmp_path, recsys_files, capsys):
    rqf.run(recsys_pipeline(recsys_files, tmp_path / "run"))
    new = write_seed_items(tmp_path / "new_items.h5", np.arange(5000, 5050), clustered(50, 16, 4))
    with pytest.raises(SystemExit) as exit_info:
        main(["rqvae", "encode", str(tmp_path / "run"), "--out", str(tmp_path / "new_ids.h5"),
              "--set", f"storage.items={new}", "--set", "storage.sequences=null"])
        raise SystemExit(0)
    assert exit_info.value.code == 0
    with h5py.File(tmp_path / "new_ids.h5") as f:
        assert f["item_ids"][()].tolist() == list(range(5000, 5050))
    with pytest.raises(SystemExit):
        main(["rqvae", "lookup", str(tmp_path / "new_ids.h5"), "--item", "5003"])
        raise SystemExit(0)
    code = capsys.readouterr().out.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["rqvae", "lookup", str(tmp_path / "new_ids.h5"), "--code", code])
        raise SystemExit(0)
    assert capsys.readouterr().out.strip() == "5003"


@pytest.mark.parametrize("mode", ["rotation", "gumbel"])
def test_other_quantizer_modes_run_in_a_pipeline(tmp_path, recsys_files, mode):
    result = rqf.run(recsys_pipeline(recsys_files, tmp_path / "run",
                                   model={"quantizer": mode, "distance": "cosine"}))
    assert result.metrics["all"]["n"] == 300


def test_bad_model_settings_are_clear(recsys_files, tmp_path):
    for change, message in [({"latent_dim": 64}, "model.latent_dim: 64 is larger than the input"),
                            ({"levels": 0}, "model.levels: expected a value >= 1, got 0"),
                            ({"quantizer": "vq"}, "model.quantizer: expected one of")]:
        with pytest.raises(ConfigError, match=message):
            rqf.run(recsys_pipeline(recsys_files, tmp_path / "run", model=change))
    assert not (tmp_path / "run").exists()


def test_nan_training_vectors_are_refused(tmp_path):
    from rqf.interfaces import RunContext
    from rqf.training import TrainConfig, Trainer

    class Vectors:
        def vectors(self):
            x = np.ones((10, 8), np.float32)
            x[4, 2] = np.nan
            return x

    model = RQVAEModel({"input_dim": 8}, latent_dim=2, hidden_dims=[4], codebook_size=4)
    cfg = TrainConfig(progress=False)
    ctx = RunContext(tmp_path, cfg, {}, trainer=Trainer(cfg, tmp_path))
    with pytest.raises(DataError, match="1 rows hold NaN or Inf \\(first at row 4\\)"):
        model.fit(Vectors(), None, ctx)


def test_fewer_items_than_codes_still_trains(tmp_path):
    items = write_seed_items(tmp_path / "i.h5", np.arange(20), clustered(20, 8, 3))
    config = {"output_dir": str(tmp_path / "run"),
              "storage": {"type": "h5_recsys", "items": str(items)},
              "dataset": "items", "splitter": {"type": "index", "test_ratio": 0.1},
              "model": {"type": "rqvae", "codebook_size": 64, "latent_dim": 4, "hidden_dims": [16]},
              "train": {"epochs": 5, "batch_size": 8, "progress": False}}
    with pytest.warns(UserWarning, match="distinct vectors for 64 codes"):
        result = rqf.run(config)
    assert result.metrics["all"]["n"] == 20


def test_checkpoint_of_another_architecture_is_refused(tmp_path, recsys_files):
    config = recsys_pipeline(recsys_files, tmp_path / "run",
                           train={"epochs": 2, "checkpoint_every": 1})
    rqf.run(config)
    (tmp_path / "run" / "metrics.json").unlink()
    bad = tmp_path / "run" / "model.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(RqfError, match="not a readable rqvae model"):
        RQVAEModel.load(bad)
    # same pipeline file, but a checkpoint saved by a different network
    ckpt = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    payload = torch.load(ckpt, weights_only=True)
    payload["extra"]["architecture"] = "something else"
    torch.save(payload, ckpt)
    with pytest.raises(RqfError, match="checkpoint was made with architecture="):
        rqf.run(config, resume=True)


def test_real_ml100k_items_reach_full_code_usage(tmp_path):
    from rqf.testing import real_data

    folder = real_data("ml100k")
    config = {"output_dir": str(tmp_path / "run"),
              "storage": {"type": "h5_recsys", "items": str(folder / "item_data.h5")},
              "dataset": "items", "splitter": {"type": "index", "test_ratio": 0.1, "shuffle": True},
              "model": {"type": "rqvae"},
              "train": {"epochs": 200, "batch_size": 512, "progress": False}}
    m = rqf.run(config).metrics["all"]
    assert min(m["utilization_of_reachable"]) >= 0.9
    assert m["collision_rate"] < 0.1


@cuda
def test_cuda_training_and_encoding_match_cpu_codes(tmp_path, recsys_files):
    result = rqf.run(recsys_pipeline(recsys_files, tmp_path / "run",
                                   train={"device": "cuda", "precision": "bf16"}))
    assert result.metrics["fit"]["device"].startswith("cuda")
    model = RQVAEModel.load(tmp_path / "run" / "model.pt", device="cpu")
    with h5py.File(recsys_files["items"]) as f:
        emb = f["embeddings"][()]
    with h5py.File(tmp_path / "run" / "semantic_ids.h5") as f:
        agreement = (model.codes_of(emb) == f["codes"][()]).all(1).mean()
    assert agreement > 0.95
