"""The health check sees what the usage plot shows (crowded levels, items moved by collision
handling), a model without checks is "not checked", and the report shows training curves and
compares any number of runs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import rqf
from rqf.codes import code_statistics
from rqf.codes.statistics import code_health
from rqf.testing import (clustered, pipeline_file, real_data, rqf_proc, tiny_pipeline,
                         use_plugins)

recsys = pytest.importorskip("rqf_h5_recsys.testing", reason="runs over item files need h5_recsys")


def spread_codes(n: int, levels: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, size, (n, levels))


def test_evenly_used_codes_are_healthy_and_a_crowded_level_is_not():
    codes = spread_codes(4000, 3, 256)
    stats = code_statistics(codes, 256)
    assert max(stats["largest_code_share"]) < 0.01
    assert code_health({**stats, "moved_share": 0.05}, "reassign") == []
    codes[:1200, 1] = 7  # 30% of the items on one code of level 1, as a short run gives
    stats = code_statistics(codes, 256)
    assert stats["largest_code_share"][1] == pytest.approx(0.3, abs=0.01)
    [warning] = code_health(stats, "reassign", spread_fix="set model.balanced: true")
    assert warning.startswith("codebook level 2: items crowd onto a few codes, one code holds "
                              "30% of them (healthy: at most 10%)")
    assert warning.endswith(": set model.balanced: true")


def test_a_level_with_low_perplexity_and_many_moved_items_are_unhealthy():
    rng = np.random.default_rng(1)
    codes = spread_codes(4000, 3, 256)
    # every code used and none over 4%, but 90% of the items on 30 codes: perplexity ~50
    codes[:3600, 1] = rng.integers(0, 30, 3600)
    codes[3600:, 1] = rng.integers(30, 256, 400)
    stats = code_statistics(codes, 256)
    assert min(stats["utilization"]) > 0.8 and max(stats["largest_code_share"]) < 0.05
    warnings = code_health({**stats, "moved_share": 0.34}, "reassign",
                           more_training="train longer (train.max_steps)")
    assert len(warnings) == 2
    assert "codebook level 2: items crowd onto a few codes, perplexity" in warnings[0]
    assert "of 256 codes (healthy: at least 64)" in warnings[0]
    assert warnings[1].startswith("collision handling moved 34% of items off their nearest "
                                  "codes (above 20%)")
    # tokens: frames sharing a code tuple or moved are no concern
    assert code_health({**stats, "moved_share": 0.34}, "reassign", items=False)[1:] == []


def test_a_small_codebook_is_judged_against_its_own_uniform_share():
    codes = spread_codes(1000, 2, 8)  # 1/8 of the items per code: even, though over 10%
    assert code_health(code_statistics(codes, 8), "reassign", items=False) == []
    codes[:500, 0] = 0  # half on one code: four times the uniform share
    [warning] = code_health(code_statistics(codes, 8), "reassign", items=False)
    assert "codebook level 1: items crowd onto a few codes, one code holds 55% of them " \
           "(healthy: at most 50%)" in warning


def test_health_advice_names_only_keys_the_model_accepts():
    codes = spread_codes(1000, 2, 8)
    codes[:, 1] = 0  # every item on one code of the last level: collisions and crowding
    stats = {**code_statistics(codes, 8), "recon_rel_error": 1.0}
    everything = " ".join(code_health(stats, "suffix"))
    assert "model.collision_handling" in everything and "model.normalize" in everything
    only = " ".join(code_health(stats, "suffix", keys={"levels"}, more_training="more data"))
    assert "model.collision_handling" not in only and "model.normalize" not in only
    assert "model.codebook_size" not in only and "a level more (model.levels)" in only


class Constant(rqf.Model):
    """A model with no health checks: every item gets code 0."""

    name = "constant_codes"
    gradient_free = True
    params = ()

    def fit(self, train, valid, ctx):
        return {}

    def evaluate(self, data, predictions=None):
        return {"n": len(data), "collision_rate": 1.0}

    def export(self, dataset, ctx, predictions=None):
        return {}

    def save(self, path):
        pass

    @classmethod
    def load(cls, path, device="auto"):
        raise NotImplementedError


@rqf.hookimpl
def register_models(register):
    register(Constant)


def memory_storage(n: int = 120) -> dict:
    vectors = clustered(n, 8, 6)
    return {"type": "memory_items", "item_ids": list(range(n)), "embeddings": vectors.tolist()}


def test_a_model_without_checks_is_not_checked_never_healthy(tmp_path, capsys):
    config = tiny_pipeline(tmp_path / "run", memory_storage(), {"type": "constant_codes"})
    with use_plugins(sys.modules[__name__]):
        result = rqf.run(config, echo=print)
    assert result.metrics["health"] == {"checked": False, "healthy": None, "warnings": []}
    assert "health: not checked (model 'constant_codes' has no checks)" in capsys.readouterr().out
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Not checked: the model has no health checks." in report and "Healthy" not in report
    config_section = report[report.index("## Config"):]
    assert "\ntrain:" not in config_section and "\nmodel:" in config_section  # it does not train


def test_the_report_keeps_loss_and_validation_by_step_across_a_resume(tmp_path, recsys_files):
    config = recsys.recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                                    splitter={"type": "leave_last_out"})
    config["model"] = {"type": "rqvae", "levels": 2, "codebook_size": 8, "latent_dim": 4,
                       "hidden_dims": [16]}
    config["train"] = {"max_steps": 20, "batch_size": 32, "log_every": 5, "eval_every": 10,
                       "checkpoint_every": 10, "progress": False}
    rqf.run(config)
    config["train"]["max_steps"] = 40
    fit = rqf.run(config, resume=True).metrics["fit"]
    assert [r["step"] for r in fit["losses"]] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all(r["loss"] > 0 and "recon" in r for r in fit["losses"])
    assert [r["step"] for r in fit["history"]] == [10, 20, 30, 40]
    report = (tmp_path / "run" / "report.md").read_text()
    training = report[report.index("## Training"):report.index("## Plots")]
    assert "![training curves](training_curves.png)" in training
    assert f"| 40 | {fit['losses'][-1]['loss']:.4g} |" in training
    assert "| split | users | items coded |" in report
    png = (tmp_path / "run" / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    marker = json.loads((tmp_path / "run" / ".rqf-run.json").read_text())
    assert "training_curves.png" in json.dumps(marker)  # claimed: --force may remove it


def test_report_of_three_runs_opens_with_what_differs(tmp_path, recsys_files):
    runs = []
    for name, size in (("a", 4), ("b", 8), ("c", 8)):
        config = recsys.recsys_pipeline(recsys_files, tmp_path / name)
        config["model"] = {"type": "rqkmeans", "levels": 2, "codebook_size": size}
        config["seed"] = 1 if name == "c" else 0
        rqf.run(pipeline_file(tmp_path, config, f"{name}.yaml"))
        runs.append(str(tmp_path / name))
    proc = rqf_proc("report", *runs)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("## What differs in their configs") < out.index("## Metrics")
    assert "| model.codebook_size | 4 | 8 | 8 |" in out
    assert "| seed | 0 | 0 | 1 |" in out
    assert "output_dir" not in out.split("## Metrics")[0]
    assert "| all.codebook_size | 4 | 8 | 8 |" in out and "difference" not in out
    missing = rqf_proc("report", runs[0], str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not an rqf run directory" in missing.stderr


def test_default_rqkmeans_is_healthy_on_real_items_where_plain_levels_crowd(tmp_path):
    """ml100k's 1,682 movies: plain residual k-means puts over 15% of them on one level-1 code
    (the health check says so and names the fix); the default, balanced levels, is healthy."""
    items = real_data("ml100k") / "item_data.h5"

    def run(name, **model):
        config = {"output_dir": str(tmp_path / name), "storage": {"type": "h5_recsys",
                                                                   "items": str(items)},
                  "dataset": {"type": "items"}, "splitter": {"type": "index"},
                  "model": {"type": "rqkmeans", **model}, "export": {"plots": False}}
        return rqf.run(config, echo=lambda m: None).metrics

    plain = run("plain", balanced=False)
    [warning, *_] = plain["health"]["warnings"]
    # levels are counted from 1 in messages: the second level is the table's second column
    assert warning.startswith("codebook level 2: items crowd onto a few codes, one code holds")
    assert warning.endswith(": set model.balanced: true")
    assert plain["all"]["largest_code_share"][1] > 0.15
    default = run("default")
    assert default["health"] == {"checked": True, "healthy": True, "warnings": []}
    assert max(default["all"]["largest_code_share"]) < 0.02
    assert min(default["all"]["perplexity"]) > 0.9 * 256
