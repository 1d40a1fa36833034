"""h5_speech: `rqf speech extract`, audio to a feature cache with a tiny, randomly initialised
w2v-BERT 2.0 built from its configuration (no weights can be downloaded here)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="extract needs rqf-h5-speech[extract]")
soundfile = pytest.importorskip("soundfile", reason="extract needs rqf-h5-speech[extract]")
pytest.importorskip("soxr", reason="extract needs rqf-h5-speech[extract]")

from rqf.cli import main  # noqa: E402
from rqf.testing import on_small_disk, small_disk_works  # noqa: E402
from rqf_h5_speech import H5ShardedStorage  # noqa: E402
from rqf_h5_speech.audio import AudioItem  # noqa: E402
from rqf_h5_speech.cache import CacheIndex  # noqa: E402
from rqf_h5_speech.extract import Encoder, by_length, shares  # noqa: E402

WIDTH, LAYERS, LAYER = 24, 3, 2
RQF = [sys.executable, "-c", "from rqf.cli import main; main()"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("w2v-bert-tiny")
    config = Wav2Vec2BertConfig(hidden_size=WIDTH, num_hidden_layers=LAYERS,
                                num_attention_heads=2, intermediate_size=48,
                                output_hidden_size=WIDTH, conv_depthwise_kernel_size=3)
    Wav2Vec2BertModel(config).save_pretrained(folder)
    SeamlessM4TFeatureExtractor().save_pretrained(folder)
    return folder


def tone(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t)
            + 0.02 * rng.normal(size=t.size)).astype(np.float32)


def write_corpus(root: Path, speakers=("p225", "p226"), per_speaker=3) -> dict[str, tuple[float, int]]:
    """VCTK-like files (p225/p225_001.wav), at 16, 22.05 and 24 kHz, wav and flac."""
    made = {}
    for s, spk in enumerate(speakers):
        (root / spk).mkdir(parents=True, exist_ok=True)
        for u in range(per_speaker):
            rate = (16000, 22050, 24000)[u % 3]
            seconds = 0.4 + 0.37 * u + 0.11 * s
            ext = "flac" if u % 3 == 2 else "wav"
            soundfile.write(root / spk / f"{spk}_{u:03d}.{ext}", tone(seconds, rate, s * 10 + u),
                            rate)
            made[f"{spk}/{spk}_{u:03d}"] = (seconds, rate)
    return made


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr()


def extract_args(audio, out, model, *more):
    return ["speech", "extract", str(audio), str(out), "--model", str(model),
            "--layer", str(LAYER), "--no-progress", *more]


def expected_frames(seconds: float, rate: int) -> int:
    """w2v-BERT's frames: a 25 ms / 10 ms fbank at 16 kHz, two frames stacked."""
    n = int(seconds * rate)
    n16 = int(round(n * 16000 / rate))
    return ((n16 - 400) // 160 + 1) // 2


def test_extract_writes_every_file_as_a_key_with_the_models_width_and_80_mel_bins(
        tmp_path, tiny_model, capsys):
    made = write_corpus(tmp_path / "audio")
    code, out = run_cli(capsys, *extract_args(tmp_path / "audio", tmp_path / "cache", tiny_model,
                                              "--workers", "0"))
    assert code == 0, out.err
    report = json.loads(out.out)
    assert report["extracted"] == len(made) and report["already_done"] == 0
    storage = H5ShardedStorage(str(tmp_path / "cache")).open()
    assert sorted(storage.keys) == sorted(made)
    for key, (seconds, rate) in made.items():
        arrays = storage.read(key)
        t = arrays["hidden_states"].shape[0]
        assert arrays["hidden_states"].shape == (t, WIDTH)
        assert arrays["hidden_states"].dtype == np.float16
        assert arrays["mel_spectrogram"].shape == (1, t, 80)
        # the model's frames at hop 320 (20 ms); the mel, one frame longer, cut to them
        assert abs(t - expected_frames(seconds, rate)) <= 1
        assert abs(t - seconds * 16000 / 320) <= 2
        assert np.isfinite(arrays["mel_spectrogram"]).all()
    with __import__("h5py").File(tmp_path / "cache" / "features_00001.h5") as f:
        assert f.attrs["layer"] == LAYER and f.attrs["hop_length"] == 320
        assert f.attrs["sample_rate"] == 16000 and f.attrs["mel_bins"] == 80
    code, out = run_cli(capsys, "inspect", str(tmp_path / "cache"))
    assert code == 0 and f"samples: {len(made)}" in out.out and "problems: none" in out.out


def test_the_stored_layer_is_the_full_models_hidden_state_batched_or_alone(tmp_path, tiny_model):
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    made = write_corpus(tmp_path / "audio", speakers=("a",), per_speaker=3)
    enc = Encoder(str(tiny_model), LAYER)
    assert len(enc.model.encoder.layers) == LAYER  # the layers after it never run
    from rqf_h5_speech.extract import extract

    extract(tmp_path / "audio", tmp_path / "cache", str(tiny_model), LAYER, workers=0,
            progress=False)
    storage = H5ShardedStorage(str(tmp_path / "cache")).open()
    fe = AutoFeatureExtractor.from_pretrained(tiny_model)
    full = AutoModel.from_pretrained(tiny_model).eval()
    from rqf_h5_speech.audio import load_audio

    for key in made:
        path = next((tmp_path / "audio").glob(key + ".*"))
        audio = load_audio(AudioItem(key, str(path), 1.0), 16000)
        with torch.no_grad():
            alone = full(**fe(audio, sampling_rate=16000, return_tensors="pt"),
                         output_hidden_states=True).hidden_states[LAYER][0].numpy()
        stored = storage.read(key)["hidden_states"].astype(np.float32)
        assert np.allclose(stored, alone[: len(stored)], atol=2e-2 * np.abs(alone).max())


def test_a_killed_extraction_started_again_extracts_only_what_was_missing(tmp_path, tiny_model):
    for i in range(4):
        write_corpus(tmp_path / "audio" / f"part{i}", speakers=("p1", "p2", "p3"))
    total = 36
    args = RQF + extract_args(tmp_path / "audio", tmp_path / "cache", tiny_model, "--workers", "0",
                              "--samples-per-file", "2", "--batch-seconds", "0.1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None \
            and not list((tmp_path / "cache").glob("features_00002.h5")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(CacheIndex.load(tmp_path / "cache").table) \
        if (tmp_path / "cache" / "hdf5_index.json").exists() else \
        len(CacheIndex.from_shards(tmp_path / "cache", 2, True).table)
    assert before < total  # killed part-way
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["already_done"] == before and report["extracted"] == total - before
    keys = list(H5ShardedStorage(str(tmp_path / "cache")).open().keys)
    assert len(keys) == len(set(keys)) == total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_under_torchrun_give_one_merged_cache_with_every_key_once(tmp_path, tiny_model):
    made = write_corpus(tmp_path / "audio", speakers=("p225", "p226", "p227"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={free_port()}", "--master_addr=127.0.0.1"]
    args = torchrun + ["-m", "rqf"] + \
        extract_args(tmp_path / "audio", tmp_path / "cache", tiny_model, "--workers", "0")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["ranks"] == 2
    assert reports[0]["extracted"] == len(made)
    parts = sorted((tmp_path / "cache.parts").iterdir())
    assert [p.name for p in parts] == ["rank-00000", "rank-00001"]
    held = [set(CacheIndex.load(p).table) for p in parts]
    assert held[0] and held[1] and not held[0] & held[1]
    keys = list(H5ShardedStorage(str(tmp_path / "cache")).open().keys)
    assert sorted(keys) == sorted(made)
    # again, on one process: nothing to do, every key still once
    again = subprocess.run(RQF + extract_args(tmp_path / "audio", tmp_path / "cache", tiny_model),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["already_done"] == len(made)
    assert sorted(H5ShardedStorage(str(tmp_path / "cache")).open().keys) == sorted(made)


def test_stats_of_the_layer_are_kept_with_the_cache_and_read_back_by_the_datasets(
        tmp_path, tiny_model, capsys):
    import torch

    from rqf_h5_speech import SpeechFramesDataset

    write_corpus(tmp_path / "audio")
    code, out = run_cli(capsys, *extract_args(tmp_path / "audio", tmp_path / "cache", tiny_model,
                                              "--workers", "0", "--stats", "all"))
    assert code == 0, out.err
    storage = H5ShardedStorage(str(tmp_path / "cache")).open()
    frames = np.concatenate([storage.read(k)["hidden_states"].astype(np.float64)
                             for k in storage.keys])
    with np.load(tmp_path / "cache" / "feature_stats.npz") as z:
        assert int(z["frames"]) == len(frames)
        assert np.allclose(z["mean"], frames.mean(0), atol=1e-5)
        assert np.allclose(z["var"], frames.var(0), rtol=1e-4)
        kept_mean = z["mean"]
    data = SpeechFramesDataset(storage, normalize=True)
    assert np.allclose(data.stats[0], kept_mean)
    # MaskGCT's own statistics file (a torch dict of mean and var) taken as it is
    mean, var = np.full(WIDTH, 0.5, np.float32), np.full(WIDTH, 4.0, np.float32)
    torch.save({"mean": torch.from_numpy(mean), "var": torch.from_numpy(var)},
               tmp_path / "w2v_stats.pt")
    code, out = run_cli(capsys, *extract_args(tmp_path / "audio", tmp_path / "cache", tiny_model,
                                              "--stats", str(tmp_path / "w2v_stats.pt")))
    assert code == 0, out.err
    data = SpeechFramesDataset(H5ShardedStorage(str(tmp_path / "cache")).open(), normalize=True)
    assert np.allclose(data.stats[0], 0.5) and np.allclose(data.stats[1], 2.0)


def test_examples_speech_maskgct_trains_on_an_extracted_cache(tmp_path, tiny_model, capsys):
    import yaml

    write_corpus(tmp_path / "audio", speakers=("p225", "p226", "p227", "p228"))
    code, out = run_cli(capsys, *extract_args(tmp_path / "audio", tmp_path / "cache", tiny_model,
                                              "--workers", "0"))
    assert code == 0, out.err
    example = Path(__file__).parents[3] / "examples" / "speech_maskgct.yaml"
    config = yaml.safe_load(example.read_text())
    config["storage"]["processed_dir"] = str(tmp_path / "cache")
    config["output_dir"] = str(tmp_path / "run")
    config["model"]["hidden_dims"] = [32]
    config["train"] = {"max_steps": 20, "batch_size": 128}
    config["splitter"] = {"type": "speaker", "test_ratio": 0.25, "valid_ratio": 0.25}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    code, out = run_cli(capsys, "run", str(tmp_path / "p.yaml"))
    assert code == 0, out.err
    tokens = H5ShardedStorage(str(tmp_path / "run" / "codes")).open()
    assert len(tokens.keys) == 12


@pytest.mark.parametrize("case", ["corrupt", "layer", "not_a_cache", "same_key", "other_layer",
                                  "too_short"])
def test_bad_input_is_refused_in_one_line_before_anything_is_written(tmp_path, tiny_model,
                                                                      capsys, case):
    write_corpus(tmp_path / "audio")
    out_dir, layer = tmp_path / "cache", LAYER
    if case == "corrupt":
        (tmp_path / "audio" / "p225" / "p225_009.wav").write_bytes(b"RIFF not audio")
        expect = "p225_009.wav: not a readable audio file"
    elif case == "layer":
        layer, expect = 9, "--layer 9: "
    elif case == "not_a_cache":
        out_dir.mkdir()
        (out_dir / "notes.txt").write_text("mine")
        expect = "a folder that is not a feature cache"
    elif case == "too_short":
        soundfile.write(tmp_path / "audio" / "p226" / "p226_009.wav", tone(0.01, 16000, 1), 16000)
        expect = "'p226/p226_009' lasts 0.010 s, under the 0.040 s that give one frame"
    elif case == "same_key":
        soundfile.write(tmp_path / "audio" / "p225" / "p225_000.flac", tone(0.5, 16000, 1), 16000)
        expect = "would both be stored as 'p225/p225_000'"
    else:
        code, _ = run_cli(capsys, *extract_args(tmp_path / "audio", out_dir, tiny_model))
        assert code == 0
        layer, expect = 1, "extracted with layer 2, this run asks for 1"
    before = sorted(p.name for p in out_dir.rglob("*")) if out_dir.exists() else None
    args = extract_args(tmp_path / "audio", out_dir, tiny_model)
    args[args.index("--layer") + 1] = str(layer)
    code, out = run_cli(capsys, *args)
    assert code != 0 and expect in out.err and "Traceback" not in out.err
    assert len(out.err.strip().splitlines()) == 1
    assert (sorted(p.name for p in out_dir.rglob("*")) if out_dir.exists() else None) == before


def test_a_list_of_paths_and_a_lhotse_manifest_are_read_as_they_are(tmp_path, tiny_model, capsys):
    made = write_corpus(tmp_path / "audio")
    lines = [f"audio/{key}.{'flac' if key.endswith('2') else 'wav'}" for key in made]
    (tmp_path / "list.txt").write_text("\n".join(lines[:4]) + "\nutt-x\t" + lines[4] + "\n")
    code, out = run_cli(capsys, *extract_args(tmp_path / "list.txt", tmp_path / "c1", tiny_model))
    assert code == 0, out.err
    keys = sorted(H5ShardedStorage(str(tmp_path / "c1")).open().keys)
    assert keys == sorted(list(made)[:4] + ["utt-x"])
    lhotse = pytest.importorskip("lhotse")
    recordings = lhotse.RecordingSet.from_recordings(
        lhotse.Recording.from_file(tmp_path / line, recording_id=f"rec{i}")
        for i, line in enumerate(lines))
    cuts = lhotse.CutSet.from_manifests(recordings=recordings)
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    code, out = run_cli(capsys, *extract_args(tmp_path / "cuts.jsonl.gz", tmp_path / "c2",
                                              tiny_model))
    assert code == 0, out.err
    storage = H5ShardedStorage(str(tmp_path / "c2")).open()
    assert len(storage.keys) == len(made)
    assert all(storage.read(k)["hidden_states"].shape[1] == WIDTH for k in storage.keys)
    recordings.to_file(tmp_path / "recordings.jsonl.gz")  # a recording manifest, as it is
    code, out = run_cli(capsys, *extract_args(tmp_path / "recordings.jsonl.gz", tmp_path / "c3",
                                              tiny_model))
    assert code == 0, out.err
    assert sorted(H5ShardedStorage(str(tmp_path / "c3")).open().keys) == \
        sorted(f"rec{i}" for i in range(len(lines)))


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_float16_features_agree_with_the_cpus(tmp_path, tiny_model):
    from rqf_h5_speech.extract import extract

    write_corpus(tmp_path / "audio")
    for device in ("cpu", "cuda"):
        report = extract(tmp_path / "audio", tmp_path / device, str(tiny_model), LAYER,
                         device=device, progress=False)
        assert report["device"].startswith(device)
    cpu = H5ShardedStorage(str(tmp_path / "cpu")).open()
    gpu = H5ShardedStorage(str(tmp_path / "cuda")).open()
    assert list(cpu.keys) == list(gpu.keys)
    for key in cpu.keys:
        a = cpu.read(key)["hidden_states"].astype(np.float32)
        b = gpu.read(key)["hidden_states"].astype(np.float32)
        assert a.shape == b.shape and np.allclose(a, b, atol=5e-2 * np.abs(a).max())


def test_batches_by_length_pad_little_and_rank_shares_are_disjoint_and_balanced():
    rng = np.random.default_rng(0)
    items = [AudioItem(f"u{i}", "", float(s)) for i, s in enumerate(rng.uniform(1, 15, 500))]
    batches = by_length(items, 60.0)
    assert sorted(it.key for b in batches for it in b) == sorted(it.key for it in items)
    padded = sum(len(b) * max(it.seconds for it in b) for b in batches)
    assert all(len(b) * max(it.seconds for it in b) <= 60.0 or len(b) == 1 for b in batches)
    assert 1 - sum(it.seconds for it in items) / padded < 0.05
    parts = shares(items, 3)
    assert sorted(it.key for p in parts for it in p) == sorted(it.key for it in items)
    loads = [sum(it.seconds for it in p) for p in parts]
    assert max(loads) - min(loads) <= 15.0
    assert [[it.key for it in p] for p in shares(list(reversed(items)), 3)] == \
        [[it.key for it in p] for p in parts]  # depends on the files, not their order


def test_a_second_extraction_into_the_same_cache_is_refused_while_the_first_runs(
        tmp_path, tiny_model):
    for i in range(4):
        write_corpus(tmp_path / "audio" / f"part{i}", speakers=("p1", "p2", "p3"))
    args = RQF + extract_args(tmp_path / "audio", tmp_path / "cache", tiny_model, "--workers", "0",
                              "--samples-per-file", "2", "--batch-seconds", "0.1")
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None \
                and not list((tmp_path / "cache").glob("features_00001.h5")):
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # holding the cache's writer lock
        second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    assert second.returncode != 0 and "Traceback" not in second.stderr
    assert "another cache writer is writing here" in second.stderr.strip().splitlines()[-1]
    keys = list(H5ShardedStorage(str(tmp_path / "cache")).open().keys)
    assert len(keys) == len(set(keys)) == 36


@pytest.mark.skipif(not small_disk_works(), reason="cannot mount a small tmpfs (user namespaces)")
def test_a_full_disk_is_one_line_and_every_committed_utterance_stays(tmp_path, tiny_model):
    for i in range(4):
        write_corpus(tmp_path / "audio" / f"part{i}", speakers=("p1", "p2", "p3"))
    disk = tmp_path / "disk"
    python = sys.executable
    proc = on_small_disk(disk, "120k", f"{python} -m rqf speech extract {tmp_path}/audio "
                                       f"{disk}/c --model {tiny_model} --layer {LAYER} "
                                       "--samples-per-file 2 --no-progress; echo rc=$?; "
                                       f"ls -A {disk}/c; {python} -m rqf inspect {disk}/c --full;"
                                       " echo inspect=$?")
    assert "rc=2" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no space left on device while writing {disk}/c"), last
    assert ".partial" not in proc.stdout and "inspect=0" in proc.stdout
    assert "samples: 0" not in proc.stdout
