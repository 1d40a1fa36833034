"""finalize and merge never delete or drop a sample a shard on disk holds: a hand-edited,
truncated or swapped index is repaired from the shards or refused in one line (real processes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np

from rqf.testing import one_line_error, rqf_proc
from rqf_h5_speech import ShardedCacheWriter
from rqf_h5_speech.cache import CacheIndex


def write(directory, keys, width=16, samples_per_file=4):
    rng = np.random.default_rng(len(keys))
    with ShardedCacheWriter(directory, samples_per_file=samples_per_file, num_workers=0) as w:
        for key in keys:
            w.write(key, {"hidden_states": rng.normal(size=(6, width)).astype(np.float32)})
    return directory


def index_json(directory):
    return json.loads((directory / "hdf5_index.json").read_text())


def test_finalize_adopts_a_shard_the_index_lost_instead_of_deleting_it(tmp_path):
    cache = write(tmp_path / "c", [f"k{i}" for i in range(12)])  # shards 1, 2, 3
    data = index_json(cache)
    lost = [k for k, e in data["sample_index"].items() if e["file_idx"] == 2]
    for key in lost:  # a hand edit, or another tool's bug, drops shard 2 from the index
        del data["sample_index"][key]
    (cache / "hdf5_index.json").write_text(json.dumps(data))
    before = (cache / "features_00002.h5").read_bytes()
    proc = rqf_proc("speech", "finalize", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["samples"] == 12
    assert (cache / "features_00002.h5").read_bytes() == before  # the shard is still there
    assert {k: e["file_idx"] for k, e in index_json(cache)["sample_index"].items()
            if k in lost} == {k: 2 for k in lost}


def test_finalize_refuses_an_index_that_points_samples_at_the_wrong_shard(tmp_path):
    cache = write(tmp_path / "c", [f"k{i}" for i in range(8)])
    data = index_json(cache)
    entries = data["sample_index"]
    assert (entries["k0"]["file_idx"], entries["k4"]["file_idx"]) == (1, 2)
    entries["k0"]["file_idx"], entries["k4"]["file_idx"] = 2, 1  # two pointers swapped
    (cache / "hdf5_index.json").write_text(json.dumps(data))
    shards = {p.name: p.read_bytes() for p in cache.glob("features_*.h5")}
    one_line_error(rqf_proc("speech", "finalize", str(cache)),
                   "puts 1 samples in features_00001.h5 that it does not hold (e.g. 'k4', "
                   "which features_00002.h5 holds)")
    assert {p.name: p.read_bytes() for p in cache.glob("features_*.h5")} == shards
    one_line_error(rqf_proc("speech", "merge", str(tmp_path / "out"), str(cache)),
                   "does not hold (e.g. 'k4'")
    assert not (tmp_path / "out").exists()


def test_a_truncated_committed_shard_stops_finalize_and_is_never_dropped(tmp_path):
    cache = write(tmp_path / "c", [f"k{i}" for i in range(8)])
    shard = cache / "features_00002.h5"
    shard.write_bytes(shard.read_bytes()[:600])  # a torn copy, a disk fault
    index = (cache / "hdf5_index.json").read_text()
    one_line_error(rqf_proc("speech", "finalize", str(cache)),
                   "features_00002.h5: shard cannot be read", "move it out of the cache")
    assert (cache / "hdf5_index.json").read_text() == index and shard.exists()


def test_finalize_without_an_index_over_other_tools_shards_refuses_instead_of_emptying(tmp_path):
    cache = tmp_path / "seed"
    cache.mkdir()
    with h5py.File(cache / "features_00001.h5", "w") as f:  # as the original tools write them
        f.create_dataset("spk/utt1/hidden_states", data=np.zeros((5, 8), np.float16))
    one_line_error(rqf_proc("speech", "finalize", str(cache)),
                   "hdf5_index.json: missing, and 1 shards list no keys")
    assert sorted(p.name for p in cache.iterdir()) == ["features_00001.h5"]


def test_merge_refuses_parts_of_other_widths_and_sparse_shard_numbers_link(tmp_path):
    narrow = write(tmp_path / "a", ["a0", "a1"], width=16)
    wide = write(tmp_path / "b", ["b0", "b1"], width=32)
    one_line_error(rqf_proc("speech", "merge", str(tmp_path / "out"), str(narrow), str(wide)),
                   "hidden_states is 16-wide in", "32-wide in")
    assert not (tmp_path / "out").exists()
    # a part whose shard is numbered 10**9 (renumbered by hand, or a huge job): linked as 2
    sparse = write(tmp_path / "c", ["c0"], width=16)
    data = index_json(sparse)
    data["sample_index"]["c0"]["file_idx"] = 10**9
    (sparse / "features_00001.h5").rename(sparse / f"features_{10**9:05d}.h5")
    (sparse / "hdf5_index.keys.h5").unlink()
    (sparse / "hdf5_index.json").write_text(json.dumps(data))
    proc = rqf_proc("speech", "merge", str(tmp_path / "out"), str(narrow), str(sparse))
    assert proc.returncode == 0, proc.stderr
    merged = CacheIndex.load(tmp_path / "out")
    assert sorted(merged.table) == ["a0", "a1", "c0"] and sorted(merged.shard_counts()) == [1, 2]


def test_a_merge_across_file_systems_says_so_not_a_full_disk(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-Urm", "true"], capture_output=True).returncode:
        import pytest
        pytest.skip("cannot mount a tmpfs (user namespaces)")
    part = write(tmp_path / "p", ["x0", "x1"])
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c",
                           f"mount -t tmpfs -o size=64k tmpfs {disk} && "
                           f"{sys.executable} -m rqf speech merge {disk}/out {part}"],
                          capture_output=True, text=True, timeout=300)
    last = one_line_error(proc, "merge links shards instead of copying them")
    assert "no space left" not in last


def test_a_full_disk_while_finalize_writes_the_index_is_one_line_and_keeps_the_shards(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-Urm", "true"], capture_output=True).returncode:
        import pytest
        pytest.skip("cannot mount a tmpfs (user namespaces)")
    source = write(tmp_path / "c", [f"utterance/{i:04d}" for i in range(40)], width=1,
                   samples_per_file=40)
    for name in ("hdf5_index.json", "hdf5_index.keys.h5"):
        (source / name).unlink()  # a writer killed before its first index: the shards list keys
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c",
                           f"mount -t tmpfs -o size=200k tmpfs {disk} && cp -r {source} {disk}/c"
                           f" && {sys.executable} -m rqf speech finalize {disk}/c; echo rc=$?;"
                           f" ls -A {disk}/c"], capture_output=True, text=True, timeout=300)
    assert "rc=2" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: no space left on device while writing {disk}/c/hdf5_index.json")
    listing = proc.stdout.split("rc=2")[-1].split()
    assert "features_00001.h5" in listing and not [n for n in listing if n.endswith(".tmp")]
