"""Nothing lost when processes die or disks fill: one writer per cache or run folder, exports
killed half-way and redone on --resume, full disks that end in one line, as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rqf.testing import on_small_disk, one_line_error, pipeline_file, rqf_proc, small_disk_works
from rqf_h5_recsys.testing import recsys_pipeline
from rqf_h5_speech.testing import speech_pipeline

PYTHON = sys.executable


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
    # a run far longer than the test: it holds the folder until the test kills it, however
    # fast the machine (the three refused runs start a process each)
    config = recsys_pipeline(recsys_files, tmp_path / "run", train={
        "epochs": None, "max_steps": 10_000_000, "batch_size": 64, "progress": False})
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
        assert first.poll() is None  # refused while the first one was still running
    finally:
        first.kill()
        first.wait()


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


def _as_from_a_terminal() -> None:
    """Ctrl-C reaches the child as it does a command typed in a terminal: whatever the test
    process inherited or set (an ignored or blocked SIGINT is passed on to children), the
    child starts with SIGINT at its default and unblocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_says_how_to_continue_and_resume_finishes_the_run(tmp_path, recsys_files):
    run = tmp_path / "run"
    # a network wide enough that 3,000 steps take many seconds: Ctrl-C lands mid-training
    path = pipeline_file(tmp_path, recsys_pipeline(
        recsys_files, run, model={"hidden_dims": [512, 512], "latent_dim": 8},
        train={"epochs": None, "max_steps": 3000, "batch_size": 64, "progress": False,
               "checkpoint_every": 50}))
    # the fault handler shows where a run that did not stop was stuck
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([PYTHON, "-m", "rqf", "run", str(path)], stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("step_*.pt")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # the fault handler prints every thread's stack
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"the run did not stop within 180 s of Ctrl-C:\n{err}")
    assert proc.returncode != 0, f"the run finished before Ctrl-C reached it: {err}"
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"interrupted: continue with rqf run {path} --resume"
    resumed = rqf_proc("run", str(path), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["fit"]["resumed_from"] < 3000 and metrics["fit"]["steps"] == 3000


# --- a full disk: one line, no half file, nothing committed lost ----------------------------

needs_small_disk = pytest.mark.skipif(not small_disk_works(),
                                      reason="cannot mount a small tmpfs (user namespaces)")


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
