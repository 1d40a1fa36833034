"""Trackers: a run reports its config, losses, validations, final metrics and files to
TensorBoard, MLflow or a plugin's tracker, read back here from what they wrote; each
validation prints one line as it happens; a model that does not train saves no train section."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import yaml

import rqf
from rqf.testing import pipeline_file, rqf_proc, use_plugins
from rqf.tracking import Tracker, flat_numbers, mlflow_key

recsys = pytest.importorskip("rqf_h5_recsys.testing", reason="runs over item files need h5_recsys")
pytest.importorskip("rqf_rqvae", reason="the runs train an rqvae")


def tracked_run(tmp_path: Path, recsys_files, trackers, **train):
    config = recsys.recsys_pipeline(recsys_files, tmp_path / "runs" / "tracked", train={
        "epochs": None, "max_steps": 30, "eval_every": 10, "log_every": 5, "trackers": trackers,
        "monitor": "valid_recon_mse", "monitor_mode": "min", **train})
    return config, pipeline_file(tmp_path, config)


def same_points(got, expected) -> bool:
    return [s for s, _ in got] == [s for s, _ in expected] and \
        [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)


def final_metrics(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return flat_numbers({k: v for k, v in metrics.items() if k not in ("fit", "artifacts")})


def test_tensorboard_and_mlflow_hold_what_metrics_json_holds(tmp_path, recsys_files,
                                                            monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own reader of its store
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, path = tracked_run(tmp_path, recsys_files, ["tensorboard", "mlflow"])
    proc = rqf_proc("run", str(path))
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "tracked"
    metrics = json.loads((run / "metrics.json").read_text())
    final = final_metrics(run)
    assert final["test/recon_mse"] == metrics["test"]["recon_mse"]
    # TensorBoard: event files in the run folder, every loss read-out, validation and metric
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert same_points(losses, [(r["step"], r["loss"]) for r in metrics["fit"]["losses"]])
    valid = [(e.step, e.value) for e in events.Scalars("valid/valid_recon_mse")]
    assert same_points(valid, [(r["step"], r["valid_recon_mse"])
                               for r in metrics["fit"]["history"]])
    for key, value in final.items():
        assert events.Scalars(f"final/{key}")[-1].value == pytest.approx(value, rel=1e-6)
    # MLflow: a file store beside the run folder, one run, the same values
    client = MlflowClient((tmp_path / "runs" / "mlruns").as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "tiny"]
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "tracked"
    assert found.data.params["model.levels"] == "2" and found.data.params["train.max_steps"] == "30"
    logged = found.data.metrics
    for key, value in final.items():
        assert logged[mlflow_key(key)] == pytest.approx(value, rel=1e-6), key
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert same_points([(m.step, m.value) for m in history], losses)
    files = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "metrics.json", "report.md"} <= files
    # a validation line each time, as it happens
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("validation at step")]
    assert [ln.split(":")[0] for ln in lines] == [f"validation at step {s}/30 ({ln.split('(')[1]}"
                                                 .split(":")[0] for s, ln in
                                                 zip((10, 20, 30), lines)]
    assert "valid_recon_mse" in lines[0] and "(best " in lines[-1]


class Recorder(Tracker):
    """A third party's tracker: writes every call as a JSON line to ``path``."""

    name = "recorder"
    params = (rqf.Param("path", str, help="where the calls go"),)

    def _write(self, *record) -> None:
        with open(self.config["path"], "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")

    def start(self, name, config, resumed_from):
        self._write("start", name, config["model"]["type"], resumed_from)

    def log_losses(self, step, values):
        self._write("losses", step, values)

    def log_validation(self, step, values):
        self._write("validation", step, values)

    def log_metrics(self, metrics, step):
        self._write("metrics", step, metrics)

    def log_files(self, paths):
        self._write("files", sorted(Path(p).name for p in paths))

    def finish(self, ok):
        self._write("finish", ok)


class Broken(Tracker):
    name = "broken"

    def log_losses(self, step, values):
        raise OSError("dashboard unreachable")


def plugin_module():
    module = types.ModuleType("rqf_recorder")

    @rqf.hookimpl
    def register_trackers(register):
        register(Recorder)
        register(Broken)

    module.register_trackers = register_trackers
    return module


def test_a_plugins_tracker_gets_every_call_and_a_broken_one_never_stops_the_run(
        tmp_path, recsys_files):
    calls = tmp_path / "calls.jsonl"
    config, _ = tracked_run(tmp_path, recsys_files, [{"type": "recorder", "path": str(calls)},
                                                      "broken"])
    said = []
    with use_plugins(plugin_module()):
        rqf.run(config, echo=said.append)
    records = [json.loads(line) for line in calls.read_text().splitlines()]
    assert records[0] == ["start", "tiny", "rqvae", None]
    assert records[-1] == ["finish", True]
    metrics = json.loads((tmp_path / "runs" / "tracked" / "metrics.json").read_text())
    assert [r[1:] for r in records if r[0] == "losses"] == \
        [[r["step"], {k: v for k, v in r.items() if k != "step"}] for r in metrics["fit"]["losses"]]
    assert [r[1] for r in records if r[0] == "validation"] == [10, 20, 30]
    [(_, step, final)] = [r for r in records if r[0] == "metrics"]
    assert step == 30 and final == final_metrics(tmp_path / "runs" / "tracked")
    [(_, files)] = [r for r in records if r[0] == "files"]
    run = tmp_path / "runs" / "tracked"
    assert {"config.yaml", "metrics.json", "report.md"} <= set(files)
    assert set(files) - {"config.yaml", "metrics.json", "report.md"} == \
        {p.name for p in run.glob("*.png")}
    broken = [s for s in said if "tracker broken" in s]
    assert broken == ["warning: tracker broken failed in log_losses and is left out "
                      "(OSError: dashboard unreachable)"]


def test_an_unknown_tracker_is_a_one_line_config_error(tmp_path, recsys_files):
    _, path = tracked_run(tmp_path, recsys_files, ["tensorbord"])
    proc = rqf_proc("validate", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {path}: train.trackers[0]: unknown tracker "
                                   "'tensorbord'; did "
                                   "you mean 'tensorboard'? (available: mlflow, tensorboard, "
                                   "wandb)")
    assert not (tmp_path / "runs").exists()


def test_a_resumed_run_keeps_its_event_files_and_adds_to_them(tmp_path, recsys_files):
    pytest.importorskip("tensorboard")
    config, path = tracked_run(tmp_path, recsys_files, ["tensorboard"])
    assert rqf_proc("run", str(path)).returncode == 0
    run = tmp_path / "runs" / "tracked"
    first = sorted(p.name for p in (run / "tensorboard").iterdir())
    proc = rqf_proc("run", str(path), "--resume", "--set", "train.max_steps=40")
    assert proc.returncode == 0, proc.stderr
    after = sorted(p.name for p in (run / "tensorboard").iterdir())
    assert set(first) < set(after)
    proc = rqf_proc("run", str(path), "--force")  # --force clears them with the rest
    assert proc.returncode == 0, proc.stderr
    assert len(list((run / "tensorboard").iterdir())) == 1


def test_a_model_that_does_not_train_saves_no_train_section_and_reports_compare_what_counts(
        tmp_path, recsys_files):
    pytest.importorskip("rqf_rqkmeans")
    kmeans = recsys.recsys_pipeline(recsys_files, tmp_path / "kmeans",
                                    model={"type": "rqkmeans", "levels": 2, "codebook_size": 16})
    trained = recsys.recsys_pipeline(recsys_files, tmp_path / "rqvae", train={"max_steps": 20})
    for name, config in (("k.yaml", kmeans), ("r.yaml", trained)):
        assert rqf_proc("run", str(pipeline_file(tmp_path, config, name))).returncode == 0
    saved = yaml.safe_load((tmp_path / "kmeans" / "config.yaml").read_text())
    assert "train" not in saved and "train" in yaml.safe_load(
        (tmp_path / "rqvae" / "config.yaml").read_text())
    proc = rqf_proc("report", str(tmp_path / "kmeans"), str(tmp_path / "rqvae"))
    assert proc.returncode == 0, proc.stderr
    differs = proc.stdout.split("## Metrics")[0]
    assert "model.type" in differs and "train." not in differs


def test_threads_are_set_by_the_pipeline_unless_the_command_line_says_otherwise(
        tmp_path, recsys_files):
    config = recsys.recsys_pipeline(recsys_files, tmp_path / "run", train={"max_steps": 5,
                                                                           "threads": 1})
    path = pipeline_file(tmp_path, config)
    probe = ("import sys, torch; from rqf.cli import main; sys.argv = ['rqf'] + sys.argv[1:];\n"
             "try: main()\nexcept SystemExit: pass\nprint('threads', torch.get_num_threads())")
    import subprocess
    import sys

    def threads(*args):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                              text=True, timeout=300)
        assert "threads " in proc.stdout, proc.stderr
        return int(proc.stdout.split("threads ")[-1])

    assert threads("run", str(path)) == 1
    assert threads("--threads", "2", "run", str(path), "--force") == 2
    bad = rqf_proc("--threads", "none", "plugins")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --threads: expected auto or a positive whole number, got 'none'")


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (LevelDB-style log: 32 KiB blocks of
    checksum, length, type, data), as W&B's own protobuf messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    buf, pos, out, chunk = path.read_bytes(), 7, [], b""  # 7: the ":W&B" file header
    while pos + 7 <= len(buf):
        left = 32768 - pos % 32768
        kind = buf[pos + 6] if left >= 7 else 0
        if kind == 0:  # a block's zero padding
            pos += left
            continue
        length = int.from_bytes(buf[pos + 4:pos + 6], "little")
        chunk += buf[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last part of one
            record = pb.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def test_wandb_offline_holds_what_metrics_json_holds(tmp_path, recsys_files):
    pytest.importorskip("wandb")
    import os
    import subprocess
    import sys

    _, path = tracked_run(tmp_path, recsys_files, ["wandb"])
    proc = subprocess.run([sys.executable, "-m", "rqf", "run", str(path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline",
                                                       "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "runs" / "tracked" / "metrics.json").read_text())
    [run_file] = (tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    logged: dict[tuple[str, int], float] = {}
    summary: dict[str, float] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}
            for key, value in items.items():
                if not key.startswith("_"):
                    logged[key, items["_step"]] = value
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.summary.update})
    for row in metrics["fit"]["losses"]:
        assert logged["train/loss", row["step"]] == pytest.approx(row["loss"], rel=1e-6)
    for row in metrics["fit"]["history"]:
        assert logged["valid/valid_recon_mse", row["step"]] == \
            pytest.approx(row["valid_recon_mse"], rel=1e-6)
    for key, value in final_metrics(tmp_path / "runs" / "tracked").items():
        assert summary[key] == pytest.approx(value, rel=1e-6), key
