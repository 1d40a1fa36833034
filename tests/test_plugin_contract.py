"""The core's seams as a plugin author meets them: data protocols a new storage implements to
reuse the datasets and splitters, a model from outside the tree encoded by ``rqf encode``,
one declaration of each component's parameters (defaults, all errors at once, JSON Schema),
slice reads, and ``rqf.testing``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

import rqf
import rqf.pipeline
import rqf.testing
from rqf.codes import SemanticIds
from rqf.testing import MemoryItems, toy_items, use_plugins
from rqf_h5_recsys.testing import recsys_pipeline, write_seed_items

FIXTURE = Path(__file__).parent / "plugins_fixture"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class NpzSequences(rqf.Storage):
    """Items and user sequences in one .npz: a storage that exists only in this test."""

    name = "npz_sequences"
    params = (rqf.Param("path", "path", help=".npz: item_ids, embeddings, users, offsets, items"),)

    def open(self):
        with np.load(self.config["path"], allow_pickle=False) as z:
            self.item_ids = z["item_ids"].astype(np.int64)
            self.embeddings = z["embeddings"].astype(np.float32)
            self.table = rqf.SequenceTable(z["users"].astype(object), z["offsets"], z["items"])
        self.sequence_rows = rqf.rows_of(self.item_ids, self.table.item_ids)
        return self

    def close(self):
        pass

    @property
    def embedding_dim(self):
        return self.embeddings.shape[1]

    def read_embeddings(self, rows):
        return self.embeddings[rows]

    def read_embedding_range(self, start, stop):
        return self.embeddings[start:stop]

    def read_features(self, rows):
        return np.zeros((len(rows), 0), np.int32), np.zeros(len(rows), np.int32)

    def describe(self):
        return {"n_items": len(self.item_ids), "embedding_dim": self.embedding_dim}


class KeysOnly(rqf.Storage):
    """A storage with no item vectors at all."""

    name = "keys_only"
    params = ()

    def open(self):
        return self

    def close(self):
        pass


@rqf.hookimpl
def register_storages(register):
    register(NpzSequences)
    register(KeysOnly)


THIS = sys.modules[__name__]


def npz_copy(files, path: Path) -> Path:
    from rqf_h5_recsys import H5RecsysStorage

    with H5RecsysStorage(str(files["items"]), str(files["sequences"])) as s:
        np.savez(path, item_ids=s.item_ids, embeddings=s.read_embedding_range(0, len(s.item_ids)),
                 users=np.asarray(s.table.user_ids, dtype=str), offsets=s.table.offsets,
                 items=s.table.item_ids)
    return path


def test_a_storage_defined_in_a_test_reuses_sequences_and_leave_last_out(recsys_files,
                                                                        tmp_path):
    npz = npz_copy(recsys_files, tmp_path / "data.npz")
    results = {}
    with use_plugins(THIS):
        for kind, storage in (("h5", None), ("npz", {"type": "npz_sequences", "path": str(npz)})):
            config = recsys_pipeline(recsys_files, tmp_path / kind, dataset={"type": "sequences"},
                                   splitter={"type": "leave_last_out"},
                                   model={"type": "lastitem_nn"})
            if storage:
                config["storage"] = storage
            results[kind] = rqf.run(config).metrics
            with h5py.File(tmp_path / kind / "recommendations.h5") as f:
                results[kind]["items"] = f["items"][()]
    h5, other = results["h5"], results["npz"]
    assert other["split"]["counts"] == h5["split"]["counts"] == {"train": 60, "valid": 50,
                                                                 "test": 55}
    assert other["split"]["leakage_check"]["passed"]
    np.testing.assert_array_equal(other["items"], h5["items"])
    assert other["test"] == h5["test"] and other["test"]["users"] == 55


def test_a_storage_without_the_members_is_refused_by_name(recsys_files, tmp_path):
    config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                           splitter={"type": "leave_last_out"})
    config["storage"] = {"type": "keys_only"}
    with use_plugins(THIS), pytest.raises(rqf.ConfigError) as err:
        rqf.run(config)
    message = str(err.value)
    assert "dataset.type: 'sequences' reads a SequenceSource and 'keys_only' lacks" in message
    assert "item_ids" in message and "read_embeddings" in message and "table" in message


def install_fixture(tmp_path: Path) -> dict[str, str]:
    """The out-of-tree plugin's metadata laid out as pip would, and an environment that sees it."""
    info = tmp_path / "site" / "rqf_toy_splitter-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rqf-toy-splitter\n"
                                   "Version: 0.0.1\n")
    (info / "entry_points.txt").write_text("[rqf]\ntoy = rqf_toy_splitter\n")
    path = os.pathsep.join([str(tmp_path / "site"), str(FIXTURE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "rqf", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_out_of_tree_tokenizer_is_run_and_encoded_by_rqf_encode(recsys_files, tmp_path):
    env = install_fixture(tmp_path)
    config = recsys_pipeline(recsys_files, tmp_path / "run", splitter={"type": "toy_every_nth", "n": 4},
                           model={"type": "toy_sign_codes", "levels": 3, "codebook_size": 4})
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(config))
    proc = cli(env, "run", str(pipeline))
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "run"
    assert (run_dir / "model.pt").exists()  # written by the pipeline, not by the model
    trained = SemanticIds(run_dir / "semantic_ids.h5")
    assert trained.codes.shape == (300, 3) and trained.codes.max() < 4

    rng = np.random.default_rng(3)
    new = rng.normal(size=(50, 16)).astype(np.float32)
    items = write_seed_items(tmp_path / "new_items.h5", np.arange(7, 57), new)
    proc = cli(env, "encode", str(run_dir), "--out", str(tmp_path / "new_ids.h5"),
               "--set", f"storage.items={items}", "--set", "storage.sequences=null")
    assert proc.returncode == 0, proc.stderr
    encoded = SemanticIds(tmp_path / "new_ids.h5")
    assert encoded.item_ids.tolist() == list(range(7, 57))
    # the codes are the trained model's: its saved centre and projection applied to new data
    saved = json.loads((run_dir / "model.pt").read_text())
    sys.path.insert(0, str(FIXTURE))
    try:
        from rqf_toy_splitter import SignCodes
    finally:
        sys.path.remove(str(FIXTURE))
    model = SignCodes(saved["data_info"], **saved["config"])
    model.mean = np.asarray(saved["mean"])
    np.testing.assert_array_equal(encoded.codes, model.code_rows(lambda a, b: new[a:b], 50).codes)
    assert encoded.attrs["tokenizer"] == "toy_sign_codes" and encoded.attrs["codebook_size"] == 4

    inside = cli(env, "encode", str(run_dir), "--out", str(run_dir / "x.h5"))
    assert inside.returncode == 2 and "inside the run folder" in inside.stderr
    assert not (run_dir / "x.h5").exists()


def test_rqf_encode_refuses_a_model_that_keeps_no_weights(recsys_files, tmp_path):
    config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                           splitter={"type": "leave_last_out"}, model={"type": "mostpop"})
    rqf.run(config)
    assert not (tmp_path / "run" / "model.pt").exists()
    with pytest.raises(rqf.RqfError, match="model 'mostpop' keeps no weights"):
        rqf.encode(tmp_path / "run", tmp_path / "ids.h5")
    with pytest.raises(rqf.RqfError, match="not an rqf run folder"):
        rqf.encode(tmp_path, tmp_path / "ids.h5")


def test_components_hold_every_declared_default_and_refuse_unknown_keys():
    splitter = rqf.IndexSplitter(seed=1, test_ratio=0.3)
    assert splitter.config == {"test_ratio": 0.3, "valid_ratio": 0.0, "shuffle": False}
    with pytest.raises(rqf.ConfigError) as err:
        rqf.IndexSplitter(test_ratoi=0.3, shuffle="yes")
    lines = str(err.value).splitlines()
    assert lines == ["splitter.test_ratoi: unknown key; did you mean 'test_ratio'?",
                     "splitter.shuffle: expected bool, got 'yes'"]


def _check_against(schema: dict, value, where: str) -> None:
    """A small JSON Schema check: enough of the vocabulary rqf's schema uses."""
    if "anyOf" in schema:
        fits = []
        for option in schema["anyOf"]:
            try:
                _check_against(option, value, where)
                fits.append(option)
            except AssertionError:
                pass
        assert fits, f"{where}: {value!r} fits no option"
        return
    if "const" in schema:
        assert value == schema["const"], where
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        python = {"integer": int, "number": (int, float), "boolean": bool, "string": str,
                  "array": list, "object": dict, "null": type(None)}
        assert any(isinstance(value, python[k]) and not (k in ("integer", "number")
                                                         and isinstance(value, bool))
                   for k in kinds), f"{where}: {value!r} is not {kinds}"
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in value.items():
            assert key in schema["properties"], f"{where}.{key}: not in the schema"
            _check_against(schema["properties"][key], sub, f"{where}.{key}")
        for key in schema.get("required", ()):
            assert key in value, f"{where}.{key}: required"


def test_json_schema_describes_every_example_and_rejects_a_typo(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rqf", "schema", "--out",
                           str(tmp_path / "schema.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads((tmp_path / "schema.json").read_text())
    model = {v["properties"]["type"]["const"]: v for v in schema["properties"]["model"]["anyOf"]
             if "properties" in v}
    assert model["rqvae"]["properties"]["codebook_size"]["default"] == 256
    assert model["rqvae"]["properties"]["collision_handling"]["enum"] == \
        ["suffix", "reassign", "balanced", "optimal"]
    assert schema["properties"]["train"]["properties"]["lr"]["type"] == "number"
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert len(examples) >= 8
    for path in examples:
        _check_against(schema, yaml.safe_load(path.read_text()), path.name)
    typo = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    typo["model"]["codebok_size"] = 8
    with pytest.raises(AssertionError, match="codebok_size"):
        _check_against(schema, typo, "typo")


def test_split_reads_are_slices_and_match_point_reads(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5000, 8)).astype(np.float32)
    path = write_seed_items(tmp_path / "items.h5", np.arange(5000), emb)
    calls = []

    def read_range(start, stop):
        calls.append((start, stop))
        return emb[start:stop]

    rows = np.r_[rng.choice(5000, 700), 3, 3, 4999, 0]
    np.testing.assert_array_equal(rqf.read_rows(read_range, rows), emb[rows])
    assert len(calls) < 40 and all(b > a for a, b in calls)
    np.testing.assert_array_equal(rqf.read_rows(read_range, np.zeros(0, int)), emb[:0])
    from rqf_h5_recsys import H5RecsysStorage

    with H5RecsysStorage(str(path), in_memory=False) as lazy:
        np.testing.assert_array_equal(lazy.read_embeddings(rows), emb[rows])
        features, lengths = lazy.read_features(rows)
        assert features.shape == (len(rows), 4) and (lengths == 0).all()


def test_reads_take_slices_for_dense_rows_and_one_selection_for_scattered_ones():
    emb = np.arange(20000 * 4, dtype=np.float32).reshape(20000, 4)
    slices, selections = [], []

    def read_range(start, stop):
        slices.append((start, stop))
        return emb[start:stop]

    def read_sorted(rows):
        assert (np.diff(rows) > 0).all()  # what an HDF5 selection needs
        selections.append(len(rows))
        return emb[rows]

    dense = np.arange(3000, 3500)
    scattered = np.arange(10000, 19000, 200)  # 200 rows apart: one run, 1 row in 200 wanted
    rows = np.random.default_rng(0).permutation(np.r_[dense[::2], scattered, 7, 7])
    np.testing.assert_array_equal(rqf.read_rows(read_range, rows, read_sorted=read_sorted),
                                  emb[rows])
    assert slices == [(3000, 3499)] and selections == [len(scattered) + 1]  # row 7 alone too
    # rows asked in increasing order and whole: the slice read is the answer, not a copy
    slices.clear()
    whole = rqf.read_rows(read_range, np.arange(100, 900), read_sorted=read_sorted)
    assert slices == [(100, 900)] and np.shares_memory(whole, emb)
    # without a sorted reader every run is a slice, as before
    slices.clear()
    np.testing.assert_array_equal(rqf.read_rows(read_range, rows), emb[rows])
    assert (10000, 18801) in slices


def test_memory_storage_from_rqf_testing_trains_a_tokenizer_with_only_the_core(tmp_path):
    storage = toy_items(200, 16)
    config = {"output_dir": str(tmp_path / "run"),
              "storage": {"type": "memory_items", **{k: storage.config[k] for k in
                                                     ("item_ids", "embeddings")}},
              "dataset": {"type": "memory_items"},
              "splitter": {"type": "index", "test_ratio": 0.2},
              "model": {"type": "rqkmeans", "levels": 2, "codebook_size": 8},
              "train": {"device": "cpu", "progress": False}}
    with use_plugins():
        result = rqf.run(config)
    ids = SemanticIds(tmp_path / "run" / "semantic_ids.h5")
    assert ids.item_ids.tolist() == list(range(1, 201))
    assert result.metrics["all"]["utilization"][0] > 0.5
    with pytest.raises(rqf.DataError, match="embeddings: NaN"):
        MemoryItems(item_ids=[1, 2], embeddings=[[0.0, float("nan")], [1.0, 1.0]]).open()


class Regression(rqf.TrainingTask):
    """A linear map fit to fixed targets; a sample is a dict of arrays as a Dataset gives."""

    def __init__(self, dim: int = 16):
        torch.manual_seed(0)
        super().__init__(torch.nn.Linear(dim, 1))
        self.steps = []

    def training_step(self, module, batch):
        x = batch["embedding"] if isinstance(batch, dict) else batch
        loss = (module(x).squeeze(-1) - x.sum(-1)).pow(2).mean()
        return loss, {}

    def param_groups(self):
        return [{"params": [self.module.weight]},
                {"params": [self.module.bias], "weight_decay": 0.0}]

    def after_step(self, step):
        self.steps.append(step)


def train_config(**values):
    return rqf.TrainConfig.from_mapping({"device": "cpu", "progress": False, "epochs": None,
                                         "optimizer": "sgd", "lr": 0.01, "scheduler": "constant",
                                         **values})


def test_accumulated_batches_make_the_same_step_as_one_large_batch():
    data = torch.randn(256, 16)
    weights = []
    for batch_size, accumulate in ((64, 1), (32, 2), (16, 4)):
        task = Regression()
        result = rqf.Trainer(train_config(max_steps=8, accumulate=accumulate), None) \
            .fit(task, rqf.TensorBatches(data, batch_size, seed=3))
        assert result.steps == 8 and task.steps == list(range(1, 9))
        assert result.samples == 8 * 64  # two epochs of four steps
        weights.append(task.module.weight.detach().clone())
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights[2], weights[0], rtol=1e-5, atol=1e-6)


def test_loader_batches_are_seeded_shared_by_ranks_and_skip_exactly():
    from rqf.training import DistInfo

    dataset = rqf.testing.MemoryItemsDataset(toy_items(103, 8).open())
    source = rqf.LoaderBatches(dataset, 10, seed=4)
    assert len(source) == 11
    full = source.batch_indices(2)
    assert sorted(i for b in full for i in b) == list(range(103))
    assert full != source.batch_indices(3) and full == source.batch_indices(2)
    resumed = list(source.epoch(2, skip=4))
    assert [b["item_id"].tolist() for b in resumed] == \
        [[i + 1 for i in b] for b in full[4:]]  # toy ids are row + 1
    workers = rqf.LoaderBatches(dataset, 10, seed=4, num_workers=2)
    for a, b in zip(workers.epoch(2), source.epoch(2)):
        torch.testing.assert_close(a["embedding"], b["embedding"])
    shares = [rqf.LoaderBatches(dataset, 10, seed=4, info=DistInfo(r, 2, r)).batch_indices(0)
              for r in (0, 1)]
    seen = [{i for b in share for i in b} for share in shares]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 51


def test_a_task_on_loader_batches_resumes_to_the_same_weights(tmp_path):
    dataset = rqf.testing.MemoryItemsDataset(toy_items(120, 16).open())

    def train(max_steps, run_dir, resume=False):
        task = Regression()
        cfg = train_config(max_steps=max_steps, accumulate=2, checkpoint_every=3)
        rqf.Trainer(cfg, run_dir, resume=resume).fit(
            task, rqf.LoaderBatches(dataset, 16, seed=1, num_workers=1))
        return task.module.weight.detach().clone()

    straight = train(10, tmp_path / "straight")
    train(6, tmp_path / "split")
    resumed = train(10, tmp_path / "split", resume=True)
    torch.testing.assert_close(resumed, straight)


def test_a_view_over_item_ids_never_reads_the_embeddings(recsys_files, tmp_path):
    """MostPop over sequences needs no vector: a NaN in the embeddings does not stop it, while
    a model that reads vectors is refused by name, by rqf validate and by rqf run."""
    with h5py.File(recsys_files["items"], "a") as f:
        f["embeddings"][5, 0] = np.nan
    config = recsys_pipeline(recsys_files, tmp_path / "pop", dataset={"type": "sequences"},
                           splitter={"type": "leave_last_out"}, model={"type": "mostpop"})
    assert rqf.run(config).metrics["test"]["users"] == 55
    tiny_rqvae = {"type": "rqvae", "latent_dim": 8, "hidden_dims": [32]}
    for model in ({"type": "lastitem_nn"}, tiny_rqvae):
        config["model"], config["output_dir"] = model, str(tmp_path / model["type"])
        with pytest.raises(rqf.DataError, match="embeddings: 1 rows hold NaN or Inf, first at "
                                                "row 5 \\(item id 106\\)"):
            rqf.pipeline.validate(config)
        with pytest.raises(rqf.DataError, match="1 rows hold NaN"):
            rqf.run(config)
