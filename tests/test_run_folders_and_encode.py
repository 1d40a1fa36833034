"""Run folders and rqf encode: --force and --resume touch only what rqf wrote, every check
runs before the first change, and encode never writes over what it reads; real processes."""

from __future__ import annotations

import json
import sys

import h5py
import torch

from rqf.testing import one_line_error, pipeline_file, rqf_proc
from rqf_h5_recsys.testing import recsys_pipeline

PYTHON = sys.executable


# --- --force deletes only what rqf wrote ----------------------------------------------------

def test_force_never_deletes_a_user_folder_that_looks_like_a_run(tmp_path, recsys_files):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: settings\n")
    (mine / "data.csv").write_text("a,b\n1,2\n")
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, mine))
    for flags in (["--force"], ["--resume"], []):
        one_line_error(rqf_proc("run", str(path), *flags), "is not an rqf run directory")
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "data.csv"]
    assert (mine / "config.yaml").read_text() == "my: settings\n"


def test_force_replaces_a_run_and_keeps_what_the_user_put_in_it(tmp_path, recsys_files):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run))
    assert rqf_proc("run", str(path)).returncode == 0
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / ".step_00000009.pt.abc.tmp").write_bytes(b"x")  # left by a kill
    old = (run / "semantic_ids.h5").stat().st_mtime_ns
    proc = rqf_proc("run", str(path), "--force")
    assert proc.returncode == 0, proc.stderr
    assert "kept notes.txt" in proc.stderr
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "semantic_ids.h5").stat().st_mtime_ns != old
    assert not list(run.rglob("*.tmp"))


# --- resume refuses changes to what was trained ---------------------------------------------

def test_resume_refuses_a_change_that_alters_training_and_keeps_every_file(tmp_path, recsys_files):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run, train={
        "epochs": None, "max_steps": 12, "batch_size": 32, "progress": False,
        "checkpoint_every": 4}))
    assert rqf_proc("run", str(path)).returncode == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for change, fragment in ((["--set", "train.batch_size=64"], "train.batch_size is 64"),
                             (["--set", "train.lr=0.01"], "train.lr is 0.01"),
                             (["--set", "train.max_steps=8"], "would shorten the budget"),
                             ([], "already finished")):
        one_line_error(rqf_proc("run", str(path), "--resume", *change), fragment)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # lengthening the budget continues from the last checkpoint and redoes the results
    proc = rqf_proc("run", str(path), "--resume", "--set", "train.max_steps=20",
                    "--set", "train.log_every=5")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit"]["resumed_from"] == 12 and metrics["fit"]["steps"] == 20


def test_a_refused_resume_leaves_the_finished_run_as_it_was(tmp_path, recsys_files):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run, train={
        "epochs": None, "max_steps": 12, "batch_size": 32, "progress": False,
        "checkpoint_every": 4}))
    assert rqf_proc("run", str(path)).returncode == 0
    latest = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    payload = torch.load(latest, weights_only=True)
    payload["extra"]["architecture"] = "another network"
    torch.save(payload, latest)
    longer = ["--resume", "--set", "train.max_steps=20"]
    for damage, fragment in ((None, "checkpoint was made with architecture="),
                             (b"\x00 not a checkpoint", "not a readable rqf checkpoint")):
        if damage is not None:
            latest.write_bytes(damage)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        one_line_error(rqf_proc("run", str(path), *longer), fragment)
        # the refusal came before the first change: results, report, config all as they were
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
        assert (run / "metrics.json").exists() and (run / "report.md").exists()


def test_force_removes_only_rqf_files_inside_its_folders(tmp_path, recsys_files, speech_cache):
    from rqf_h5_speech.testing import speech_pipeline

    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run, train={
        "epochs": 2, "checkpoint_every": 1, "progress": False}))
    assert rqf_proc("run", str(path)).returncode == 0
    (run / "checkpoints" / "my_notes.txt").write_text("mine")
    old = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    proc = rqf_proc("run", str(path), "--force", "--set", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert "kept checkpoints/my_notes.txt" in proc.stderr
    assert (run / "checkpoints" / "my_notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) != old

    speech = tmp_path / "speech_run"
    speech_path = pipeline_file(tmp_path, speech_pipeline(speech_cache, speech), "speech.yaml")
    assert rqf_proc("run", str(speech_path)).returncode == 0
    (speech / "codes" / "listening_notes.txt").write_text("mine too")
    before = {p: p.read_bytes() for p in speech.rglob("*") if p.is_file()}
    one_line_error(rqf_proc("run", str(speech_path), "--force"),
                   "codes/listening_notes.txt was not written by rqf", "move it out first")
    assert {p: p.read_bytes() for p in speech.rglob("*") if p.is_file()} == before
    (speech / "codes" / "listening_notes.txt").unlink()
    assert rqf_proc("run", str(speech_path), "--force").returncode == 0


def test_a_marker_that_claims_a_users_file_is_refused(tmp_path, recsys_files):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run))
    assert rqf_proc("run", str(path)).returncode == 0
    (run / "thesis.docx").write_text("four years of work")
    marker = json.loads((run / ".rqf-run.json").read_text())
    marker["claims"].append("thesis.docx")
    (run / ".rqf-run.json").write_text(json.dumps(marker))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for flags in (["--force"], ["--resume", "--set", "train.epochs=9"]):
        one_line_error(rqf_proc("run", str(path), *flags), "claims 'thesis.docx', which rqf "
                       "never writes")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_encode_never_writes_over_what_it_reads_or_an_existing_file(tmp_path, recsys_files):
    run = tmp_path / "run"
    assert rqf_proc("run", str(pipeline_file(tmp_path, recsys_pipeline(recsys_files, run)))) \
        .returncode == 0
    items = recsys_files["items"]
    original = items.read_bytes()
    link = tmp_path / "link.h5"
    link.symlink_to(items)
    new_data = ["--set", f"storage.items={items}", "--set", "storage.sequences=null"]
    for out in (items, link):
        one_line_error(rqf_proc("encode", str(run), *new_data, "--out", str(out), "--force"),
                       "the pipeline reads", "(storage.items)")
    assert items.read_bytes() == original
    one_line_error(rqf_proc("encode", str(run), "--set", "model.levels=5", "--out",
                            str(tmp_path / "ids.h5")), "--set model.levels", "only the data")
    assert not (tmp_path / "ids.h5").exists()
    mine = tmp_path / "mine.h5"
    mine.write_text("a user's file")
    one_line_error(rqf_proc("encode", str(run), "--out", str(mine)), "exists; pass --force")
    assert mine.read_text() == "a user's file"
    proc = rqf_proc("encode", str(run), "--out", str(mine), "--force")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(mine) as f:
        assert f["codes"].shape == (300, 2)
