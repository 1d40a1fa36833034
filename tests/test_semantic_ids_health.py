"""Healthy semantic IDs with the defaults: collision handling, an init that survives the first
step, a step budget, one pass after training, health warnings and checkpoints by time."""

import json

import h5py
import numpy as np
import pytest
import torch

import rqf
from conftest import real_data, tiny_pipeline, write_seed_items
from rqf.codes import (SemanticIds, code_statistics, handle_collisions, kmeans, nearest,
                       squared_distances, write_semantic_ids)
from rqf.errors import DataError, RqfError
from rqf_rqvae import RQVAEModel
from rqf_rqvae.module import RQVAE

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
    import rqf.codes as codes_mod

    monkeypatch.setattr(codes_mod, "DISTANCE_CHUNK", 128)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(32, 8, generator=g) * 5
    x = centers.repeat_interleave(40, 0) + 0.05 * torch.randn(1280, 8, generator=g)
    found = kmeans(x, 32, iters=10, generator=g)
    assert len(torch.unique(nearest(x, found)[1])) == 32


# --- an initialisation that survives the first step ------------------------------------------


def offset_embeddings(n=2000, dim=96, seed=0):
    """Sentence-embedding-like vectors: a large shared direction, small differences."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    x = 8 * common / np.linalg.norm(common) + 0.4 * rng.normal(size=(n, dim)) / np.sqrt(dim) * 8
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def level1_use_after_one_step(x: np.ndarray, data_init: bool, latent_norm: bool) -> float:
    torch.manual_seed(0)
    net = RQVAE(x.shape[1], [128, 64], 16, 3, 64, latent_norm=latent_norm)
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
    net = RQVAE(x.shape[1], [64], 8, 1, 16, latent_norm=False)
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


# --- the step budget -------------------------------------------------------------------------


def test_model_budget_applies_when_the_user_sets_none(recsys_files, tmp_path):
    from rqf.pipeline import resolve_config

    config = tiny_pipeline(recsys_files, tmp_path / "run")
    del config["train"]
    train = resolve_config(config)["train"]
    assert train["epochs"] is None and train["max_steps"] == RQVAEModel.train_defaults["max_steps"]
    assert train["warmup_steps"] == RQVAEModel.train_defaults["warmup_steps"]
    config["train"] = {"epochs": 3}
    train = resolve_config(config)["train"]
    assert train["epochs"] == 3 and train["max_steps"] is None
    config["train"] = {"max_steps": 5000}
    train = resolve_config(config)["train"]
    assert train["epochs"] is None and train["max_steps"] == 5000
    config["train"] = {"epochs": None}
    with pytest.raises(rqf.ConfigError, match="set epochs or max_steps"):
        resolve_config(config)


# --- one pass after training, health -------------------------------------------------------


def test_every_item_is_encoded_once_after_training(recsys_files, tmp_path, monkeypatch):
    calls = {"encoder_rows": 0, "decoder_rows": 0}
    fit = RQVAEModel.fit

    def counting_fit(self, *args, **kwargs):
        out = fit(self, *args, **kwargs)
        self.net.encoder.register_forward_hook(
            lambda m, i, o: calls.__setitem__("encoder_rows", calls["encoder_rows"] + len(o)))
        self.net.decoder.register_forward_hook(
            lambda m, i, o: calls.__setitem__("decoder_rows", calls["decoder_rows"] + len(o)))
        return out

    monkeypatch.setattr(RQVAEModel, "fit", counting_fit)
    config = tiny_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                           splitter={"type": "leave_last_out"})
    result = rqf.run(config)
    assert calls == {"encoder_rows": 300, "decoder_rows": 300}  # 300 items in the file
    for role in ("train", "valid", "test", "all"):
        assert result.metrics[role]["n"] > 0


def test_split_metrics_equal_a_direct_evaluation(recsys_files, tmp_path):
    result = rqf.run(tiny_pipeline(recsys_files, tmp_path / "run",
                                   model={"collision_handling": "suffix"}))
    model = RQVAEModel.load(tmp_path / "run" / "model.pt", device="cpu")
    model.config["collision_handling"] = "suffix"
    with h5py.File(recsys_files["items"]) as f:
        emb = f["embeddings"][()]
    rows = np.flatnonzero(np.isin(np.arange(101, 401), np.arange(101, 401)))
    direct = model._metrics(model.codes_of(emb[rows]), model.codes_of(emb[rows]),
                            model._score(lambda a, b: emb[rows][a:b], len(rows),
                                         model._latents(lambda a, b: emb[rows][a:b], len(rows)),
                                         model.codes_of(emb[rows])))
    assert result.metrics["all"]["recon_mse"] == pytest.approx(direct["recon_mse"], rel=1e-5)
    assert result.metrics["all"]["utilization"] == direct["utilization"]


def test_collapsed_run_warns_in_one_line_and_in_its_report(recsys_files, tmp_path, capsys):
    config = tiny_pipeline(recsys_files, tmp_path / "run",
                           model={"codebook_size": 256, "kmeans_init": False,
                                  "encoder_init": "default", "restart_every": 0,
                                  "collision_handling": "suffix"},
                           train={"epochs": 1})
    result = rqf.run(config)
    health = result.metrics["health"]
    assert not health["healthy"]
    assert any("model.collision_handling" in w for w in health["warnings"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["health"] == health
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.index("## Health") < report.index("## Split")
    assert "**warning**" in report


def test_default_run_on_clustered_items_is_healthy(recsys_files, tmp_path):
    result = rqf.run(tiny_pipeline(recsys_files, tmp_path / "run", model={"codebook_size": 32},
                                   train={"epochs": 20}))
    assert result.metrics["health"] == {"healthy": True, "warnings": []}
    assert result.metrics["all"]["collision_rate"] == 0.0
    with h5py.File(tmp_path / "run" / "semantic_ids.h5") as f:
        assert f.attrs["collision_handling"] == "reassign"
        assert f["raw_codes"].shape == f["codes"].shape


# --- checkpoints by time and by tenths of the run --------------------------------------------


def test_short_run_checkpoints_every_tenth(recsys_files, tmp_path):
    config = tiny_pipeline(recsys_files, tmp_path / "run",
                           train={"max_steps": 20, "epochs": None, "checkpoint_every": 1000,
                                  "keep_checkpoints": 50, "checkpoint_minutes": 0})
    rqf.run(config)
    steps = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == list(range(2, 21, 2))


def test_checkpoints_by_time(recsys_files, tmp_path):
    config = tiny_pipeline(recsys_files, tmp_path / "run",
                           train={"max_steps": 7, "epochs": None, "checkpoint_every": 0,
                                  "keep_checkpoints": 50, "checkpoint_minutes": 1e-9})
    rqf.run(config)
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 7


def test_resume_without_a_checkpoint_says_so(recsys_files, tmp_path):
    config = tiny_pipeline(recsys_files, tmp_path / "run")
    rqf.run(config)
    (tmp_path / "run" / "metrics.json").unlink()
    for ckpt in (tmp_path / "run" / "checkpoints").iterdir():
        ckpt.unlink()
    (tmp_path / "run" / "checkpoints" / ".step_00000003.pt.abc.tmp").write_bytes(b"half")
    lines = []
    result = rqf.run(config, resume=True, echo=lines.append)
    assert any("no checkpoint" in line and "step 0" in line for line in lines)
    assert result.metrics["fit"]["resumed_from"] is None
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))


def test_resume_does_not_redo_the_initialisation(recsys_files, tmp_path, monkeypatch):
    config = tiny_pipeline(recsys_files, tmp_path / "run", train={"checkpoint_every": 5})
    rqf.run(config)
    (tmp_path / "run" / "metrics.json").unlink()
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    ckpts[-1].unlink()  # as if killed before the last checkpoint

    def refuse(*_a, **_k):
        raise AssertionError("k-means ran again on resume")

    monkeypatch.setattr(RQVAEModel, "_initialise", refuse)
    result = rqf.run(config, resume=True)
    assert result.metrics["fit"]["resumed_from"] is not None


def test_readme_encode_line_works_for_a_run_trained_on_sequences(recsys_files, tmp_path):
    config = tiny_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                           splitter={"type": "leave_last_out"})
    rqf.run(config)
    rng = np.random.default_rng(5)
    new = write_seed_items(tmp_path / "new_items.h5", np.arange(7, 57),
                           rng.normal(size=(50, 16)).astype(np.float32))
    out = rqf.encode(tmp_path / "run", tmp_path / "new.h5",
                     (f"storage.items={new}", "storage.sequences=null"), "cpu")
    ids = SemanticIds(out)
    assert ids.codes.shape == (50, 2) and ids.item_ids.tolist() == list(range(7, 57))
    # training on sequences without a sequence file still stops with the fix named
    config["storage"]["sequences"] = None
    with pytest.raises(rqf.ConfigError, match="to read items alone use dataset.type: items"):
        rqf.run(config, force=True)
