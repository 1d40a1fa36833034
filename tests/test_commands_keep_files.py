"""The commands besides rqf run follow its rules, tried as a careless or unlucky user would, as
real processes: nothing they did not create is replaced without --force, what they write is
readable by others, a killed one's leftovers are cleaned, every parsed value is checked with
the file and line named, and sizes are estimated before they are allocated."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

from rqf.codes import write_semantic_ids
from rqf.testing import needs, one_line_error, pipeline_file, rqf_proc


@pytest.fixture
def ids_file(tmp_path):
    codes = np.random.default_rng(0).integers(0, 4, (30, 2))
    return write_semantic_ids(tmp_path / "semantic_ids.h5", np.arange(1, 31), codes, None,
                              {"codebook_size": 4, "levels": 2})


def test_what_commands_write_is_readable_by_others_as_the_umask_says(tmp_path, ids_file):
    for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
        out = tmp_path / f"ids_{mode:o}.csv"
        proc = subprocess.run([sys.executable, "-m", "rqf", "ids", "export", str(ids_file),
                               "--format", "csv", "--out", str(out)],
                              capture_output=True, text=True, preexec_fn=lambda m=mask: os.umask(m))
        assert proc.returncode == 0, proc.stderr
        assert stat.S_IMODE(out.stat().st_mode) == mode
    out.chmod(0o640)  # a file replaced keeps the mode its owner gave it
    assert rqf_proc("ids", "export", str(ids_file), "--format", "csv", "--out", str(out),
                    "--force").returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_a_killed_commands_temporary_file_is_removed_by_the_next_one(tmp_path, ids_file):
    out = tmp_path / "ids.index.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that is gone, as a killed command's is
    host = socket.gethostname()
    left = tmp_path / f".{out.name}.{dead.pid}@{host}.abcd1234.tmp"
    left.write_text('{"1": ["<a_')  # what a kill mid-write leaves
    alive = tmp_path / f".{out.name}.{os.getpid()}@{host}.efgh5678.tmp"  # a live writer's
    alive.write_text("{")
    elsewhere = tmp_path / f".{out.name}.{dead.pid}@another-host.ijkl9012.tmp"  # can't tell
    elsewhere.write_text("{")
    assert rqf_proc("ids", "export", str(ids_file), "--format", "index-json", "--out",
                    str(out)).returncode == 0
    assert not left.exists() and alive.exists() and elsewhere.exists()
    assert json.loads(out.read_text())


def test_a_file_over_the_size_limit_is_one_line_naming_it(tmp_path, ids_file):
    out = tmp_path / "ids.csv"
    proc = subprocess.run(["sh", "-c", f"ulimit -f 0; {sys.executable} -m rqf ids export "
                                       f"{ids_file} --format csv --out {out}"],
                          capture_output=True, text=True, timeout=300)
    one_line_error(proc, f"{out}: larger than this process may write")
    assert not out.exists() and not list(tmp_path.glob(".ids.csv.*"))


@pytest.mark.parametrize("template, expected", [
    ("<{letter}>", "has no {code}"),
    ("{code.__class__}", "{code.__class__} is not a field"),
    ("{code[0]}", "is not a field"),
    ("{code:>100000000}", "a format spec of at most 8 characters"),
    ("<{letter}_{code}>" * 20, "at most 64"),
])
def test_export_refuses_templates_that_would_make_one_id_or_read_objects(tmp_path, ids_file,
                                                                         template, expected):
    out = tmp_path / "ids.json"
    one_line_error(rqf_proc("ids", "export", str(ids_file), "--format", "index-json", "--out",
                            str(out), "--token", template), "--token", expected)
    assert not out.exists()


def test_nothing_is_written_into_a_run_folder_but_by_rqf_run(tmp_path, ids_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".rqf-run.json").write_text("{}")
    model = run / "model.pt"
    model.write_bytes(b"weights")
    one_line_error(rqf_proc("ids", "export", str(ids_file), "--format", "csv", "--out",
                            str(model), "--force"), f"inside the run folder {run}")
    assert model.read_bytes() == b"weights"
    schema = tmp_path / "mine.json"
    schema.write_text("my notes")
    one_line_error(rqf_proc("schema", "--out", str(schema)), "exists; pass --force")
    assert schema.read_text() == "my notes"
    assert rqf_proc("schema", "--out", str(schema), "--force").returncode == 0
    assert json.loads(schema.read_text())["title"] == "rqf pipeline"


@needs("rqf_h5_recsys")
@pytest.mark.parametrize("index, expected", [
    ('{"1": ["<a_1>"], "01": ["<a_2>"]}', "key '01': expected an integer item id written "
                                          "plainly"),
    ('{"1": ["<a_1>"], "1": ["<a_2>"]}', "key '1' appears twice"),
    ('{"1": ["<a_1>", "<b_-7>"]}', "token '<b_-7>' holds no code"),
    ('{"1": ["<a_1>", "<b_1.5>"]}', "token '<b_1.5>' holds no code"),
    ('{"1": [["<a_1>"], "<b_2>"]}', "token ['<a_1>'] holds no code"),
    ('{"1": [{"a": 1}]}', "holds no code"),
    ('{"1": ["<a_99999999999999999999>"]}', "holds no code"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
])
def test_import_reads_every_key_and_token_strictly(tmp_path, index, expected):
    from rqf_h5_recsys.testing import write_seed_items

    items = write_seed_items(tmp_path / "item_data.h5", np.array([1]), np.zeros((1, 4)))
    path = tmp_path / "other.index.json"
    path.write_text(index)
    out = tmp_path / "ids.h5"
    one_line_error(rqf_proc("ids", "import", str(path), "--items", str(items), "--out",
                            str(out)), str(path), expected)
    assert not out.exists()


@needs("rqf_h5_recsys", "rqf_h5_speech")
def test_demo_never_writes_over_a_users_files(tmp_path):
    from rqf_h5_recsys.testing import write_seed_items

    (tmp_path / "mydata" / "recsys").mkdir(parents=True)
    mine = write_seed_items(tmp_path / "mydata" / "recsys" / "item_data.h5", np.arange(3),
                            np.ones((3, 4)))
    before = mine.read_bytes()
    one_line_error(rqf_proc("demo", str(tmp_path / "mydata")),
                   f"{mine}: exists and is not demo data rqf wrote; pass --force")
    assert mine.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "mydata").rglob("*")) == ["item_data.h5", "recsys"]
    # the demo's own files are its to write again
    assert rqf_proc("demo", str(tmp_path / "fresh")).returncode == 0
    assert rqf_proc("demo", str(tmp_path / "fresh")).returncode == 0
    # a cache of one's own never receives demo samples, --force or not
    cache = tmp_path / "other" / "speech"
    cache.mkdir(parents=True)
    (cache / "hdf5_index.json").write_text("{}")
    one_line_error(rqf_proc("demo", str(tmp_path / "other"), "--force"),
                   f"{cache}: holds files rqf demo did not write")
    assert sorted(p.name for p in cache.iterdir()) == ["hdf5_index.json"]


@needs("rqf_h5_recsys")
def test_recommend_reads_histories_strictly_and_floors_refuse_items_they_never_saw(
        tmp_path, recsys_files):
    from rqf_h5_recsys.testing import recsys_pipeline

    run = tmp_path / "run"
    config = recsys_pipeline(recsys_files, run, dataset={"type": "sequences"},
                             splitter={"type": "leave_last_out"}, model={"type": "mostpop"})
    assert rqf_proc("run", str(pipeline_file(tmp_path, config))).returncode == 0
    users = tmp_path / "users.tsv"
    users.write_text("u1\t101,102\n7 12,33\n")
    one_line_error(rqf_proc("recommend", str(run), "--users", str(users)),
                   f"{users}: line 2: '7 12' is not an item id (ids are separated by commas")
    for history, expected in (("99999", "item 99999 is not in the catalogue"),
                              ("101,-1", "'-1' is not an item id"),
                              ("101,,102", "'' is not an item id")):
        one_line_error(rqf_proc("recommend", str(run), "--history", history), expected)
    one_line_error(rqf_proc("recommend", str(run), "--history", "101", "--k", str(10**12)),
                   "k: ", "GB")
    config["model"] = {"type": "lastitem_nn", "top_k": 10**9}
    config["output_dir"] = str(tmp_path / "nn")
    one_line_error(rqf_proc("validate", str(pipeline_file(tmp_path, config, "nn.yaml"))),
                   "model.top_k: ", "the top 1,000,000,000 items")
