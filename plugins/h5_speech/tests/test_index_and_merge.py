"""h5_speech: the index as arrays, caches written by many processes merged, finalize."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rqf.cli import main
from rqf.errors import DataError, RqfError
from rqf_h5_speech import H5ShardedStorage, ShardedCacheWriter, UtterancesDataset
from rqf_h5_speech.cache import CacheIndex, check_key
from rqf_h5_speech.keyhash import hash_key, hash_keys
from rqf_h5_speech.keytable import KeyTable, encode_keys, first_bad_key
from rqf_h5_speech.merge import merge_caches
from rqf_h5_speech.testing import KEYS, sample, write_like_original


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr()


# --- the key table ----------------------------------------------------------------------

def test_key_table_finds_every_key_and_only_those():
    keys = ["a", "a/b", "ünï/çødé", "x" * 300] + [f"spk{i % 7}/utt{i:05d}" for i in range(3000)]
    table = KeyTable.from_keys(keys, np.arange(len(keys)) % 5 + 1)
    blob, offsets = encode_keys(keys)
    assert hash_keys(blob, offsets).tolist() == [hash_key(k.encode()) for k in keys]
    assert list(table) == keys and table[2] == "ünï/çødé" and table[-1] == keys[-1]
    assert [table.position(k) for k in keys] == list(range(len(keys)))
    assert table.position("spk0/utt99999") == -1 and "a/" not in table
    assert table.positions(["a/b", "nope", keys[77]]).tolist() == [1, -1, 77]
    assert table.shard_counts() == {i: int((np.arange(len(keys)) % 5 + 1 == i).sum())
                                    for i in range(1, 6)}
    # a new shard for known keys keeps their rows; new keys come after, the later shard wins
    changed = table.updated(["a/b", "new", "new"], [9, 8, 9])
    assert len(changed) == len(keys) + 1 and changed[len(keys)] == "new"
    assert changed.file_idx[1] == 9 and changed.file_idx[-1] == 9
    assert changed.position("new") == len(keys) and table.position("new") == -1


def test_key_checks_over_all_keys_at_once_agree_with_the_one_key_check():
    cases = ["ok/key", "a..b", ".hidden/x", "x/y.", "../x", "x/..", "a/./b", "/abs", "x/",
             "a//b", "C:/x", "c:\\x", "C:x", "back\\slash", "nul\x00", "..", ".", "x/../y"]
    for key in cases:
        bad = first_bad_key(*encode_keys(["fine", key, "fine/too"]))
        try:
            check_key(key)
            refused = False
        except DataError:
            refused = True
        assert (bad == 1) == refused, key
        assert bad in (None, 1), key


def test_open_reads_the_arrays_and_the_json_only_after_another_tool_changed_it(tmp_path):
    rng = np.random.default_rng(0)
    with ShardedCacheWriter(tmp_path / "c", samples_per_file=4, num_workers=0) as w:
        for i in range(10):
            w.write(f"s/{i}", sample(rng, 5 + i))
    index = CacheIndex.load(tmp_path / "c")
    assert index.source == "keys" and isinstance(index.table.blob, np.memmap)
    assert list(index.table) == [f"s/{i}" for i in range(10)]
    # the original tool rewrites the JSON (here: drops a sample): the JSON is the index again
    path = tmp_path / "c" / "hdf5_index.json"
    data = json.loads(path.read_text())
    del data["sample_index"]["s/9"]
    path.write_text(json.dumps(data))
    index = CacheIndex.load(tmp_path / "c")
    assert index.source == "json" and "s/9" not in index.table and len(index.table) == 9


def test_a_worker_maps_the_index_file_again_instead_of_receiving_a_copy(tmp_path):
    rng = np.random.default_rng(1)
    with ShardedCacheWriter(tmp_path / "c", num_workers=0) as w:
        for i in range(50):
            w.write(f"k{i:03d}", sample(rng, 4))
    with H5ShardedStorage(str(tmp_path / "c")) as s:
        assert len(pickle.dumps(s.keys)) < 600  # the file's name, not the keys
        rebuild, args = s.keys.__reduce__()  # what unpickling in the worker calls
        again = rebuild(*args)
        assert list(again) == list(s.keys) and isinstance(again.blob, np.memmap)
        in_memory = KeyTable.from_keys(list(s.keys), s.keys.file_idx)
        rebuild, args = in_memory.__reduce__()
        assert len(pickle.dumps(in_memory)) > 50 * 4  # not backed by a file: sent by value
        assert list(rebuild(*args)) == list(s.keys)


def test_a_split_of_a_cache_keeps_its_keys_as_rows(tmp_path):
    rng = np.random.default_rng(2)
    samples = {k: sample(rng, 6 + i) for i, k in enumerate(KEYS)}
    cache = write_like_original(tmp_path / "c", samples)
    with H5ShardedStorage(str(cache)) as s:
        data = UtterancesDataset(s)
        part = data.subset(np.array([5, 1, 9]))
        assert list(part.keys) == [KEYS[5], KEYS[1], KEYS[9]]
        assert part.keys.rows.tolist() == [5, 1, 9]
        batch = part.read_batch([0, 2])
        assert batch["keys"] == [KEYS[5], KEYS[9]]
        np.testing.assert_array_equal(batch["hidden_states"][1, :15],
                                      samples[KEYS[9]]["hidden_states"].astype(np.float16))


# --- many writers, one cache ----------------------------------------------------------------

PART_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from rqf_h5_speech import ShardedCacheWriter
    out, rank, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with ShardedCacheWriter(out, samples_per_file=8, num_workers=2) as w:
        for i in range(count):
            value = rank * 1000 + i
            w.write(f"rank{rank}/utt{i:04d}", {
                "hidden_states": np.full((3 + i % 5, 16), value, np.float32),
                "mel_spectrogram": np.full((1, 3 + i % 5, 80), value, np.float32)})
    print("done", flush=True)
""")


def write_parts(tmp_path, counts, script=PART_WRITER):
    path = tmp_path / "part_writer.py"
    path.write_text(script)
    procs = [subprocess.Popen([sys.executable, str(path), str(tmp_path / f"part{r}"), str(r),
                               str(n)], stdout=subprocess.PIPE, text=True)
             for r, n in enumerate(counts)]  # all at once, one process each
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "done" in out
    return [tmp_path / f"part{r}" for r in range(len(counts))]


def test_four_writer_processes_merge_into_one_cache_without_copying(tmp_path, capsys):
    counts = [21, 8, 0, 13]
    parts = write_parts(tmp_path, counts)
    code, out = run_cli(capsys, "speech", "merge", str(tmp_path / "all"), *map(str, parts))
    assert code == 0, out.err
    report = json.loads(out.out.strip().splitlines()[-1])
    assert report["samples"] == sum(counts) and report["shards"] == 3 + 1 + 0 + 2
    merged = tmp_path / "all"
    # every shard is the part's file under a new name: the same inode, not a copy
    part_inodes = {p.stat().st_ino for part in parts for p in part.glob("features_*.h5")}
    assert {p.stat().st_ino for p in merged.glob("features_*.h5")} == part_inodes
    with H5ShardedStorage(str(merged)) as s:
        assert len(s.keys) == sum(counts)
        for rank, n in enumerate(counts):
            for i in range(n):
                got = s.read(f"rank{rank}/utt{i:04d}")
                assert got["hidden_states"].shape == (3 + i % 5, 16)
                assert (got["hidden_states"] == rank * 1000 + i).all()
    # the original tools' index lists every sample in the shard that holds it
    seed = json.loads((merged / "hdf5_index.json").read_text())
    assert len(seed["sample_index"]) == sum(counts)
    for key, entry in seed["sample_index"].items():
        import h5py
        with h5py.File(merged / f"features_{entry['file_idx']:05d}.h5") as f:
            assert entry["group_name"] in f, key
    for part, n in zip(parts, counts):  # the parts are untouched and still read
        with H5ShardedStorage(str(part)) as s:
            assert len(s.keys) == n
    code, out = run_cli(capsys, "inspect", str(merged))
    assert code == 0 and f"samples: {sum(counts)}, shards referenced: 6" in out.out
    assert "index: hdf5_index.keys.h5, in sync with hdf5_index.json" in out.out
    assert "journal" not in out.out


def test_merge_refuses_a_key_in_two_parts_and_writes_nothing(tmp_path, capsys):
    parts = write_parts(tmp_path, [5, 5])
    rng = np.random.default_rng(3)
    with ShardedCacheWriter(parts[1], samples_per_file=8, num_workers=0) as w:
        w.write("rank0/utt0003", sample(rng, 4))  # also in part0
    code, out = run_cli(capsys, "speech", "merge", str(tmp_path / "all"), *map(str, parts))
    assert code != 0
    assert "sample key 'rank0/utt0003' is in" in out.err and "part0 and" in out.err
    assert "Traceback" not in out.err
    assert not (tmp_path / "all").exists() and not (tmp_path / "all.partial").exists()


def test_merge_refuses_a_part_that_is_being_written(tmp_path):
    parts = write_parts(tmp_path, [3, 3])
    with ShardedCacheWriter(parts[0], samples_per_file=8, num_workers=0):
        with pytest.raises(RqfError, match="another cache writer is writing here"):
            merge_caches(tmp_path / "all", parts)
    assert not (tmp_path / "all").exists()


def test_a_merge_cut_off_leaves_no_cache_and_the_next_one_starts_over(tmp_path, monkeypatch):
    parts = write_parts(tmp_path, [9, 9])
    links = []
    real_link = os.link

    def link_then_die(src, dst):
        if len(links) == 2:
            raise OSError(28, "No space left on device")  # a failure mid-way
        links.append(dst)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_then_die)
    with pytest.raises(RqfError, match="no space left on device while writing .*all.partial"):
        merge_caches(tmp_path / "all", parts)
    assert not (tmp_path / "all").exists() and not (tmp_path / "all.partial").exists()
    monkeypatch.setattr(os, "link", real_link)
    # a merge killed outright leaves all.partial behind: the next merge empties it first
    leftover = tmp_path / "all.partial"
    leftover.mkdir()
    real_link(parts[0] / "features_00001.h5", leftover / "features_00001.h5")
    (leftover / ".hdf5_index.json.abc.tmp").write_text("{")
    report = merge_caches(tmp_path / "all", parts)
    assert report["samples"] == 18
    with H5ShardedStorage(str(tmp_path / "all")) as s:
        assert sorted(s.keys) == sorted([f"rank{r}/utt{i:04d}" for r in (0, 1) for i in range(9)])


def test_merge_refuses_parts_of_another_precision(tmp_path):
    rng = np.random.default_rng(4)
    for name, f16 in (("a", True), ("b", False)):
        with ShardedCacheWriter(tmp_path / name, use_float16=f16, num_workers=0) as w:
            w.write(f"{name}/x", sample(rng, 3))
    with pytest.raises(DataError, match="the parts store different precisions"):
        merge_caches(tmp_path / "all", [tmp_path / "a", tmp_path / "b"])


KILLED_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from rqf_h5_speech import ShardedCacheWriter
    w = ShardedCacheWriter(sys.argv[1], samples_per_file=50, commit_every=5, num_workers=0)
    for i in range(100000):
        w.write(f"utt{i:06d}", {"hidden_states": np.full((4, 16), i % 1000, np.float32)})
        print(i, flush=True)
""")


def test_finalize_brings_the_seed_index_up_to_date_after_a_killed_writer(tmp_path, capsys):
    script = tmp_path / "w.py"
    script.write_text(KILLED_WRITER)
    cache = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, str(script), str(cache)], stdout=subprocess.PIPE,
                            text=True)
    for _ in range(23):
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    with H5ShardedStorage(str(cache)) as s:  # rqf reads the committed shards at once
        committed = list(s.keys)
    assert len(committed) >= 20 and len(committed) % 5 == 0
    seed = json.loads((cache / "hdf5_index.json").read_text())
    assert seed["sample_index"] == {}  # the original tools see nothing yet
    code, out = run_cli(capsys, "inspect", str(cache))
    assert f"journal: {len(committed) // 5} shards committed after the index" in out.out
    code, out = run_cli(capsys, "speech", "finalize", str(cache))
    assert code == 0 and json.loads(out.out)["samples"] == len(committed)
    seed = json.loads((cache / "hdf5_index.json").read_text())
    assert list(seed["sample_index"]) == committed
    assert seed["current_file_idx"] == len(committed) // 5
    with H5ShardedStorage(str(cache)) as s:
        assert s.index.source == "keys" and s.index.journal == []
        assert list(s.keys) == committed
