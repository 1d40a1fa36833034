"""h5_speech: the speech datasets, the speaker split, batches and the utterance loader."""

import re

import h5py
import numpy as np
import pytest
import torch

import rqf
import rqf_h5_speech
from rqf_h5_speech.testing import KEYS, sample, speech_pipeline, write_like_original
from rqf.errors import DataError
from rqf_h5_speech import (H5ShardedStorage, SpeechFramesDataset, UtterancesDataset,
                           collate_utterances)
from rqf_h5_speech.splitters import SpeakerSplitter
from rqf.testing import needs


# --- datasets and splitters ----------------------------------------------------------------

def test_utterances_normalise_with_saved_streaming_stats(original_cache, tmp_path):
    cache, samples = original_cache
    stats = tmp_path / "stats.npz"
    with H5ShardedStorage(str(cache)) as storage:
        data = UtterancesDataset(storage, normalize=True, stats_file=str(stats))
        assert stats.exists()
        frames = np.concatenate([samples[k]["hidden_states"].astype(np.float16).astype(np.float64)
                                 for k in KEYS])
        with np.load(stats) as z:
            np.testing.assert_allclose(z["mean"], frames.mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(z["std"], frames.std(0), rtol=1e-4, atol=1e-5)
        x = data[3]["hidden_states"]
        assert data[3]["mel"].shape == x.shape[:1] + (80,)
        batch = collate_utterances([data[0], data[5]])
        assert batch["hidden_states"].shape == (2, 55, 16)
        assert batch["mask"].sum().item() == 20 + 55
        assert data.describe()["input_dim"] == 16


def test_speech_frames_cap_long_utterances(original_cache):
    cache, _ = original_cache
    with H5ShardedStorage(str(cache)) as storage:
        data = SpeechFramesDataset(storage, frames_per_utterance=25)
        expected = sum(min(20 + 7 * i, 25) for i in range(len(KEYS)))
        assert data.vectors().shape == (expected, 16)
        np.testing.assert_array_equal(data[11]["frames"], data[11]["frames"])  # deterministic


def test_speaker_split_keeps_speakers_apart(original_cache):
    cache, _ = original_cache
    with H5ShardedStorage(str(cache)) as storage:
        splitter = SpeakerSplitter(seed=0, test_ratio=0.25, valid_ratio=0.25)
        splits = splitter.split(UtterancesDataset(storage))
        speakers = {r: {k.split("/")[1] for k in v.keys} for r, v in splits.items()}
        assert [len(speakers[r]) for r in ("train", "valid", "test")] == [2, 1, 1]
        assert not (speakers["train"] & speakers["test"])
        assert splitter.report["leakage_check"]["passed"]


def test_dataloader_workers_open_their_own_handles(original_cache):
    cache, _ = original_cache
    with H5ShardedStorage(str(cache)) as storage:
        data = UtterancesDataset(storage)
        data[0]  # the parent opens a shard before the workers fork
        loader = torch.utils.data.DataLoader(data, batch_size=3, num_workers=2,
                                             collate_fn=collate_utterances)
        keys = [k for batch in loader for k in batch["keys"]]
        assert keys == KEYS


@needs("rqf_rqvae")  # a model to validate and run the pipeline with
def test_speech_tokens_pipeline_exports_a_readable_token_cache(original_cache, tmp_path):
    cache, _ = original_cache
    result = rqf.run(speech_pipeline(cache, tmp_path / "run"))
    assert result.metrics["split"]["speakers"] == {"train": 3, "test": 1}
    with H5ShardedStorage(result.artifacts["codes"]) as tokens:
        assert tokens.keys == KEYS
        codes = tokens.read(KEYS[4])["semantic_codes"]
        assert codes.dtype == np.int16 and codes.shape == (48, 2)
        assert codes.min() >= 0 and codes.max() < 8
    # frame tokens: usage, perplexity and throughput; no item-collision figures
    test = result.metrics["test"]
    assert test["frames_per_second"] > 0 and len(test["perplexity"]) == 2
    assert "collision_rate" not in test and "moved_share" not in test
    header = result.summary.splitlines()[0]
    assert "frames/s" in header and "collisions" not in header and "moved" not in header
    assert result.metrics["health"]["checked"]


# --- batches and the utterance loader ------------------------------------------------------

@pytest.mark.parametrize("float16", [True, False])
def test_read_batch_pads_cuts_to_mel_and_matches_each_sample(tmp_path, float16):
    rng = np.random.default_rng(3)
    samples = {k: sample(rng, 20 + 7 * i) for i, k in enumerate(KEYS)}
    samples[KEYS[2]]["mel_spectrogram"] = samples[KEYS[2]]["mel_spectrogram"][:, :-2]  # T-1
    cache = write_like_original(tmp_path / "cache", samples, float16=float16)
    with H5ShardedStorage(str(cache)) as storage:
        data = UtterancesDataset(storage)
        batch = data.read_batch([5, 2, 0])
        assert batch["keys"] == [KEYS[5], KEYS[2], KEYS[0]]
        np.testing.assert_array_equal(batch["lengths"], [55, 33, 20])  # KEYS[2]: mel is shorter
        assert batch["hidden_states"].shape == (3, 55, 16) and batch["mel"].shape == (3, 55, 80)
        assert batch["hidden_states"].dtype == (np.float16 if float16 else np.float32)
        for row, (key, t) in enumerate(zip(batch["keys"], batch["lengths"])):
            want = samples[key]["hidden_states"][:t]
            want = want.astype(np.float16) if float16 else want
            np.testing.assert_array_equal(batch["hidden_states"][row, :t], want)
            mel = samples[key]["mel_spectrogram"][0, :t]
            np.testing.assert_array_equal(batch["mel"][row, :t],
                                          mel.astype(np.float16) if float16 else mel)
            assert not batch["hidden_states"][row, t:].any() and not batch["mel"][row, t:].any()
            assert batch["mask"][row].sum() == t and batch["mask"][row, :t].all()
        one = data[2]
        np.testing.assert_array_equal(one["hidden_states"], batch["hidden_states"][1, :33])


def test_read_batch_normalises_with_the_statistics(original_cache, tmp_path):
    cache, samples = original_cache
    with H5ShardedStorage(str(cache)) as storage:
        data = UtterancesDataset(storage, normalize=True)
        batch = data.read_batch([1, 4])
        mean, std = data.stats
        x = samples[KEYS[4]]["hidden_states"].astype(np.float16).astype(np.float32)
        assert batch["hidden_states"].dtype == np.float32
        np.testing.assert_allclose(batch["hidden_states"][1], (x - mean) / std, rtol=1e-5, atol=1e-5)
        assert not batch["hidden_states"][0, batch["lengths"][0]:].any()


def _reference(data, keys):
    return data.read_batch([data.keys.index(k) for k in keys])


@pytest.mark.parametrize("workers", [0, 2])
def test_utterance_loader_batches_match_in_process_reads(original_cache, workers):
    cache, _ = original_cache
    with H5ShardedStorage(str(cache)) as storage:
        data = UtterancesDataset(storage)
        data[0]  # the parent opens a shard before the workers fork
        loader = rqf_h5_speech.UtteranceLoader(data, batch_size=5, num_workers=workers,
                                               shuffle=True, seed=1)
        assert len(loader) == 3
        batches = list(loader)
        assert sorted(k for b in batches for k in b["keys"]) == sorted(KEYS)
        assert [len(b["keys"]) for b in batches] == [5, 5, 2]
        for b in batches:
            ref = _reference(data, b["keys"])
            for name in ("hidden_states", "mel", "mask", "lengths"):
                assert isinstance(b[name], torch.Tensor)
                np.testing.assert_array_equal(b[name].numpy(), ref[name])
        again = [k for b in rqf_h5_speech.UtteranceLoader(data, batch_size=5, shuffle=True,
                                                          seed=1) for k in b["keys"]]
        assert again == [k for b in batches for k in b["keys"]]  # the seed fixes the order


def test_utterance_loader_reuses_slots_but_never_under_a_kept_batch(original_cache):
    cache, _ = original_cache
    with H5ShardedStorage(str(cache)) as storage:
        data = UtterancesDataset(storage)
        loader = rqf_h5_speech.UtteranceLoader(data, batch_size=2, num_workers=2, shuffle=True,
                                               prefetch_factor=1, slots_per_worker=2)
        kept = [b for _ in range(3) for b in loader]  # 18 batches held: slots run out
        for b in kept:
            ref = _reference(data, b["keys"])
            np.testing.assert_array_equal(b["hidden_states"].numpy(), ref["hidden_states"])
            np.testing.assert_array_equal(b["mel"].numpy(), ref["mel"])
        assert loader.counts["fresh"] > 0  # workers fell back instead of overwriting
        del kept, b
        before = dict(loader.counts)
        views = []
        for _ in range(3):
            for b in loader:  # streamed: each batch dropped before the next but one
                ref = _reference(data, b["keys"])
                np.testing.assert_array_equal(b["hidden_states"].numpy(), ref["hidden_states"])
                views.append(b["hidden_states"][0, :3].clone())
        assert loader.counts["reused"] > before["reused"]  # the slots' memory came back
        assert len(views) == 18


def test_utterance_loader_reports_a_broken_sample_from_a_worker(original_cache, monkeypatch):
    cache, _ = original_cache
    with h5py.File(cache / "features_00001.h5", "a") as f:  # the 3rd sample; not the 1st,
        del f[KEYS[2]]["mel_spectrogram"]                    # which sets the feature width
        f[KEYS[2]].create_dataset("mel_spectrogram", data=np.zeros((1, 90, 80), np.float16))
    monkeypatch.setattr(rqf_h5_speech.datasets, "CHECKED_AT_BUILD", 0)  # a worker meets it
    loader = rqf_h5_speech.UtteranceLoader(str(cache), batch_size=4, num_workers=1)
    with pytest.raises(DataError, match="11_1_2': hidden_states has 34 frames but mel_spectrogram has 90"):
        list(loader)


def test_utterance_loader_copies_out_when_references_cannot_be_counted(original_cache,
                                                                      monkeypatch):
    monkeypatch.setattr(rqf_h5_speech.loader, "_use_count", None)
    cache, _ = original_cache
    with H5ShardedStorage(str(cache)) as storage:
        data = UtterancesDataset(storage)
        loader = rqf_h5_speech.UtteranceLoader(data, batch_size=2, num_workers=2,
                                               prefetch_factor=1, slots_per_worker=2)
        kept = [b for _ in range(2) for b in loader]
        for b in kept:  # copies: the slots went back at once and were written again
            np.testing.assert_array_equal(b["hidden_states"].numpy(),
                                          _reference(data, b["keys"])["hidden_states"])
        assert loader.counts["reused"] > 0 and not loader._lent


def test_utterance_loader_workers_started_with_spawn(original_cache):
    cache, _ = original_cache
    with H5ShardedStorage(str(cache)) as storage:
        data = UtterancesDataset(storage)
        loader = rqf_h5_speech.UtteranceLoader(data, batch_size=4, num_workers=1,
                                               multiprocessing_context="spawn")
        batches = list(loader)
        assert [k for b in batches for k in b["keys"]] == KEYS
        for b in batches:
            np.testing.assert_array_equal(b["mel"].numpy(), _reference(data, b["keys"])["mel"])
        assert loader.counts["new_slot"] >= 1  # the slot memory crossed to this process


@pytest.mark.parametrize("keys, params, speaker", [
    # VCTK and LibriSpeech name utterances without a '/': by a separator and part, or a pattern
    ([f"p{s}_{u:03d}" for s in (225, 226, 227, 228) for u in range(3)],
     {"speaker_separator": "_", "speaker_level": 0}, lambda k: k.split("_")[0]),
    ([f"{s}-121123-{u:04d}" for s in (84, 85, 86, 87) for u in range(3)],
     {"speaker_pattern": r"^(\d+)-"}, lambda k: k.split("-")[0]),
])
def test_speaker_split_reads_the_speaker_of_keys_in_other_shapes(tmp_path, keys, params, speaker):
    from rqf_h5_speech import ShardedCacheWriter

    with ShardedCacheWriter(tmp_path / "c", samples_per_file=8, num_workers=0) as w:
        for key in keys:
            w.write(key, {"hidden_states": np.zeros((4, 8), np.float32)})
    with H5ShardedStorage(str(tmp_path / "c")) as storage:
        splitter = SpeakerSplitter(seed=0, test_ratio=0.25, valid_ratio=0.25, **params)
        splits = splitter.split(UtterancesDataset(storage))
        sets = {r: {speaker(k) for k in v.keys} for r, v in splits.items()}
        assert [len(sets[r]) for r in ("train", "valid", "test")] == [2, 1, 1]
        assert splitter.report["leakage_check"]["passed"]
        assert sum(len(v) for v in splits.values()) == len(keys)


def test_speaker_settings_that_cannot_name_a_speaker_are_refused(tmp_path):
    from rqf_h5_speech import ShardedCacheWriter

    with ShardedCacheWriter(tmp_path / "c", samples_per_file=8, num_workers=0) as w:
        for key in ("p225_001", "p226_001"):
            w.write(key, {"hidden_states": np.zeros((4, 8), np.float32)})
    with H5ShardedStorage(str(tmp_path / "c")) as storage:
        data = UtterancesDataset(storage)
        for params, error, fragment in (
                ({}, DataError, "no part 1 (split at '/')"),
                ({"speaker_pattern": r"p\d+"}, rqf.ConfigError, "has 0 groups"),
                ({"speaker_pattern": r"(p"}, rqf.ConfigError, "is not a regular expression"),
                ({"speaker_pattern": r"^(s\d+)"}, DataError, "finds no speaker")):
            with pytest.raises(error, match=re.escape(fragment)):
                SpeakerSplitter(seed=0, **params).split(data)
