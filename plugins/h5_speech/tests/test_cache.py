"""h5_speech: reading caches written like the original tool, the writer, migration."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

import rqf_h5_speech
from rqf_h5_speech.testing import KEYS, sample, write_like_original
from rqf.cli import main
from rqf.errors import DataError
from rqf_h5_speech import H5ShardedStorage, ShardedCacheWriter, UtterancesDataset, migrate_npz

@pytest.mark.parametrize("float16", [True, False])
def test_reads_caches_written_by_the_original_tool(tmp_path, float16):
    rng = np.random.default_rng(1)
    samples = {k: sample(rng, 30) for k in KEYS}
    cache = write_like_original(tmp_path / "c", samples, float16=float16)
    with H5ShardedStorage(str(cache)) as storage:
        assert storage.keys == KEYS
        got = storage.read(KEYS[7])
        want = samples[KEYS[7]]["hidden_states"]
        assert got["hidden_states"].dtype == (np.float16 if float16 else np.float32)
        np.testing.assert_array_equal(got["hidden_states"], want.astype(got["hidden_states"].dtype))
        assert got["mel_spectrogram"].shape == (1, 31, 80)


def test_a_key_that_prefixes_another_reads_its_own_arrays(tmp_path):
    rng = np.random.default_rng(2)
    samples = {"a/b": sample(rng, 5), "a/b/c": sample(rng, 9)}
    with ShardedCacheWriter(tmp_path / "c", num_workers=0) as w:
        for k, v in samples.items():
            w.write(k, v)
    with H5ShardedStorage(str(tmp_path / "c")) as s:
        assert s.read("a/b")["hidden_states"].shape == (5, 16)
        assert s.read("a/b/c")["hidden_states"].shape == (9, 16)


def break_cache(cache: Path, kind: str) -> None:
    index_path = cache / "hdf5_index.json"
    index = json.loads(index_path.read_text())
    if kind == "missing shard":
        (cache / "features_00002.h5").unlink()
    elif kind == "missing group":
        with h5py.File(cache / "features_00001.h5", "a") as f:
            del f[KEYS[1]]
    elif kind == "malformed json":
        index_path.write_text(index_path.read_text()[:-20])
    elif kind == "samples_per_file":
        index["samples_per_file"] = 2
        index_path.write_text(json.dumps(index))
    elif kind == "truncated shard":
        p = cache / "features_00001.h5"
        p.write_bytes(p.read_bytes()[:3000])
    elif kind == "dotdot key":
        index["sample_index"]["../../etc/passwd"] = {"file_idx": 1, "group_name": "../../etc/passwd"}
        index_path.write_text(json.dumps(index))
    elif kind == "absolute key":
        index["sample_index"]["/abs/key"] = {"file_idx": 1, "group_name": "/abs/key"}
        index_path.write_text(json.dumps(index))
    elif kind == "mismatched T":
        with h5py.File(cache / "features_00001.h5", "a") as f:
            del f[KEYS[0]]["mel_spectrogram"]
            f[KEYS[0]].create_dataset("mel_spectrogram", data=np.zeros((1, 90, 80), np.float16))
    elif kind == "stray shard":
        with h5py.File(cache / "features_00009.h5", "w") as f:
            f.create_group("x")


OPEN_ERRORS = {
    "missing shard": "features_00002.h5: shard listed in the index for 5 samples is missing",
    "malformed json": "hdf5_index.json: malformed JSON at line",
    "samples_per_file": "samples_per_file is 2 but the index puts 5 samples in features_00001.h5",
    "dotdot key": "sample key '../../etc/passwd': '..', '.', empty parts",
    "absolute key": "sample key '/abs/key': absolute paths are not allowed",
}


@pytest.mark.parametrize("kind", OPEN_ERRORS)
def test_broken_caches_fail_on_open_with_a_named_error(original_cache, kind):
    cache, _ = original_cache
    break_cache(cache, kind)
    with pytest.raises(DataError, match=OPEN_ERRORS[kind]):
        H5ShardedStorage(str(cache)).open()


READ_ERRORS = {
    "missing group": (1, "sample '.*_1': group '.*_1' is missing from the shard"),
    "truncated shard": (0, "features_00001.h5: shard cannot be opened, it may be truncated"),
}


@pytest.mark.parametrize("kind", READ_ERRORS)
def test_broken_samples_fail_on_read_with_a_named_error(original_cache, kind):
    cache, _ = original_cache
    break_cache(cache, kind)
    which, message = READ_ERRORS[kind]
    with H5ShardedStorage(str(cache)) as storage:
        with pytest.raises(DataError, match=message):
            storage.read(KEYS[which])
        storage.read(KEYS[6])  # other shards still read


def test_mismatched_frames_are_an_error_not_a_silent_cut(original_cache):
    cache, _ = original_cache
    break_cache(cache, "mismatched T")
    with H5ShardedStorage(str(cache)) as storage:
        with pytest.raises(DataError, match="has 20 frames but mel_spectrogram has 90"):
            UtterancesDataset(storage)  # found when the dataset is built (rqf validate)
        data = UtterancesDataset(storage, keys=KEYS[1:] + KEYS[:1])  # checked as it is read
        with pytest.raises(DataError, match="has 20 frames but mel_spectrogram has 90"):
            data[len(KEYS) - 1]
        assert data[0]["length"] == 27  # mel one frame longer: both cut to the features


@pytest.mark.parametrize("kind, expected", [
    ("missing shard", "features_00002.h5: shard listed in the index for 5 samples is missing"),
    ("missing group", "group 'train-clean-100/11/1/11_1_1' is missing"),
    ("stray shard", "features_00009.h5: shard file not listed in hdf5_index.json"),
    ("truncated shard", "features_00001.h5: cannot be opened, truncated or corrupted"),
    ("mismatched T", "hidden_states has 20 frames but mel_spectrogram has 90"),
    ("malformed json", "malformed JSON"),
])
def test_inspect_reports_each_inconsistency(original_cache, capsys, kind, expected):
    cache, _ = original_cache
    break_cache(cache, kind)
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(cache)])
    assert exit_info.value.code == 1
    assert expected in capsys.readouterr().out


def test_inspect_a_healthy_cache(original_cache, capsys):
    cache, _ = original_cache
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(cache)])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "samples: 12, shards referenced: 3" in out and "compression: gzip" in out
    assert "dtypes: float16" in out and "frames per sample (T): min 20" in out


# --- the writer -----------------------------------------------------------------------------

@pytest.mark.parametrize("compression, workers", [("gzip", 2), ("none", 2), ("lzf", 0), ("gzip", 0)])
def test_writer_rolls_over_and_round_trips(tmp_path, compression, workers):
    rng = np.random.default_rng(3)
    samples = {f"s/{i:03d}": sample(rng, 10 + i) for i in range(23)}
    with ShardedCacheWriter(tmp_path / "c", samples_per_file=10, compression=compression,
                            shuffle=True, num_workers=workers) as w:
        for k, v in samples.items():
            w.write(k, v)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        ".rqf-writer.lock", "features_00001.h5", "features_00002.h5", "features_00003.h5",
        "hdf5_index.json", "hdf5_index.keys.h5"]  # the lock file stays; its OS lock went
    with H5ShardedStorage(str(tmp_path / "c")) as s:
        assert s.keys == list(samples)  # the order samples were written in
        for k, v in samples.items():
            got = s.read(k)
            assert got["hidden_states"].dtype == np.float16
            np.testing.assert_array_equal(got["hidden_states"], v["hidden_states"].astype(np.float16))
    with h5py.File(tmp_path / "c" / "features_00001.h5") as f:
        ds = f["s/000/hidden_states"]
        assert ds.compression == (None if compression == "none" else compression)


@pytest.mark.parametrize("codec, filter_id", [("zstd", 32015), ("lz4", 32004)])
def test_plugin_codecs_compressed_by_workers_read_back_through_the_hdf5_filter(
        tmp_path, monkeypatch, codec, filter_id):
    pytest.importorskip("hdf5plugin")  # registers the filters plain h5py reads through
    pytest.importorskip({"zstd": "zstandard", "lz4": "lz4.block"}[codec])
    rng = np.random.default_rng(5)
    samples = {f"s/{i:03d}": sample(rng, 10 + i) for i in range(12)}
    samples["s/zeros"] = {"hidden_states": np.zeros((40, 16), np.float32)}  # compresses well
    outside = rqf_h5_speech.codecs.chunk_compressor(codec, 4)
    made = []

    def counting(codec_name, level):
        def compress(buf):
            made.append(threading.current_thread().name)
            return outside(buf)
        return compress

    monkeypatch.setattr(rqf_h5_speech.writer, "chunk_compressor", counting)
    with ShardedCacheWriter(tmp_path / "c", compression=codec, num_workers=2) as w:
        for k, v in samples.items():
            w.write(k, v)
    assert len(made) == 12 * 2 + 1 and threading.main_thread().name not in made
    with h5py.File(tmp_path / "c" / "features_00001.h5") as f:  # plain h5py + the filter
        for k, v in samples.items():
            ds = f[k]["hidden_states"]
            assert ds.id.get_create_plist().get_filter(0)[0] == filter_id
            np.testing.assert_array_equal(ds[()], v["hidden_states"].astype(np.float16))
            stored = ds.id.read_direct_chunk((0, 0))[1]  # the bytes the workers made
            assert stored == outside(np.ascontiguousarray(v["hidden_states"], np.float16)
                                     .reshape(-1).view(np.uint8))
        assert f["s/zeros/hidden_states"].id.get_storage_size() < 40 * 16 * 2 / 10


def test_duplicate_keys_are_rejected_or_replaced_explicitly(tmp_path):
    rng = np.random.default_rng(4)
    first, second = sample(rng, 5), sample(rng, 7)
    with ShardedCacheWriter(tmp_path / "c", num_workers=0) as w:
        w.write("k", first)
        with pytest.raises(DataError, match="sample 'k' is already in the cache"):
            w.write("k", second)
    with ShardedCacheWriter(tmp_path / "c", num_workers=0, on_duplicate="replace") as w:
        w.write("k", second)
    with H5ShardedStorage(str(tmp_path / "c")) as s:
        assert s.keys == ["k"] and s.read("k")["hidden_states"].shape == (7, 16)


def test_writer_refuses_unsafe_keys(tmp_path):
    with ShardedCacheWriter(tmp_path / "c", num_workers=0) as w:
        for bad in ("../x", "/abs", "a//b", "a/./b"):
            with pytest.raises(DataError, match="not allowed"):
                w.write(bad, {"x": np.zeros(3)})


WRITER_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from rqf_h5_speech import ShardedCacheWriter
    out, start = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(start)
    w = ShardedCacheWriter(out, samples_per_file=50, commit_every=7, num_workers=2,
                           on_duplicate="skip")
    for i in range(start, 100000):
        key = f"spk{i % 5}/utt{i:06d}"
        w.write(key, {"hidden_states": np.full((40, 64), i % 1000, np.float32),
                      "mel_spectrogram": np.full((1, 41, 80), i % 1000, np.float32)})
        print(i, flush=True)
""")


def test_writer_killed_at_any_moment_keeps_every_indexed_sample(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    cache = tmp_path / "cache"
    rng = np.random.default_rng(0)
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(cache), "0"],
                                stdout=subprocess.PIPE, text=True)
        # let it write a random number of samples, then kill -9 mid-flight
        target = int(rng.integers(5, 60))
        for _ in range(target):
            proc.stdout.readline()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        with H5ShardedStorage(str(cache)) as storage:
            for key in storage.keys:
                arrays = storage.read(key)
                value = int(key[-6:]) % 1000
                assert arrays["hidden_states"].shape == (40, 64)
                assert (arrays["hidden_states"] == value).all()
            assert len(storage.keys) == len(set(storage.keys))
    # reopening resumes: partial shards go, nothing committed is duplicated or lost
    before = set(H5ShardedStorage(str(cache)).open().keys)
    with ShardedCacheWriter(cache, samples_per_file=50, commit_every=7, num_workers=2,
                            on_duplicate="skip") as w:
        assert set(w.index.table) == before
        for i in range(0, 60):
            w.write(f"spk{i % 5}/utt{i:06d}", {"hidden_states": np.full((40, 64), i, np.float32),
                                                "mel_spectrogram": np.full((1, 41, 80), i, np.float32)})
    assert not list(cache.glob("*.partial"))
    with H5ShardedStorage(str(cache)) as storage:
        assert {f"spk{i % 5}/utt{i:06d}" for i in range(60)} <= set(storage.keys)
        assert len(storage.keys) == len(set(storage.keys))


def test_shard_committed_but_not_yet_indexed_is_adopted(tmp_path):
    with ShardedCacheWriter(tmp_path / "c", commit_every=3, num_workers=0) as w:
        for i in range(6):
            w.write(f"k{i}", {"x": np.full(3, i, np.float32)})
    # a kill between the shard's rename and the index update: the index misses shard 2
    index_path = tmp_path / "c" / "hdf5_index.json"
    index = json.loads(index_path.read_text())
    index["sample_index"] = {k: v for k, v in index["sample_index"].items() if v["file_idx"] == 1}
    index_path.write_text(json.dumps(index))
    with ShardedCacheWriter(tmp_path / "c", commit_every=3, num_workers=0) as w:
        assert sorted(w.index.table) == [f"k{i}" for i in range(6)]
        w.write("k6", {"x": np.full(3, 6, np.float32)})
    with H5ShardedStorage(str(tmp_path / "c")) as s:
        assert s.read("k4")["x"].tolist() == [4, 4, 4]
        assert s.index.table.file_idx[s.index.table.position("k6")] == 3


def test_committed_samples_survive_and_loss_is_bounded_by_the_commit_interval(tmp_path):
    w = ShardedCacheWriter(tmp_path / "c", commit_every=4, num_workers=0)
    for i in range(10):
        w.write(f"k{i}", {"x": np.full(3, i, np.float32)})
    # while it writes (or after a crash): rqf reads the committed 8, not the 2 after them
    with H5ShardedStorage(str(tmp_path / "c")) as s:
        assert sorted(s.keys) == sorted(f"k{i}" for i in range(8))
        assert s.index.journal == [1, 2] and s.read("k5")["x"].tolist() == [5, 5, 5]
    assert list((tmp_path / "c").glob("*.partial"))
    # the seed's JSON index is written once, at close (commits only rename a shard)
    index = json.loads((tmp_path / "c" / "hdf5_index.json").read_text())
    assert index["sample_index"] == {}
    w.close()
    index = json.loads((tmp_path / "c" / "hdf5_index.json").read_text())
    assert sorted(index["sample_index"]) == sorted(f"k{i}" for i in range(10))
    assert index["sample_index"]["k9"] == {"file_idx": 3, "group_name": "k9"}


# --- migration ------------------------------------------------------------------------------

def test_migrate_npz_cache_and_verify(tmp_path, capsys):
    rng = np.random.default_rng(5)
    src = tmp_path / "npz"
    originals = {}
    for key in KEYS[:7]:
        arrays = sample(rng, 12)
        originals[key] = arrays
        path = src / f"{key}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
    with pytest.raises(SystemExit) as exit_info:
        main(["speech", "migrate", str(src), str(tmp_path / "out"), "--samples-per-file", "3",
              "--compression", "gzip"])
        raise SystemExit(0)
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["written"] == 7 and report["verified"] == 7
    assert 0 < report["max_abs_error"] < 1e-2
    with H5ShardedStorage(str(tmp_path / "out")) as s:
        assert sorted(s.keys) == sorted(KEYS[:7])
    again = migrate_npz(src, tmp_path / "out", samples_per_file=3, progress=False)
    assert again["written"] == 0 and again["already_present"] == 7


def test_migrate_reports_a_broken_npz(tmp_path):
    src = tmp_path / "npz"
    src.mkdir()
    (src / "bad.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="bad.npz: not a readable .npz file"):
        migrate_npz(src, tmp_path / "out", progress=False)
