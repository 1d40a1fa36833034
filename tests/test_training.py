"""The shared training loop: resume after a kill, checkpoints, precision, DDP under torchrun."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

import rqf
from rqf_h5_recsys.testing import recsys_pipeline
from rqf.errors import RqfError
from rqf.training import (TensorBatches, TrainConfig, Trainer, TrainingTask, list_checkpoints,
                          load_checkpoint)


def long_pipeline(files, out):
    return recsys_pipeline(files, out, train={"epochs": 400, "batch_size": 32,
                                            "checkpoint_every": 25, "progress": False})


def test_killed_run_resumes_to_the_same_end(tmp_path, recsys_files):
    # uninterrupted reference
    reference = rqf.run(long_pipeline(recsys_files, tmp_path / "ref"))
    # the same run, killed with SIGKILL once a few checkpoints exist, then resumed
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(long_pipeline(recsys_files, tmp_path / "run")))
    proc = subprocess.Popen([sys.executable, "-m", "rqf", "run", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and (not list_checkpoints(ckpt) or
                                      list_checkpoints(ckpt)[-1][0] < 75):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = list_checkpoints(ckpt)[-1][0]
    total = reference.metrics["fit"]["steps"]
    assert 0 < killed_at < total, "the run must be killed part-way"
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(RqfError, match="unfinished run; pass --resume"):
        rqf.run(path)
    resumed = rqf.run(path, resume=True)
    assert resumed.metrics["fit"]["resumed_from"] >= killed_at
    assert resumed.metrics["fit"]["steps"] == total
    with h5py.File(tmp_path / "ref" / "semantic_ids.h5") as a, \
            h5py.File(tmp_path / "run" / "semantic_ids.h5") as b:
        np.testing.assert_array_equal(a["codes"][()], b["codes"][()])
        np.testing.assert_allclose(a["codebooks"][()], b["codebooks"][()], rtol=1e-5, atol=1e-6)


def test_resume_refuses_a_different_pipeline(tmp_path, recsys_files):
    config = recsys_pipeline(recsys_files, tmp_path / "run")
    rqf.run(config)
    (tmp_path / "run" / "metrics.json").unlink()
    config["model"]["levels"] = 3
    with pytest.raises(RqfError, match="--resume: model differs"):
        rqf.run(config, resume=True)


def test_checkpoints_are_kept_bounded_and_load_safely(tmp_path):
    cfg = TrainConfig(epochs=5, batch_size=8, checkpoint_every=3, keep_checkpoints=2,
                      progress=False)
    module = torch.nn.Linear(4, 1)
    data = torch.randn(40, 4)
    trainer = Trainer(cfg, tmp_path, seed=0)
    trainer.fit(TrainingTask.of(module, lambda m, b: ((m(b) ** 2).mean(), {})),
                TensorBatches(data, 8))
    steps = [s for s, _ in list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [24, 25]
    payload = load_checkpoint(tmp_path / "checkpoints" / "step_00000025.pt")
    assert payload["step"] == 25 and set(payload["rng"]) >= {"torch", "numpy", "python"}


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RqfError, match="not a readable rqf checkpoint"):
        load_checkpoint(bad)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(precision):
    cfg = TrainConfig(epochs=30, batch_size=16, precision=precision, progress=False,
                      checkpoint_every=0, lr=1e-2)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    data = torch.randn(64, 8)
    loss = lambda m, b: (((m(b).float() - b) ** 2).mean(), {})
    before = loss(module, data)[0].item()
    Trainer(cfg, None).fit(TrainingTask.of(module, loss), TensorBatches(data, 16))
    assert loss(module, data)[0].item() < 0.5 * before


def test_diverging_loss_is_reported(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4, progress=False, log_every=1, grad_clip=None)
    module = torch.nn.Linear(2, 1)
    with pytest.raises(RqfError, match="training diverged: loss is nan"):
        Trainer(cfg, None).fit(TrainingTask.of(module, lambda m, b: (m(b).sum() * float("nan"), {})),
                               TensorBatches(torch.randn(8, 2), 4))


def test_tensor_batches_shard_disjointly_across_ranks():
    from rqf.training import DistInfo

    data = torch.arange(20).float()[:, None]
    seen = []
    for rank in range(2):
        batches = TensorBatches(data, 4, seed=1, info=DistInfo(rank, 2, rank))
        seen.append(torch.cat(list(batches.epoch(0))).flatten().tolist())
    # each rank's epoch covers its whole share: 10 samples in batches of 4, 3 and 3
    assert len(seen[0]) == len(seen[1]) == 10
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(20))


def _ddp_worker(config: dict, marker_dir: str) -> None:
    import rqf as rqf_mod
    from rqf.training import dist_info

    result = rqf_mod.run(config)
    info = dist_info()
    Path(marker_dir, f"rank{info.rank}.txt").write_text(
        f"{info.world_size} {bool(result.artifacts)}")


@pytest.mark.slow
def test_two_process_torchrun_on_cpu_only_rank0_writes(tmp_path, recsys_files):
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = recsys_pipeline(recsys_files, tmp_path / "run",
                           train={"epochs": 4, "batch_size": 32, "device": "cpu",
                                  "checkpoint_every": 5})
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id="rqf-test",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1)
    markers = tmp_path / "markers"
    markers.mkdir()
    elastic_launch(launch, _ddp_worker)(config, str(markers))
    # both ranks ran the pipeline in a world of two; only rank 0 produced results
    assert (markers / "rank0.txt").read_text() == "2 True"
    assert (markers / "rank1.txt").read_text() == "2 False"
    run = tmp_path / "run"
    metrics = yaml.safe_load((run / "metrics.json").read_text())
    # 210 training items shared by two ranks: 105 each, all of them in 4 batches per epoch
    assert metrics["fit"]["steps"] == 16
    assert not [p for p in run.rglob("*.tmp")], "temporary files left behind"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["step_00000015.pt", "step_00000016.pt"]
