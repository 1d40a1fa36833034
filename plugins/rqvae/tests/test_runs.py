"""rqvae runs over item files: the step budget, one pass after training, health warnings,
checkpoints by time and resume."""

import json

import h5py
import numpy as np
import pytest

import rqf
from rqf.codes import SemanticIds
from rqf_rqvae import RQVAEModel

recsys = pytest.importorskip("rqf_h5_recsys.testing", reason="runs over item files need h5_recsys")
recsys_pipeline, write_seed_items = recsys.recsys_pipeline, recsys.write_seed_items


# --- the step budget -------------------------------------------------------------------------


def test_model_budget_applies_when_the_user_sets_none(recsys_files, tmp_path):
    from rqf.pipeline import resolve_config

    config = recsys_pipeline(recsys_files, tmp_path / "run")
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
    config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                           splitter={"type": "leave_last_out"})
    result = rqf.run(config)
    assert calls == {"encoder_rows": 300, "decoder_rows": 300}  # 300 items in the file
    for role in ("train", "valid", "test", "all"):
        assert result.metrics[role]["n"] > 0


def test_split_metrics_equal_a_direct_evaluation(recsys_files, tmp_path):
    result = rqf.run(recsys_pipeline(recsys_files, tmp_path / "run",
                                   model={"collision_handling": "suffix"}))
    model = RQVAEModel.load(tmp_path / "run" / "model.pt", device="cpu")
    model.config["collision_handling"] = "suffix"
    with h5py.File(recsys_files["items"]) as f:
        emb = f["embeddings"][()]
    rows = np.flatnonzero(np.isin(np.arange(101, 401), np.arange(101, 401)))
    direct = model.metrics(model.code_rows(lambda a, b: emb[rows][a:b], len(rows)))
    assert result.metrics["all"]["recon_mse"] == pytest.approx(direct["recon_mse"], rel=1e-5)
    assert result.metrics["all"]["utilization"] == direct["utilization"]


def test_collapsed_run_warns_in_one_line_and_in_its_report(recsys_files, tmp_path, capsys):
    config = recsys_pipeline(recsys_files, tmp_path / "run",
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
    result = rqf.run(recsys_pipeline(recsys_files, tmp_path / "run",
                                     model={"codebook_size": 32, "levels": 3},
                                     train={"epochs": 20}))
    assert result.metrics["health"] == {"checked": True, "healthy": True, "warnings": []}
    assert result.metrics["all"]["moved_share"] < 0.2
    assert result.metrics["all"]["collision_rate"] == 0.0
    with h5py.File(tmp_path / "run" / "semantic_ids.h5") as f:
        assert f.attrs["collision_handling"] == "reassign"
        assert f["raw_codes"].shape == f["codes"].shape


# --- checkpoints by steps, by time and at the end ---------------------------------------------


def test_a_short_run_writes_only_its_final_checkpoint(recsys_files, tmp_path):
    config = recsys_pipeline(recsys_files, tmp_path / "run",
                           train={"max_steps": 20, "epochs": None, "checkpoint_every": 1000,
                                  "keep_checkpoints": 50})
    rqf.run(config)
    steps = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == [20]  # within checkpoint_minutes and checkpoint_every: nothing in between
    config = recsys_pipeline(recsys_files, tmp_path / "every", train={
        "max_steps": 20, "epochs": None, "checkpoint_every": 8, "keep_checkpoints": 50})
    rqf.run(config)
    steps = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "every" / "checkpoints").iterdir())
    assert steps == [8, 16, 20]


def test_checkpoints_by_time(recsys_files, tmp_path):
    config = recsys_pipeline(recsys_files, tmp_path / "run",
                           train={"max_steps": 7, "epochs": None, "checkpoint_every": 0,
                                  "keep_checkpoints": 50, "checkpoint_minutes": 1e-9})
    rqf.run(config)
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 7


def test_resume_without_a_checkpoint_says_so(recsys_files, tmp_path):
    config = recsys_pipeline(recsys_files, tmp_path / "run")
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
    config = recsys_pipeline(recsys_files, tmp_path / "run", train={"checkpoint_every": 5})
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
    config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
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
