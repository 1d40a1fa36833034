"""A default the catalogue cannot fill is fitted to it before training, in one line kept in the
run's config.yaml; a value the pipeline sets is the user's and stays."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import rqf
from rqf.codes import SemanticIds
from rqf.testing import clustered, pipeline_file, rqf_proc

pytest.importorskip("rqf_h5_recsys", reason="the data is h5_recsys's")
pytest.importorskip("rqf_rqkmeans", reason="the tokenizer is rqkmeans")
from rqf_h5_recsys.testing import write_seed_items  # noqa: E402


def small_catalogue(tmp_path, n=300):
    return write_seed_items(tmp_path / "item_data.h5", np.arange(1, n + 1), clustered(n, 16, 8))


def config(tmp_path, items, name, **model):
    return {"name": name, "output_dir": str(tmp_path / name),
            "storage": {"type": "h5_recsys", "items": str(items)}, "dataset": "items",
            "splitter": {"type": "index", "test_ratio": 0.1},
            "model": {"type": "rqkmeans", **model},
            "train": {"progress": False, "max_steps": 6, "batch_size": 64,
                      "checkpoint_every": 3}}


def test_a_default_codebook_the_catalogue_cannot_fill_is_made_smaller_in_one_line(tmp_path):
    items = small_catalogue(tmp_path)
    proc = rqf_proc("run", str(pipeline_file(tmp_path, config(tmp_path, items, "fitted"))))
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("model.codebook_size")]
    assert line == ["model.codebook_size: 64, not the default 256: 300 items give under 4 "
                    "items a code at 256 (set model.codebook_size to keep 256)"]
    saved = yaml.safe_load((tmp_path / "fitted" / "config.yaml").read_text())
    assert saved["model"]["codebook_size"] == 64
    ids = SemanticIds(tmp_path / "fitted" / "semantic_ids.h5")
    assert ids.codes.max() < 64
    assert "unhealthy" not in proc.stderr
    # validate says the same before anything runs
    check = rqf_proc("validate", str(pipeline_file(tmp_path, config(tmp_path, items, "v"))))
    assert "model.codebook_size: 64, not the default 256" in check.stdout


def test_a_codebook_size_the_pipeline_sets_is_kept(tmp_path, capsys):
    items = small_catalogue(tmp_path)
    rqf.run(config(tmp_path, items, "kept", codebook_size=256))
    assert "model.codebook_size: 64" not in capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / "kept" / "config.yaml").read_text())
    assert saved["model"]["codebook_size"] == 256
    assert SemanticIds(tmp_path / "kept" / "semantic_ids.h5").codes.max() >= 64
    # a catalogue that fills the default is not touched
    big = write_seed_items(tmp_path / "big.h5", np.arange(1, 1101), clustered(1100, 16, 8))
    rqf.run(config(tmp_path, big, "big"))
    saved = yaml.safe_load((tmp_path / "big" / "config.yaml").read_text())
    assert saved["model"]["codebook_size"] == 256


def test_a_fitted_run_resumes_from_the_same_pipeline(tmp_path):
    pytest.importorskip("rqf_rqvae", reason="a run with a gradient loop to resume")
    items = small_catalogue(tmp_path)
    cfg = config(tmp_path, items, "vae", latent_dim=8, hidden_dims=[32], levels=2)
    cfg["model"]["type"] = "rqvae"
    path = pipeline_file(tmp_path, cfg)
    assert rqf_proc("run", str(path)).returncode == 0
    cfg["train"]["max_steps"] = 9
    proc = rqf_proc("run", str(pipeline_file(tmp_path, cfg)), "--resume")
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((tmp_path / "vae" / "config.yaml").read_text())
    assert saved["model"]["codebook_size"] == 64 and saved["train"]["max_steps"] == 9
