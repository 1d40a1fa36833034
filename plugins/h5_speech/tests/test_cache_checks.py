"""Strict speech caches: inspect, validate and the loaders refuse the same broken caches."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import yaml

import rqf_h5_speech.inspection
from rqf.cli import main
from rqf.errors import DataError
from rqf_h5_speech import H5ShardedStorage, UtterancesDataset, migrate_npz
from rqf.testing import needs
from rqf_h5_speech.testing import KEYS

BAD = KEYS[4]  # in the first shard, and not the sample that sets the feature width


def replace_array(cache, name, value, key=BAD):
    with h5py.File(cache / "features_00001.h5", "a") as f:
        if name in f[key]:
            del f[key][name]
        if value is not None:
            f[key].create_dataset(name, data=value)


def _nan(cache):
    with h5py.File(cache / "features_00001.h5", "a") as f:
        f[BAD]["hidden_states"][3, 2] = np.nan


def _inf_mel(cache):
    with h5py.File(cache / "features_00001.h5", "a") as f:
        f[BAD]["mel_spectrogram"][0, 1, 5] = np.inf


SAMPLE_CASES = {
    "nan": (_nan, "hidden_states holds 1 NaN or Inf values"),
    "inf in mel": (_inf_mel, "mel_spectrogram holds 1 NaN or Inf values"),
    "integer": (lambda c: replace_array(c, "hidden_states", np.ones((48, 16), np.int32)),
                "hidden_states has dtype int32, expected float16, float32 or float64"),
    "complex": (lambda c: replace_array(c, "hidden_states", np.ones((48, 16), np.complex64)),
                "hidden_states has dtype complex64"),
    "string": (lambda c: replace_array(c, "hidden_states", np.array([[b"x"] * 16] * 48)),
               "hidden_states has dtype |S1"),
    "rank 1": (lambda c: replace_array(c, "hidden_states", np.ones(48, np.float16)),
               "hidden_states must be (T, dim), found shape (48,)"),
    "other width": (lambda c: replace_array(c, "hidden_states", np.ones((48, 12), np.float16)),
                    "hidden_states is 12-wide, the cache's other samples are 16-wide"),
    "no features": (lambda c: replace_array(c, "hidden_states", None),
                    "no hidden_states array (found mel_spectrogram)"),
    "zero frames": (lambda c: replace_array(c, "hidden_states", np.ones((0, 16), np.float16)),
                    "hidden_states is empty, shape (0, 16)"),
    "T mismatch": (lambda c: replace_array(c, "mel_spectrogram", np.ones((1, 90, 80), np.float16)),
                   "hidden_states has 48 frames but mel_spectrogram has 90"),
    "mel width": (lambda c: replace_array(c, "mel_spectrogram", np.ones((1, 49, 64), np.float16)),
                  "mel_spectrogram must be (T, 80) or (1, T, 80), found shape (1, 49, 64)"),
}


def _index(cache, change):
    path = cache / "hdf5_index.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _duplicate_key(cache):
    path = cache / "hdf5_index.json"
    text = path.read_text()
    entry = json.dumps({"file_idx": 1, "group_name": KEYS[0]})
    path.write_text(text.replace('"sample_index": {', f'"sample_index": {{"{KEYS[0]}": {entry}, ', 1))


def _outside_symlink(cache):
    outside = cache.parent / "elsewhere.h5"
    os.replace(cache / "features_00002.h5", outside)
    os.symlink(outside, cache / "features_00002.h5")


def _unlisted(cache):
    with h5py.File(cache / "features_00007.h5", "w") as f:
        f.create_dataset("x/hidden_states", data=np.ones((3, 16), np.float16))


INDEX_CASES = {
    "use_float16 as a string": (lambda c: _index(c, lambda d: d.update(use_float16="no")),
                                "use_float16: expected true or false, got 'no'"),
    "file_idx as a bool": (lambda c: _index(c, lambda d: d["sample_index"][KEYS[0]].update(
        file_idx=True)), "expected {'file_idx': int >= 0, 'group_name': str}, got"),
    "key twice": (_duplicate_key, f"key '{KEYS[0]}' appears twice in one mapping"),
    "symlink outside": (_outside_symlink, "outside the cache folder"),
    "unlisted shard": (_unlisted, "features_00007.h5: shard file not listed in hdf5_index.json"),
}


def inspect_says(cache, capsys, *flags):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(cache), *flags])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().out


def validate_says(cache, tmp_path, capsys, dataset="utterances"):
    path = tmp_path / "speech.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"type": "h5_sharded", "processed_dir": str(cache)},
        "dataset": {"type": dataset}, "splitter": {"type": "speaker", "test_ratio": 0.25},
        "model": {"type": "rqvae", "levels": 1, "codebook_size": 4, "hidden_dims": [8]}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(path)])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


@needs("rqf_rqvae")  # a model to validate and run the pipeline with
@pytest.mark.parametrize("case", SAMPLE_CASES)
def test_a_broken_sample_is_refused_by_inspect_validate_and_the_loaders(original_cache, tmp_path,
                                                                       capsys, case):
    cache, _ = original_cache
    breaks, message = SAMPLE_CASES[case]
    breaks(cache)
    code, out = inspect_says(cache, capsys)
    assert code == 1 and message in out
    for dataset in ("utterances", "speech_frames"):
        code, err = validate_says(cache, tmp_path, capsys, dataset)
        assert code == 2 and message in err and err.count("\n") == 1, err
    with H5ShardedStorage(str(cache)) as storage:
        view = UtterancesDataset(storage, keys=[KEYS[0], BAD])  # a view: checked as it reads
        assert view[0]["length"] == 20
        with pytest.raises(DataError, match="sample '" + BAD):
            view.read_batch([0, 1])
        if "mel" not in case:  # features() reads the feature alone
            with pytest.raises(DataError, match="sample '" + BAD):
                view.features(BAD)


@needs("rqf_rqvae")  # a model to validate and run the pipeline with
@pytest.mark.parametrize("case", INDEX_CASES)
def test_a_broken_index_or_shard_set_is_refused_everywhere(original_cache, tmp_path, capsys, case):
    cache, _ = original_cache
    breaks, message = INDEX_CASES[case]
    breaks(cache)
    code, out = inspect_says(cache, capsys)
    assert code == 1 and message in out
    code, err = validate_says(cache, tmp_path, capsys)
    assert code == 2 and message in err
    with pytest.raises(DataError) as exc:
        H5ShardedStorage(str(cache)).open()
    assert message in str(exc.value)


def test_inspect_samples_a_large_cache_and_says_so_and_full_reads_everything(
        original_cache, capsys, monkeypatch):
    cache, _ = original_cache
    monkeypatch.setattr(rqf_h5_speech.inspection, "INSPECT_SAMPLES", 3)  # checks 0, 6 and 11
    _nan(cache)  # KEYS[4]: not among the sampled
    code, out = inspect_says(cache, capsys)
    assert code == 0 and "checked 3 of 12 samples, evenly spread" in out
    assert "rqf inspect --full checks every one" in out
    code, out = inspect_says(cache, capsys, "--full")
    assert code == 1 and "hidden_states holds 1 NaN or Inf values" in out
    assert "checked all 12 samples" in out


def test_a_mel_under_another_name_is_refused_at_migration_until_renamed(tmp_path):
    source = tmp_path / "npz"
    source.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez(source / f"u{i}.npz", hidden_states=rng.normal(size=(20, 16)).astype(np.float32),
                 mel=rng.normal(size=(1, 21, 80)).astype(np.float32))
    with pytest.raises(DataError, match="pass --rename mel=mel_spectrogram"):
        migrate_npz(source, tmp_path / "c", progress=False)
    report = migrate_npz(source, tmp_path / "c2", progress=False, rename={"mel": "mel_spectrogram"})
    assert report["verified"] == 3
    with H5ShardedStorage(str(tmp_path / "c2")) as storage:
        assert storage.read("u1")["mel_spectrogram"].shape == (1, 21, 80)
        assert len(UtterancesDataset(storage).read_batch([0, 1, 2])["mel"]) == 3
    np.savez(source / "u9.npz", feats=np.ones((4, 16), np.float32))
    with pytest.raises(DataError, match="u9.npz: no hidden_states array"):
        migrate_npz(source, tmp_path / "c3", progress=False, rename={"mel": "mel_spectrogram"})
