"""Every example pipeline runs as it is (in a reduced form) on freshly written demo data."""

import shutil
from pathlib import Path

import h5py
import pytest
import yaml

import rqf
from rqf.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PIPELINES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    shutil.copytree(EXAMPLES, root / "examples")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", str(root / "demo_data")])
        raise SystemExit(0)
    assert exit_info.value.code == 0
    return root


def test_every_example_is_covered():
    assert {"quickstart.yaml", "swap_splitter.yaml", "movielens_temporal.yaml",
            "amazon_auto.yaml", "speech_tokens.yaml", "rqkmeans.yaml", "tiger.yaml",
            "tiger_paper.yaml", "sasrec.yaml", "retrieval.yaml"} <= set(PIPELINES)


# in order: tiger and genret read the IDs the rqkmeans example wrote
READS_IDS = ("tiger", "retrieval")
ORDERED = sorted(PIPELINES, key=lambda name: name.startswith(READS_IDS))


@pytest.mark.parametrize("name", ORDERED)
def test_example_runs(workspace, name):
    overrides = ["train.epochs=1", "train.progress=false"]
    if name.startswith(READS_IDS):  # a few steps, on the CPU
        overrides += ["train.max_steps=5", "train.device=cpu", "train.precision=fp32"]
    if name == "tiger_paper.yaml":  # the GPU size decodes 3,000 users for a minute on a CPU
        overrides += ["model.layers=1"]
    result = rqf.run(workspace / "examples" / name, overrides)
    assert result.run_dir.is_relative_to(workspace / "runs")
    assert (result.run_dir / "metrics.json").exists() and (result.run_dir / "report.md").exists()
    if name.startswith((*READS_IDS, "sasrec")):  # rankers
        assert result.metrics["test"]["users"] == 1500 and "recall@10" in result.metrics["test"]
        assert (result.run_dir / "recommendations.h5").exists()
    elif "codes" in result.artifacts:
        assert any(Path(result.artifacts["codes"]).glob("features_*.h5"))
    else:
        with h5py.File(result.run_dir / "semantic_ids.h5") as f:
            assert f["item_ids"].shape[0] == 4000  # every item of the demo catalogue


def test_swapping_the_splitter_is_one_line():
    quick = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    swapped = yaml.safe_load((EXAMPLES / "swap_splitter.yaml").read_text())
    differing = {k for k in quick if quick[k] != swapped.get(k)}
    assert differing == {"name", "output_dir", "splitter"}
    assert swapped["splitter"] == {"type": "temporal"}


def test_amazon_example_falls_back_to_index(workspace):
    result = rqf.run(workspace / "examples" / "amazon_auto.yaml",
                     ["train.epochs=1", "train.progress=false",
                      f"output_dir={workspace / 'runs' / 'amazon_check'}"])
    assert result.metrics["split"]["chose"] == "index"
    assert result.metrics["split"]["counts"] == {"train": 1200, "test": 300}


def test_multi_gpu_example_uses_torchrun_and_writes_inside_the_checkout():
    script = (EXAMPLES / "multi_gpu.sh").read_text()
    assert "torch.distributed.run --standalone" in script and "-m rqf" in script
    assert "examples/quickstart.yaml" in script
    assert "output_dir=runs/" in script and "../" not in script
