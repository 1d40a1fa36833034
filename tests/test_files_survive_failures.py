"""Nothing lost: one writer per folder, --force and --resume that keep what is not rqf's,
resumable exports, full disks and hostile inputs, run as real processes where it matters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from rqf_h5_recsys.testing import recsys_pipeline, write_seed_items
from rqf_h5_speech.testing import speech_pipeline

PYTHON = sys.executable


def rqf_proc(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "rqf", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The process failed with exit 2 and a single ``error:`` line holding every fragment."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


def pipeline_file(tmp_path: Path, config: dict, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def killed_after(n: int, module: str, attribute: str) -> str:
    """Python that runs ``rqf`` with ``module.attribute`` (a function or method path) made to
    SIGKILL the process on its (n+1)-th call: a kill at a known point of a real run."""
    owner, _, name = attribute.rpartition(".")
    target = f"m.{owner}" if owner else "m"
    return textwrap.dedent(f"""
        import os, signal, sys
        import {module} as m
        owner = eval({target!r}, {{"m": m}})
        original = getattr(owner, {name!r})
        calls = [0]
        def patched(*args, **kwargs):
            calls[0] += 1
            if calls[0] > {n}:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        setattr(owner, {name!r}, patched)
        from rqf.cli import main
        main(sys.argv[1:])
    """)


# --- one writer per cache, as real processes ------------------------------------------------

HOLD_WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from rqf_h5_speech import ShardedCacheWriter
    w = ShardedCacheWriter(sys.argv[1], samples_per_file=4, num_workers=0)
    for i in range(6):
        w.write(f"a/{i}", {"hidden_states": np.full((5, 8), i, np.float32)})
    w.commit()
    print("holding", flush=True)
    time.sleep(600)
""")

SECOND_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from rqf.errors import RqfError
    from rqf_h5_speech import ShardedCacheWriter
    try:
        w = ShardedCacheWriter(sys.argv[1], samples_per_file=4, num_workers=0)
    except RqfError as exc:
        print(exc)
        sys.exit(2)
    for i in range(3):
        w.write(f"b/{i}", {"hidden_states": np.full((5, 8), 10 + i, np.float32)})
    w.close()
    print("wrote")
""")


def test_a_second_writer_is_refused_while_the_first_lives_and_taken_after_a_kill(tmp_path):
    from rqf_h5_speech import H5ShardedStorage

    cache = tmp_path / "cache"
    first = subprocess.Popen([PYTHON, "-c", HOLD_WRITER, str(cache)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline().strip() == "holding"
        second = subprocess.run([PYTHON, "-c", SECOND_WRITER, str(cache)], capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 2
        assert f"another cache writer is writing here (process {first.pid} on" in second.stdout
        with H5ShardedStorage(str(cache)) as storage:  # readers are never blocked
            assert storage.keys == [f"a/{i}" for i in range(6)]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the OS dropped the lock with the killed holder: the next writer goes on, nothing lost
    after = subprocess.run([PYTHON, "-c", SECOND_WRITER, str(cache)], capture_output=True,
                           text=True, timeout=60)
    assert after.returncode == 0 and "wrote" in after.stdout, after.stdout + after.stderr
    with H5ShardedStorage(str(cache)) as storage:
        assert sorted(storage.keys) == sorted([f"a/{i}" for i in range(6)] +
                                              [f"b/{i}" for i in range(3)])
        assert storage.read("a/5")["hidden_states"].max() == 5
        assert storage.read("b/2")["hidden_states"].max() == 12


def test_two_runs_on_one_folder_one_is_refused(tmp_path, recsys_files):
    config = recsys_pipeline(recsys_files, tmp_path / "run", train={"epochs": 400, "batch_size": 64,
                                                                  "progress": False})
    path = pipeline_file(tmp_path, config)
    first = subprocess.Popen([PYTHON, "-m", "rqf", "run", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / ".rqf-run.lock.holder").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        for flags in (["--resume"], [], ["--force"]):  # never "pass --resume" to a live run
            second = rqf_proc("run", str(path), *flags)
            one_line_error(second, "another rqf run is writing here", f"process {first.pid}")
    finally:
        first.kill()
        first.wait()


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


# --- an export killed half-way is redone on --resume, without training again ---------------

def test_speech_export_killed_half_way_is_redone_on_resume(tmp_path, speech_cache):
    from rqf_h5_speech import H5ShardedStorage

    run = tmp_path / "run"
    path = pipeline_file(tmp_path, speech_pipeline(speech_cache, run))
    killed = subprocess.run([PYTHON, "-c", killed_after(3, "rqf_h5_speech.datasets",
                                                        "CodesWriter.write"), "run", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "codes").exists() and (run / "codes.partial").is_dir()  # never half
    assert not (run / "metrics.json").exists()
    proc = rqf_proc("run", str(path), "--resume")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit"]["resumed_from"] == metrics["fit"]["steps"]  # no step trained again
    assert not (run / "codes.partial").exists()
    with H5ShardedStorage(str(run / "codes")) as tokens:
        assert len(tokens.keys) == 12
        assert tokens.read("3/2")["semantic_codes"].shape == (37, 2)


def test_item_export_killed_half_way_is_redone_on_resume(tmp_path, recsys_files):
    from rqf.codes import SemanticIds

    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run))
    killed = subprocess.run([PYTHON, "-c", killed_after(0, "rqf.codes.tokenizer", "plot_usage"),
                             "run", str(path)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (run / "semantic_ids.h5").exists() and not (run / "metrics.json").exists()
    proc = rqf_proc("run", str(path), "--resume")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit"]["resumed_from"] == metrics["fit"]["steps"]
    assert len(SemanticIds(run / "semantic_ids.h5").item_ids) == 300


# --- a full disk: one line, no half file, nothing committed lost ----------------------------

def _small_disk_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"],
                           capture_output=True)
    return probe.returncode == 0


needs_small_disk = pytest.mark.skipif(not _small_disk_works(),
                                      reason="cannot mount a small tmpfs (user namespaces)")


def on_small_disk(mount: Path, size: str, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with a ``size`` tmpfs mounted on ``mount``, in a private namespace."""
    mount.mkdir(exist_ok=True)
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           f"mount -t tmpfs -o size={size} tmpfs {mount} && {script}"],
                          capture_output=True, text=True, timeout=300)


@needs_small_disk
def test_full_disk_during_a_checkpoint_is_one_line(tmp_path, recsys_files):
    disk = tmp_path / "disk"
    config = recsys_pipeline(recsys_files, disk / "run", model={"hidden_dims": [1024, 1024]})
    path = pipeline_file(tmp_path, config)
    proc = on_small_disk(disk, "1m", f"{PYTHON} -m rqf run {path}; echo rc=$?; "
                                     f"find {disk}/run -name '*.tmp'")
    assert "rc=2" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: no space left on device while writing {disk}/run/checkpoints/step_")
    assert ".tmp" not in proc.stdout  # no half checkpoint left


@needs_small_disk
def test_full_disk_while_writing_a_cache_keeps_every_committed_sample(tmp_path):
    source = tmp_path / "npz"
    source.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        np.savez(source / f"u{i:02d}.npz",
                 hidden_states=rng.normal(size=(200, 256)).astype(np.float32))
    disk = tmp_path / "disk"
    proc = on_small_disk(disk, "400k", f"{PYTHON} -m rqf speech migrate {source} {disk}/c "
                                       f"--samples-per-file 2 --no-verify; echo rc=$?; "
                                       f"ls -A {disk}/c; {PYTHON} -m rqf inspect {disk}/c --full;"
                                       f" echo inspect=$?")
    assert "rc=2" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no space left on device while writing {disk}/c"), last
    assert ".partial" not in proc.stdout  # the shard being filled went with the failure
    assert "inspect=0" in proc.stdout  # every committed sample still reads
    assert "samples: 0" not in proc.stdout


@needs_small_disk
def test_full_disk_while_exporting_ids_or_tokens_is_one_line(tmp_path, recsys_files, speech_cache):
    run = tmp_path / "run"
    assert rqf_proc("run", str(pipeline_file(tmp_path, recsys_pipeline(recsys_files, run)))) \
        .returncode == 0
    speech_run = tmp_path / "speech_run"
    assert rqf_proc("run", str(pipeline_file(tmp_path, speech_pipeline(speech_cache, speech_run),
                                             "speech.yaml"))).returncode == 0
    disk = tmp_path / "disk"
    proc = on_small_disk(disk, "8k", f"{PYTHON} -m rqf rqvae encode {run} --out {disk}/ids.h5; "
                                     f"echo rc=$?; {PYTHON} -m rqf rqvae encode {speech_run} "
                                     f"--out {disk}/codes; echo rc=$?; ls -A {disk}")
    assert proc.stdout.count("rc=2") == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors[0] == f"error: no space left on device while writing {disk}/ids.h5"
    assert errors[1].startswith(f"error: no space left on device while writing {disk}/codes")
    listing = proc.stdout.split("rc=2")[-1].split()
    assert "ids.h5" not in listing and "codes" not in listing  # no half file under either name


# --- the pipeline file and the run's saved config -------------------------------------------

def test_absurd_values_are_refused_before_the_run_folder_exists(tmp_path, recsys_files):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run))
    one_line_error(rqf_proc("run", str(path), "--set", "train.batch_size=99999999999999999999999"),
                   "train.batch_size: expected int of at most 64 bits")
    one_line_error(rqf_proc("run", str(path), "--set", "train.lr=.nan"),
                   "train.lr: expected a finite float")
    one_line_error(rqf_proc("run", str(path), "--set", "train.lr=.inf"),
                   "train.lr: expected a finite float")
    assert not run.exists()


@pytest.mark.parametrize("model, train, fragment", [
    ({"type": "tiger", "beam": 10**9}, {}, "model.beam: 1000000000 beams for 300 items"),
    ({"type": "tiger", "layers": 100000}, {}, "model.layers, model.history: a network of"),
    ({"type": "tiger", "ff": 100000}, {}, "train.batch_size, model.history, model.ff: a training"),
    ({"type": "lastitem_nn", "history": 10**9}, {}, "model.history: histories of 1000000000 items"),
    ({"type": "rqvae", "codebook_size": 10**9}, {}, "model.hidden_dims: an RQ-VAE of 1.6e+10"),
    ({"type": "rqvae", "hidden_dims": [10**8]}, {}, "model.hidden_dims: an RQ-VAE of 5e+09"),
    ({"type": "rqvae", "levels": 10**5}, {}, "model.levels: expected a value <= 64"),
    ({"type": "rqkmeans", "kmeans_iters": 10**9}, {}, "model.kmeans_iters: expected a value <="),
    ({"type": "rqkmeans", "codebook_size": 10**9}, {}, "model.codebook_size: 3 x 1000000000 codes"),
])
def test_absurd_sizes_are_refused_with_the_key_and_the_estimate(tmp_path, recsys_files, model,
                                                                train, fragment):
    from rqf.codes import write_semantic_ids

    if model["type"] in ("tiger", "lastitem_nn"):
        ids = write_semantic_ids(tmp_path / "ids.h5", np.arange(101, 401),
                                 np.arange(900).reshape(300, 3) % 8, None, {"codebook_size": 8})
        if model["type"] == "tiger":
            model = {**model, "semantic_ids": str(ids)}
        config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                                 splitter={"type": "leave_last_out"}, model=model)
    else:
        config = recsys_pipeline(recsys_files, tmp_path / "run", model=model)
    path = pipeline_file(tmp_path, config)
    for command in ("validate", "run"):  # validate refuses what run would, before training
        one_line_error(rqf_proc(command, str(path), timeout=60), fragment)
    assert not (tmp_path / "run").exists()


def test_deeply_nested_yaml_is_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: x\nmodel: " + "[" * 20000 + "]" * 20000 + "\n")
    one_line_error(rqf_proc("validate", str(deep)), f"{deep}: invalid YAML: nested deeper")
    less = tmp_path / "less.yaml"
    less.write_text("name: x\nmodel: " + "[" * 50 + "]" * 50 + "\n")
    one_line_error(rqf_proc("validate", str(less)), "nested more than 32 levels deep")
    fine = tmp_path / "fine.yaml"
    fine.write_text("name: x\n")
    one_line_error(rqf_proc("validate", str(fine), "--set", "model=" + "[" * 20000 + "]" * 20000),
                   "--set model: the value is nested deeper than a pipeline can be")
    one_line_error(rqf_proc("validate", str(fine), "--set", "model=" + "[" * 50 + "]" * 50),
                   "--set: model[0]", "nested more than 32 levels deep")


def test_an_alias_bomb_or_a_self_alias_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\nmodel: {type: rqvae, hidden_dims: *a8}\n")
    # 9^9 values once expanded: measured by its distinct nodes, refused long before a timeout
    one_line_error(rqf_proc("validate", str(bomb), timeout=30), "expands to more than 200,000 values")
    looped = tmp_path / "loop.yaml"
    looped.write_text("model: &m {type: rqvae, hidden_dims: [*m]}\n")
    one_line_error(rqf_proc("validate", str(looped), timeout=30), "a value contains itself")


def test_yaml_base_60_numbers_are_not_read_as_numbers(tmp_path, recsys_files):
    config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                             splitter={"type": "leave_last_out"}, model={"type": "mostpop"})
    path = pipeline_file(tmp_path, config)
    text = path.read_text()
    assert "  type: mostpop\n" in text
    path.write_text(text.replace("  type: mostpop\n", "  type: mostpop\n  history: 1:30\n"))
    one_line_error(rqf_proc("validate", str(path)), "model.history", "'1:30'")
    one_line_error(rqf_proc("validate", str(path), "--set", "model.history=0:20"),
                   "model.history", "'0:20'")


def test_edge_data_gets_one_line_that_says_what_is_wrong(tmp_path, recsys_files):
    from rqf.codes import write_semantic_ids
    from rqf_h5_recsys.testing import write_seed_sequences

    items = write_seed_items(tmp_path / "items.h5", np.arange(1, 11),
                             np.random.default_rng(0).normal(size=(10, 4)))
    with h5py.File(tmp_path / "none.h5", "w") as f:  # a catalogue without interactions
        f.create_dataset("user_ids", (0,), dtype=h5py.string_dtype())
        f.create_dataset("sequences", (0,), dtype=h5py.vlen_dtype(np.int64))
        f.create_dataset("sequence_lengths", data=np.zeros(0, np.int32))
        f.attrs["n_sequences"] = 0
    three = write_seed_sequences(tmp_path / "three.h5", ["a", "b"], [[1, 2, 3], [4, 5, 6]])
    empty_ids = write_semantic_ids(tmp_path / "empty_ids.h5", np.zeros(0, np.int64),
                                   np.zeros((0, 2), np.int64), None, {"codebook_size": 4})
    ids = write_semantic_ids(tmp_path / "ids.h5", np.arange(1, 11),
                             np.arange(20).reshape(10, 2) % 4, None, {"codebook_size": 4})

    def pipeline(sequences, model):
        return pipeline_file(tmp_path, {
            "output_dir": str(tmp_path / "run"),
            "storage": {"type": "h5_recsys", "items": str(items), "sequences": str(sequences)},
            "dataset": "sequences", "splitter": "leave_last_out", "model": model,
            "train": {"progress": False, "max_steps": 2}})

    for command in ("validate", "run"):
        one_line_error(rqf_proc(command, str(pipeline(tmp_path / "none.h5", {"type": "mostpop"}))),
                       "none.h5: holds no user sequences")
    one_line_error(rqf_proc("validate", str(pipeline(three, {"type": "tiger",
                                                             "semantic_ids": str(empty_ids)}))),
                   "empty_ids.h5: holds no items")
    one_line_error(rqf_proc("run", str(pipeline(three, {"type": "tiger", "semantic_ids": str(ids),
                                                        "beam": 10}))),
                   "no next-item examples", "a user needs four")


@pytest.mark.parametrize("text, fragment", [
    ("name: [unclosed\n", "invalid YAML at line 2"),
    ("!!python/object/apply:os.system ['touch pwned']\n", "invalid YAML"),
])
def test_a_broken_run_config_names_the_file(tmp_path, recsys_files, text, fragment):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run))
    assert rqf_proc("run", str(path)).returncode == 0
    (run / "metrics.json").unlink()  # an unfinished run
    (run / "config.yaml").write_text(text)
    for args in (["run", str(path), "--resume"],
                 ["rqvae", "encode", str(run), "--out", str(tmp_path / "x.h5")]):
        one_line_error(rqf_proc(*args, cwd=tmp_path), f"{run / 'config.yaml'}: ", fragment)
    assert not (tmp_path / "pwned").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path, recsys_files):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run))
    assert rqf_proc("run", str(path)).returncode == 0
    (run / "metrics.json").unlink()
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    torch.save({"format": "rqf-checkpoint-1", "step": 1, "model": _Payload()}, checkpoint)
    proc = rqf_proc("run", str(path), "--resume", cwd=tmp_path)
    last = one_line_error(proc, str(checkpoint), "refused", "could run code")
    assert "weights_only" not in proc.stderr and "weights_only" not in last
    assert not (tmp_path / "pwned").exists()


def test_embeddings_of_an_unusable_scale_fail_validation(tmp_path, recsys_files):
    from rqf.testing import clustered

    items = write_seed_items(tmp_path / "huge.h5", np.arange(1, 301), clustered(300, 16, 8) * 1e30)
    config = recsys_pipeline(recsys_files, tmp_path / "run")
    config["storage"] = {"type": "h5_recsys", "items": str(items)}
    one_line_error(rqf_proc("validate", str(pipeline_file(tmp_path, config))),
                   "huge.h5", "embeddings", "unusable scale")
    proc = rqf_proc("inspect", str(items))
    assert proc.returncode == 1 and "unusable scale" in proc.stdout


def test_a_run_that_reconstructs_nothing_says_so(tmp_path, recsys_files):
    from rqf.testing import clustered

    items = write_seed_items(tmp_path / "big.h5", np.arange(1, 301), clustered(300, 16, 8) * 1e12)
    config = recsys_pipeline(recsys_files, tmp_path / "run")
    config["storage"] = {"type": "h5_recsys", "items": str(items)}
    proc = rqf_proc("run", str(pipeline_file(tmp_path, config)))
    assert proc.returncode == 0
    assert "warning: unhealthy result: the reconstruction keeps almost nothing" in proc.stderr
    assert "model.normalize: standardize" in proc.stderr


# --- a corrupted semantic_ids.h5 -----------------------------------------------------------

def _short_ids(f):
    ids = f["item_ids"][()]
    del f["item_ids"]
    f["item_ids"] = ids[:-5]


def _repeated_id(f):
    ids = f["item_ids"][()]
    ids[1] = ids[0]
    f["item_ids"][...] = ids


def _code_out_of_range(f):
    f["codes"][0, 0] = 9999


def _shuffled_order(f):
    order = f["lookup_order"][()]
    f["lookup_order"][...] = order[::-1]


@pytest.mark.parametrize("corrupt, fragment", [
    (_short_ids, "codes has 300 rows, item_ids has 295"),
    (_repeated_id, "item_ids repeats"),
    (_code_out_of_range, "codes must lie in 0..15"),
    (_shuffled_order, "lookup_order does not sort them"),
    ("truncate", "not a readable semantic_ids.h5 file"),
])
def test_lookup_on_a_corrupted_file_is_one_line(tmp_path, corrupt, fragment):
    from rqf.codes import write_semantic_ids

    rng = np.random.default_rng(0)
    ids = write_semantic_ids(tmp_path / "semantic_ids.h5", np.arange(101, 401),
                             rng.integers(0, 16, (300, 2)), None, {"codebook_size": 16})
    assert rqf_proc("rqvae", "lookup", str(ids), "--item", "101").returncode == 0
    if corrupt == "truncate":
        ids.write_bytes(ids.read_bytes()[:4000])
    else:
        with h5py.File(ids, "a") as f:
            corrupt(f)
    one_line_error(rqf_proc("rqvae", "lookup", str(ids), "--item", "101"), str(ids), fragment)
