"""Hostile inputs get one clear line and nothing else: absurd values and sizes, hostile YAML,
edge data, pickled code, corrupted semantic IDs; real processes."""

from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import pytest
import torch

from rqf.testing import one_line_error, pipeline_file, rqf_proc
from rqf_h5_recsys.testing import recsys_pipeline, write_seed_items

PYTHON = sys.executable


# --- the pipeline file and the run's saved config -------------------------------------------

def test_absurd_values_are_refused_before_the_run_folder_exists(tmp_path, recsys_files):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run))
    one_line_error(rqf_proc("run", str(path), "--set", "train.batch_size=99999999999999999999999"),
                   "train.batch_size: expected int of at most 64 bits")
    one_line_error(rqf_proc("run", str(path), "--set", "train.lr=.nan"),
                   "train.lr: expected a finite float")
    one_line_error(rqf_proc("run", str(path), "--set", "train.lr=.inf"),
                   "train.lr: expected a finite float")
    assert not run.exists()


@pytest.mark.parametrize("model, train, fragment", [
    ({"type": "tiger", "beam": 10**9}, {}, "model.beam: 1000000000 beams for 300 items"),
    ({"type": "tiger", "layers": 100000}, {}, "model.layers, model.history: a network of"),
    ({"type": "tiger", "ff": 100000}, {}, "train.batch_size, model.history, model.ff: a training"),
    ({"type": "tiger", "user_tokens": 10**12}, {}, "model.user_tokens, model.d_model: a network"),
    ({"type": "sasrec", "top_k": 10**9}, {}, "model.top_k: the top 1,000,000,000 items of up"),
    ({"type": "lastitem_nn", "history": 10**9}, {}, "model.history: histories of 1000000000 items"),
    ({"type": "rqvae", "codebook_size": 10**9}, {}, "model.hidden_dims: an RQ-VAE of 1.6e+10"),
    ({"type": "rqvae", "hidden_dims": [10**8]}, {}, "model.hidden_dims: an RQ-VAE of 5e+09"),
    ({"type": "rqvae", "levels": 10**5}, {}, "model.levels: expected a value <= 64"),
    ({"type": "rqkmeans", "kmeans_iters": 10**9}, {}, "model.kmeans_iters: expected a value <="),
    ({"type": "rqkmeans", "codebook_size": 10**9}, {}, "model.codebook_size: 3 x 1000000000 codes"),
])
def test_absurd_sizes_are_refused_with_the_key_and_the_estimate(tmp_path, recsys_files, model,
                                                                train, fragment):
    from rqf.codes import write_semantic_ids

    if model["type"] in ("tiger", "lastitem_nn", "sasrec"):
        ids = write_semantic_ids(tmp_path / "ids.h5", np.arange(101, 401),
                                 np.arange(900).reshape(300, 3) % 8, None, {"codebook_size": 8})
        if model["type"] == "tiger":
            model = {**model, "semantic_ids": str(ids)}
        config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                                 splitter={"type": "leave_last_out"}, model=model)
    else:
        config = recsys_pipeline(recsys_files, tmp_path / "run", model=model)
    path = pipeline_file(tmp_path, config)
    for command in ("validate", "run"):  # validate refuses what run would, before training
        one_line_error(rqf_proc(command, str(path), timeout=60), fragment)
    assert not (tmp_path / "run").exists()


def test_deeply_nested_yaml_is_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: x\nmodel: " + "[" * 20000 + "]" * 20000 + "\n")
    one_line_error(rqf_proc("validate", str(deep)), f"{deep}: invalid YAML: nested deeper")
    less = tmp_path / "less.yaml"
    less.write_text("name: x\nmodel: " + "[" * 50 + "]" * 50 + "\n")
    one_line_error(rqf_proc("validate", str(less)), "nested more than 32 levels deep")
    fine = tmp_path / "fine.yaml"
    fine.write_text("name: x\n")
    one_line_error(rqf_proc("validate", str(fine), "--set", "model=" + "[" * 20000 + "]" * 20000),
                   "--set model: the value is nested deeper than a pipeline can be")
    one_line_error(rqf_proc("validate", str(fine), "--set", "model=" + "[" * 50 + "]" * 50),
                   "--set model: model[0]", "nested more than 32 levels deep")


def test_an_alias_bomb_or_a_self_alias_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\nmodel: {type: rqvae, hidden_dims: *a8}\n")
    # 9^9 values once expanded: measured by its distinct nodes, refused long before a timeout
    one_line_error(rqf_proc("validate", str(bomb), timeout=30), "expands to more than 200,000 values")
    looped = tmp_path / "loop.yaml"
    looped.write_text("model: &m {type: rqvae, hidden_dims: [*m]}\n")
    one_line_error(rqf_proc("validate", str(looped), timeout=30), "a value contains itself")


def test_yaml_base_60_numbers_are_not_read_as_numbers(tmp_path, recsys_files):
    config = recsys_pipeline(recsys_files, tmp_path / "run", dataset={"type": "sequences"},
                             splitter={"type": "leave_last_out"}, model={"type": "mostpop"})
    path = pipeline_file(tmp_path, config)
    text = path.read_text()
    assert "  type: mostpop\n" in text
    path.write_text(text.replace("  type: mostpop\n", "  type: mostpop\n  history: 1:30\n"))
    one_line_error(rqf_proc("validate", str(path)), "model.history", "'1:30'")
    one_line_error(rqf_proc("validate", str(path), "--set", "model.history=0:20"),
                   "model.history", "'0:20'")


def test_edge_data_gets_one_line_that_says_what_is_wrong(tmp_path, recsys_files):
    from rqf.codes import write_semantic_ids
    from rqf_h5_recsys.testing import write_seed_sequences

    items = write_seed_items(tmp_path / "items.h5", np.arange(1, 11),
                             np.random.default_rng(0).normal(size=(10, 4)))
    with h5py.File(tmp_path / "none.h5", "w") as f:  # a catalogue without interactions
        f.create_dataset("user_ids", (0,), dtype=h5py.string_dtype())
        f.create_dataset("sequences", (0,), dtype=h5py.vlen_dtype(np.int64))
        f.create_dataset("sequence_lengths", data=np.zeros(0, np.int32))
        f.attrs["n_sequences"] = 0
    three = write_seed_sequences(tmp_path / "three.h5", ["a", "b"], [[1, 2, 3], [4, 5, 6]])
    empty_ids = write_semantic_ids(tmp_path / "empty_ids.h5", np.zeros(0, np.int64),
                                   np.zeros((0, 2), np.int64), None, {"codebook_size": 4})
    ids = write_semantic_ids(tmp_path / "ids.h5", np.arange(1, 11),
                             np.arange(20).reshape(10, 2) % 4, None, {"codebook_size": 4})

    def pipeline(sequences, model):
        return pipeline_file(tmp_path, {
            "output_dir": str(tmp_path / "run"),
            "storage": {"type": "h5_recsys", "items": str(items), "sequences": str(sequences)},
            "dataset": "sequences", "splitter": "leave_last_out", "model": model,
            "train": {"progress": False, "max_steps": 2}})

    for command in ("validate", "run"):
        one_line_error(rqf_proc(command, str(pipeline(tmp_path / "none.h5", {"type": "mostpop"}))),
                       "none.h5: holds no user sequences")
    one_line_error(rqf_proc("validate", str(pipeline(three, {"type": "tiger",
                                                             "semantic_ids": str(empty_ids)}))),
                   "empty_ids.h5: holds no items")
    one_line_error(rqf_proc("run", str(pipeline(three, {"type": "tiger", "semantic_ids": str(ids),
                                                        "beam": 10}))),
                   "no next-item examples", "a user needs four")


@pytest.mark.parametrize("text, fragment", [
    ("name: [unclosed\n", "invalid YAML at line 2"),
    ("!!python/object/apply:os.system ['touch pwned']\n", "invalid YAML"),
])
def test_a_broken_run_config_names_the_file(tmp_path, recsys_files, text, fragment):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run))
    assert rqf_proc("run", str(path)).returncode == 0
    (run / "metrics.json").unlink()  # an unfinished run
    (run / "config.yaml").write_text(text)
    for args in (["run", str(path), "--resume"],
                 ["rqvae", "encode", str(run), "--out", str(tmp_path / "x.h5")]):
        one_line_error(rqf_proc(*args, cwd=tmp_path), f"{run / 'config.yaml'}: ", fragment)
    assert not (tmp_path / "pwned").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path, recsys_files):
    run = tmp_path / "run"
    path = pipeline_file(tmp_path, recsys_pipeline(recsys_files, run))
    assert rqf_proc("run", str(path)).returncode == 0
    (run / "metrics.json").unlink()
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    torch.save({"format": "rqf-checkpoint-1", "step": 1, "model": _Payload()}, checkpoint)
    proc = rqf_proc("run", str(path), "--resume", cwd=tmp_path)
    last = one_line_error(proc, str(checkpoint), "refused", "could run code")
    assert "weights_only" not in proc.stderr and "weights_only" not in last
    assert not (tmp_path / "pwned").exists()


def test_embeddings_of_an_unusable_scale_fail_validation(tmp_path, recsys_files):
    from rqf.testing import clustered

    items = write_seed_items(tmp_path / "huge.h5", np.arange(1, 301), clustered(300, 16, 8) * 1e30)
    config = recsys_pipeline(recsys_files, tmp_path / "run")
    config["storage"] = {"type": "h5_recsys", "items": str(items)}
    one_line_error(rqf_proc("validate", str(pipeline_file(tmp_path, config))),
                   "huge.h5", "embeddings", "unusable scale")
    proc = rqf_proc("inspect", str(items))
    assert proc.returncode == 1 and "unusable scale" in proc.stdout


def test_a_run_that_reconstructs_nothing_says_so(tmp_path, recsys_files):
    from rqf.testing import clustered

    items = write_seed_items(tmp_path / "big.h5", np.arange(1, 301), clustered(300, 16, 8) * 1e12)
    config = recsys_pipeline(recsys_files, tmp_path / "run")
    config["storage"] = {"type": "h5_recsys", "items": str(items)}
    proc = rqf_proc("run", str(pipeline_file(tmp_path, config)))
    assert proc.returncode == 0
    assert "warning: unhealthy result: the reconstruction keeps almost nothing" in proc.stderr
    assert "model.normalize: standardize" in proc.stderr


# --- a corrupted semantic_ids.h5 -----------------------------------------------------------

def _short_ids(f):
    ids = f["item_ids"][()]
    del f["item_ids"]
    f["item_ids"] = ids[:-5]


def _repeated_id(f):
    ids = f["item_ids"][()]
    ids[1] = ids[0]
    f["item_ids"][...] = ids


def _code_out_of_range(f):
    f["codes"][0, 0] = 9999


def _shuffled_order(f):
    order = f["lookup_order"][()]
    f["lookup_order"][...] = order[::-1]


@pytest.mark.parametrize("corrupt, fragment", [
    (_short_ids, "codes has 300 rows, item_ids has 295"),
    (_repeated_id, "item_ids repeats"),
    (_code_out_of_range, "codes must lie in 0..15"),
    (_shuffled_order, "lookup_order does not sort them"),
    ("truncate", "not a readable semantic_ids.h5 file"),
])
def test_lookup_on_a_corrupted_file_is_one_line(tmp_path, corrupt, fragment):
    from rqf.codes import write_semantic_ids

    rng = np.random.default_rng(0)
    ids = write_semantic_ids(tmp_path / "semantic_ids.h5", np.arange(101, 401),
                             rng.integers(0, 16, (300, 2)), None, {"codebook_size": 16})
    assert rqf_proc("rqvae", "lookup", str(ids), "--item", "101").returncode == 0
    if corrupt == "truncate":
        ids.write_bytes(ids.read_bytes()[:4000])
    else:
        with h5py.File(ids, "a") as f:
            corrupt(f)
    one_line_error(rqf_proc("rqvae", "lookup", str(ids), "--item", "101"), str(ids), fragment)
