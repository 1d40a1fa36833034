"""rqf sweep: every combination of the grid runs into its own folder, one table compares them
(mean and standard deviation over seeds), and a killed sweep started again trains only what
is missing (real processes)."""

from __future__ import annotations

import json
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest

from rqf.testing import one_line_error, pipeline_file, rqf_proc

recsys = pytest.importorskip("rqf_h5_recsys.testing", reason="runs over item files need h5_recsys")
pytest.importorskip("rqf_rqvae", reason="the runs train an rqvae")


def grid_pipeline(tmp_path, recsys_files, **train):
    config = recsys.recsys_pipeline(recsys_files, tmp_path / "runs" / "grid",
                                    train={"epochs": None, "max_steps": 30, **train})
    return pipeline_file(tmp_path, config)


def report_rows(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.split("## Metrics")[1].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 1 and not set(cells[0]) <= {"-"} and cells[0] != "metric":
            rows[cells[0]] = cells[1:]
    return rows


def test_a_sweep_runs_every_combination_and_a_killed_one_trains_only_what_is_missing(
        tmp_path, recsys_files):
    path = grid_pipeline(tmp_path, recsys_files, max_steps=300, checkpoint_every=50)
    sweep_dir = tmp_path / "runs" / "grid_sweep"
    args = [sys.executable, "-m", "rqf", "sweep", str(path), "--grid", "model.levels=2,3",
            "--grid", "model.codebook_size=8,16"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None \
            and len(list(sweep_dir.glob("*/metrics.json"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}
    assert 1 <= len(finished) < 4
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"sweep: keeping {len(finished)} finished run(s) of 4" in again.stderr
    trained = [ln for ln in again.stderr.splitlines() if ln.startswith("sweep: run ")]
    assert len(trained) == 4 - len(finished)
    for name, mtime in finished.items():  # kept as they were
        assert (sweep_dir / name / "metrics.json").stat().st_mtime_ns == mtime
    names = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
    assert names == sorted(f"model.levels={lv},model.codebook_size={cs}"
                           for lv in (2, 3) for cs in (8, 16))
    report = (sweep_dir / "report.md").read_text()
    assert "| 1 | 2 | 8 |" in report and "| 4 | 3 | 16 |" in report
    rows = report_rows(report)
    for i, name in enumerate(f"model.levels={lv},model.codebook_size={cs}"
                             for lv in (2, 3) for cs in (8, 16)):
        metrics = json.loads((sweep_dir / name / "metrics.json").read_text())
        assert float(rows["test.recon_mse"][i]) == pytest.approx(metrics["test"]["recon_mse"],
                                                                 rel=1e-3)


def test_seeds_give_the_mean_and_standard_deviation(tmp_path, recsys_files):
    path = grid_pipeline(tmp_path, recsys_files)
    proc = rqf_proc("sweep", str(path), "--grid", "model.levels=2", "--seeds", "3",
                    "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    values = [json.loads((tmp_path / "s" / f"model.levels=2,seed={s}" / "metrics.json")
                         .read_text())["test"]["recon_mse"] for s in (0, 1, 2)]
    [cell] = report_rows((tmp_path / "s" / "report.md").read_text())["test.recon_mse"]
    mean, sd = (float(x) for x in re.split(r" ± ", cell))
    assert mean == pytest.approx(statistics.mean(values), rel=1e-3)
    assert sd == pytest.approx(statistics.stdev(values), rel=1e-3)
    assert len(set(values)) == 3  # the seeds differ


def test_a_bad_grid_value_is_refused_in_one_line_before_any_run(tmp_path, recsys_files):
    path = grid_pipeline(tmp_path, recsys_files)
    one_line_error(rqf_proc("sweep", str(path), "--grid", "model.levels=2,x"),
                   "rqf sweep: model.levels=x: ", "model.levels: expected int, got 'x'")
    one_line_error(rqf_proc("sweep", str(path), "--grid", "model.levels"),
                   "--grid 'model.levels': expected key.path=value,value")
    one_line_error(rqf_proc("sweep", str(path), "--grid", "model.levels=2",
                            "--set", "storage.items=missing.h5"), "missing.h5")
    assert not (tmp_path / "runs").exists()
