"""Hostile inputs as real processes: does every one get one clear line, and does none damage a file?

Builds a workspace in a temporary folder (item and sequence files, a speech cache, finished
rqvae, mostpop and tiger runs), then runs each case as ``python -m rqf ...`` under a time limit,
after breaking a copy of what the case attacks. Each case is judged:

- ``clear``: refused with exit 2 and only ``error:`` lines (no traceback, no "rerun with --debug");
- ``accepted``: exit 0, the input was usable after all;
- ``wrong``: exit 0 for an input that must be refused (the case says so);
- ``unclear``: any other ending;
- ``damaged``: a file the case did not ask to write changed or vanished (whatever the exit);
- ``hung``: still running at the time limit.

    python benchmarks/hostile_inputs.py            # the table by category
    python benchmarks/hostile_inputs.py --verbose  # and every case with its last line
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

from rqf.codes import write_semantic_ids  # noqa: E402
from rqf.testing import clustered  # noqa: E402
from rqf_h5_recsys.testing import write_seed_items, write_seed_sequences  # noqa: E402

PYTHON = sys.executable
LIMIT_S = 60


@dataclass
class Case:
    category: str
    name: str
    args: list[str]
    setup: Callable[[Path], None] | None = None
    may_write: list[str] = field(default_factory=list)  # paths relative to the workspace
    keep: list[str] = field(default_factory=list)  # user files inside may_write that must stay
    refuse: bool = False  # an input no command may accept: exit 0 is "wrong"


def rqf(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "rqf", *args], capture_output=True, text=True, cwd=ws,
                          timeout=600)


def pipeline(ws: Path, name: str, config: dict) -> str:
    path = ws / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path.name


def base(ws: Path, out: str = "runs/new", **sections) -> dict:
    config = {"output_dir": out,
              "storage": {"type": "h5_recsys", "items": "item_data.h5",
                          "sequences": "sequence.h5"},
              "dataset": {"type": "items"}, "splitter": {"type": "index", "test_ratio": 0.2},
              "model": {"type": "rqvae", "latent_dim": 8, "hidden_dims": [32],
                        "codebook_size": 16, "levels": 2},
              "train": {"max_steps": 20, "progress": False, "batch_size": 64}}
    config.update(sections)
    return config


def sequences(**model) -> dict:
    return {"dataset": {"type": "sequences"}, "splitter": {"type": "leave_last_out"},
            "model": model}


def build_workspace(ws: Path) -> None:
    rng = np.random.default_rng(0)
    ids = np.arange(101, 401)
    write_seed_items(ws / "item_data.h5", ids, clustered(300, 16, 8))
    seqs = [rng.choice(ids, size=3 + u % 10, replace=False) for u in range(80)]
    write_seed_sequences(ws / "sequence.h5", [f"u{u}" for u in range(80)], seqs)
    write_semantic_ids(ws / "other_ids.h5", np.arange(1, 5001),
                       rng.integers(0, 8, (5000, 3)), None, {"codebook_size": 8})
    from rqf_h5_speech import ShardedCacheWriter

    with ShardedCacheWriter(ws / "cache", samples_per_file=4, num_workers=0) as w:
        for k in range(12):
            t = 20 + k
            w.write(f"{k % 3}/{k}", {"hidden_states": rng.normal(size=(t, 16)).astype(np.float32),
                                     "mel_spectrogram": rng.normal(size=(1, t + 1, 80))
                                     .astype(np.float32)})
    (ws / "notes.txt").write_text("a user's file\n")
    for name, config in (("rqvae", base(ws, "runs/rqvae")),
                         ("mostpop", base(ws, "runs/mostpop", **sequences(type="mostpop")))):
        proc = rqf(ws, "run", pipeline(ws, name, config))
        assert proc.returncode == 0, proc.stderr
    tiger = base(ws, "runs/tiger", **sequences(type="tiger",
                                               semantic_ids="runs/rqvae/semantic_ids.h5"))
    tiger["train"] = {"max_steps": 4, "progress": False, "eval_every": 2}
    proc = rqf(ws, "run", pipeline(ws, "tiger", tiger))
    assert proc.returncode == 0, proc.stderr


def edit_h5(path: str, fn: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        with h5py.File(ws / path, "a") as f:
            fn(f)
    return setup


def replace(name: str, data) -> Callable[[h5py.File], None]:
    def fn(f: h5py.File) -> None:
        del f[name]
        f[name] = data
    return fn


def write(path: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        target = ws / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def cases(ws: Path) -> list[Case]:
    c: list[Case] = []
    add = lambda cat, name, args, setup=None, may=(): c.append(  # noqa: E731
        Case(cat, name, list(args), setup, list(may)))
    new = ["runs/new"]
    # -- pipeline files -----------------------------------------------------------------------
    yaml_texts = {
        "empty file": "", "a list": "- a\n- b\n", "not UTF-8": b"\xff\xfe model: x\n",
        "unclosed bracket": "name: [x\n", "python tag": "!!python/object/apply:os.system ['x']\n",
        "duplicate key": "name: a\nname: b\n", "tabs": "model:\n\ttype: rqvae\n",
        "deep nesting": "model: " + "[" * 5000 + "]" * 5000 + "\n",
        "alias bomb": "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
            for i in range(8)) + "model: *i\n",
        "self alias": "model: &m {type: rqvae, hidden_dims: [*m]}\n",
        "binary": bytes(range(256)),
    }
    for name, text in yaml_texts.items():
        add("pipeline file", name, ["validate", f"bad_{len(c)}.yaml"],
            write(f"bad_{len(c)}.yaml", text))
    add("pipeline file", "missing file", ["validate", "nope.yaml"])
    add("pipeline file", "a folder", ["validate", "cache"])
    configs = {
        "unknown top key": {"modle": {}}, "model typo": {"model": {"type": "rqvae", "levles": 3}},
        "unknown model": {"model": {"type": "rqvea"}}, "unknown storage": {
            "storage": {"type": "h5", "items": "item_data.h5"}},
        "wrong type": {"model": {"type": "rqvae", "levels": "three"}},
        "negative": {"model": {"type": "rqvae", "codebook_size": -4}},
        "nan lr": {"train": {"lr": float("nan")}}, "bool as int": {"train": {"batch_size": True}},
        "base-60": {"train": {"max_steps": "1:30"}},
        "missing items": {"storage": {"type": "h5_recsys", "items": "missing.h5"}},
        "items is a folder": {"storage": {"type": "h5_recsys", "items": "cache"}},
        "output is a file": {"output_dir": "notes.txt"},
        "output is user folder": {"output_dir": "cache"},
        "speech model on items": {"dataset": {"type": "speech_frames"}},
        "huge batch": {"train": {"batch_size": 10 ** 30}},
        "beam 1e9": sequences(type="tiger", semantic_ids="runs/rqvae/semantic_ids.h5",
                              beam=10 ** 9),
        "history 1e9": sequences(type="lastitem_nn", history=10 ** 9),
        "layers 1e5": sequences(type="tiger", semantic_ids="runs/rqvae/semantic_ids.h5",
                                layers=10 ** 5),
        "codebook 1e9": {"model": {"type": "rqkmeans", "codebook_size": 10 ** 9}},
        "levels 1e5": {"model": {"type": "rqvae", "levels": 10 ** 5, "latent_dim": 8}},
        "kmeans iters 1e9": {"model": {"type": "rqkmeans", "kmeans_iters": 10 ** 9}},
        "IDs of another catalogue": sequences(type="tiger", semantic_ids="other_ids.h5"),
        "IDs file is items file": sequences(type="tiger", semantic_ids="item_data.h5"),
    }
    for name, sections in configs.items():
        add("pipeline values", name, ["run", pipeline(ws, f"cfg_{len(c)}", base(ws, **sections))],
            may=new)
    add("pipeline values", "--set without =", ["validate", "rqvae.yaml", "--set", "model.levels"])
    add("pipeline values", "--set bad key", ["validate", "rqvae.yaml", "--set", "model..x=1"])
    # -- run folders ----------------------------------------------------------------------------
    add("run folder", "plain rerun of a finished run", ["run", "rqvae.yaml"])
    add("run folder", "resume a finished run", ["run", "rqvae.yaml", "--resume"])
    add("run folder", "resume with another model", ["run", "rqvae.yaml", "--resume", "--set",
                                                    "model.levels=3"])
    add("run folder", "force over a user's folder", ["run", "cfg_user.yaml", "--force"],
        lambda ws: (ws / "cfg_user.yaml").write_text(yaml.safe_dump(base(ws, "cache"))))
    add("run folder", "marker claims a user file", ["run", "rqvae.yaml", "--force"],
        lambda ws: _forge_marker(ws / "runs/rqvae", "thesis.docx"))
    add("run folder", "marker is garbage", ["run", "rqvae.yaml", "--force"],
        write("runs/rqvae/.rqf-run.json", "{not json"))
    add("run folder", "resume, checkpoint garbage", ["run", "rqvae.yaml", "--resume", "--set",
                                                     "train.max_steps=40"],
        lambda ws: _damage_checkpoint(ws / "runs/rqvae", b"garbage"))
    add("run folder", "resume, checkpoint runs code", ["run", "rqvae.yaml", "--resume", "--set",
                                                       "train.max_steps=40"],
        lambda ws: _damage_checkpoint(ws / "runs/rqvae", None))
    add("run folder", "resume, tiger IDs changed", ["run", "tiger.yaml", "--resume", "--set",
                                                    "train.max_steps=8"],
        lambda ws: _touch_ids(ws))
    add("run folder", "resume, saved config edited", ["run", "rqvae.yaml", "--resume"],
        write("runs/rqvae/config.yaml", "!!python/object/apply:os.system ['touch pwned']\n"))
    add("run folder", "force keeps a user file in checkpoints", ["run", "rqvae.yaml", "--force"],
        write("runs/rqvae/checkpoints/mine.txt", "mine"), may=["runs/rqvae"])
    c[-1].keep.append("runs/rqvae/checkpoints/mine.txt")
    # -- rqf encode -----------------------------------------------------------------------------
    data = ["--set", "storage.items=item_data.h5", "--set", "storage.sequences=null"]
    add("encode", "--out is the item file", ["encode", "runs/rqvae", *data, "--out",
                                             "item_data.h5"])
    add("encode", "--out is the item file, forced", ["encode", "runs/rqvae", *data, "--out",
                                                     "item_data.h5", "--force"])
    add("encode", "--out links to the items", ["encode", "runs/rqvae", *data, "--out", "link.h5",
                                               "--force"],
        lambda ws: (ws / "link.h5").symlink_to(ws / "item_data.h5"))
    add("encode", "--out exists", ["encode", "runs/rqvae", "--out", "notes.txt"])
    add("encode", "--out is the speech cache", ["encode", "runs/rqvae", "--set",
                                                "storage={type: h5_sharded, processed_dir: cache}",
                                                "--set", "dataset=speech_frames", "--out", "cache"])
    add("encode", "--out inside the run", ["encode", "runs/rqvae", "--out", "runs/rqvae/x.h5"])
    add("encode", "--set model.levels", ["encode", "runs/rqvae", "--set", "model.levels=5",
                                         "--out", "x.h5"])
    add("encode", "a baseline's run", ["encode", "runs/mostpop", "--out", "x.h5"])
    add("encode", "not a run", ["encode", "cache", "--out", "x.h5"])
    add("encode", "model.pt garbage", ["encode", "runs/rqvae", "--out", "x.h5"],
        write("runs/rqvae/model.pt", b"\x80\x04garbage"))
    # -- data files ----------------------------------------------------------------------------
    items = {
        "NaN embedding": edit_h5("item_data.h5", lambda f: f["embeddings"].__setitem__(
            (3, 1), np.nan)),
        "float item ids": edit_h5("item_data.h5", replace("item_ids", np.arange(300.0))),
        "1-d embeddings": edit_h5("item_data.h5", replace("embeddings", np.zeros(300, "f4"))),
        "duplicate ids": edit_h5("item_data.h5", lambda f: f["item_ids"].__setitem__(4, 101)),
        "huge values": edit_h5("item_data.h5", lambda f: f["embeddings"].__setitem__(
            (0, 0), 1e30)),
        "external link": edit_h5("item_data.h5", lambda f: (
            f.__delitem__("embeddings"), f.__setitem__(
                "embeddings", h5py.ExternalLink("/etc/passwd", "x")))),
        "virtual dataset": edit_h5("item_data.h5", _virtual),
        "truncated": lambda ws: (ws / "item_data.h5").write_bytes(
            (ws / "item_data.h5").read_bytes()[:2000]),
        "not HDF5": write("item_data.h5", "item_id,embedding\n1,0.5\n"),
        "missing embeddings": edit_h5("item_data.h5", lambda f: f.__delitem__("embeddings")),
    }
    for name, setup in items.items():
        add("item file", name, ["run", "rqvae_new.yaml"], _with_pipeline(setup, "rqvae_new",
                                                                        base(ws)), may=new)
        add("item file", f"inspect: {name}", ["inspect", "item_data.h5"], setup)
    seqs = {
        "unknown item": dict(sequences=[[101, 102, 9999]] * 2),
        "empty sequence": dict(sequences=[[101, 102, 103], []]),
        "duplicate user": dict(user_ids=["a", "a"]),
        "user id not UTF-8": dict(user_ids=[b"a", b"\xff"]),
        "timestamps decrease": dict(timestamps=[[3, 2, 1], [1, 2, 3]]),
        "no users": None,
    }
    for name, change in seqs.items():
        add("sequence file", name, ["run", "mostpop_new.yaml"],
            _with_pipeline(_sequence_file(change), "mostpop_new",
                           base(ws, **sequences(type="mostpop"))), may=new)
    # -- speech caches -------------------------------------------------------------------------
    speech = base(ws, storage={"type": "h5_sharded", "processed_dir": "cache"},
                  dataset={"type": "speech_frames"}, splitter={"type": "speaker"})
    caches = {
        "index not JSON": write("cache/hdf5_index.json", "{"),
        "index names a missing shard": lambda ws: (ws / "cache/features_00002.h5").unlink(),
        "shard truncated": lambda ws: (ws / "cache/features_00001.h5").write_bytes(b"\x89HDF"),
        "key escapes the folder": lambda ws: _edit_index(ws, lambda idx: idx["sample_index"]
                                                          .update({"../x": {"file_idx": 1,
                                                                            "group_name": "../x"}})),
        "index is a list": write("cache/hdf5_index.json", "[]"),
    }
    for name, setup in caches.items():
        add("speech cache", name, ["run", "speech_new.yaml"],
            _with_pipeline(setup, "speech_new", speech), may=new)
        add("speech cache", f"inspect: {name}", ["inspect", "cache"], setup)
    add("speech cache", "migrate into an existing cache", ["speech", "migrate", "cache", "cache"])
    # -- lookups -------------------------------------------------------------------------------
    ids = "runs/rqvae/semantic_ids.h5"
    add("lookup", "unknown item", ["rqvae", "lookup", ids, "--item", "99999"])
    add("lookup", "malformed code", ["rqvae", "lookup", ids, "--code", "1,x"])
    add("lookup", "corrupted file", ["rqvae", "lookup", ids, "--item", "101"],
        write(ids, b"\x89HDF\r\n\x1a\n" + bytes(100)))
    add("lookup", "unique codes not unique", ["rqvae", "lookup", ids, "--item", "101"],
        edit_h5(ids, lambda f: f["unique_codes"].__setitem__(1, f["unique_codes"][0])))
    c += command_cases(ws)
    return c


def command_cases(ws: Path) -> list[Case]:
    """The commands besides run and encode: every one must refuse these (exit 0 is wrong)."""
    c: list[Case] = []

    def add(cat, name, args, setup=None, may=()):
        c.append(Case(cat, name, list(args), setup, list(may), refuse=True))

    ids = "runs/rqvae/semantic_ids.h5"
    export = ["ids", "export", ids, "--format", "index-json"]
    add("ids export", "an item file for IDs", ["ids", "export", "item_data.h5", "--format", "csv",
                                               "--out", "x.csv"])
    add("ids export", "--out is a folder", [*export, "--out", "cache"])
    add("ids export", "--out is a user's file", [*export, "--out", "notes.txt"])
    add("ids export", "positional template field", [*export, "--out", "x.json", "--token", "{}"])
    add("ids export", "--out through a link into the run", [*export, "--out", "run_link/x.json"],
        lambda ws: (ws / "run_link").symlink_to(ws / "runs/rqvae"))
    index = ["ids", "import", "other.index.json", "--items", "item_data.h5", "--out", "x.h5"]
    for name, text in {"ID as one string": '{"101": "<a_1><b_2>"}',
                       "float key": '{"101.0": ["<a_1>"]}',
                       "keys of another catalogue": '{"7": ["<a_1>"]}',
                       "binary index": b"\x00\x89PNG\r\n",
                       "empty token": '{"101": ["<a_1>", ""]}'}.items():
        add("ids import", name, index, write("other.index.json", text))
    add("ids import", "--items is a speech cache", ["ids", "import", "other.index.json", "--items",
                                                    "cache", "--out", "x.h5"],
        write("other.index.json", '{"101": ["<a_1>"]}'))
    recommend = ["recommend", "runs/mostpop"]
    add("recommend", "semicolons", [*recommend, "--history", "101;102"])
    add("recommend", "--k 0", [*recommend, "--history", "101", "--k", "0"])
    add("recommend", "binary users file", [*recommend, "--users", "users.bin"],
        write("users.bin", bytes(range(256))))
    add("recommend", "missing users file", [*recommend, "--users", "nobody.tsv"])
    add("recommend", "a tokenizer's run", ["recommend", "runs/rqvae", "--history", "101"])
    add("recommend", "an id past int64", [*recommend, "--history", "1" + "0" * 25])
    embed = ["recsys", "embed", "items.jsonl", "--text", "title", "--out", "x.h5"]
    add("recsys embed", "UTF-8 BOM on a JSON line", embed,
        write("items.jsonl", '\ufeff{"item_id": 1, "title": "x"}\n'))
    add("recsys embed", "no text fields", ["recsys", "embed", "items.jsonl", "--text", ",",
                                           "--out", "x.h5"],
        write("items.jsonl", '{"item_id": 1, "title": "x"}\n'))
    add("recsys embed", "--out is a user's file", ["recsys", "embed", "items.jsonl", "--text",
                                                   "title", "--out", "notes.txt"],
        write("items.jsonl", '{"item_id": 1, "title": "x"}\n'))
    add("recsys embed", "id is an object", embed,
        write("items.jsonl", '{"item_id": {"asin": "B1"}, "title": "x"}\n'))
    logs = {"header only": "user_id,item_id,timestamp\n",
            "dates for times": "user_id,item_id,timestamp\nu,1,2020-01-01\n",
            "time column past the row": "u,1\nu,2\n",
            "nan time": "user,item,time\nu,1,nan\n",
            "header names no item": "user_id,title,timestamp\nu,x,1\n"}
    for name, text in logs.items():
        add("recsys from-interactions", name, ["recsys", "from-interactions", "log.csv", "--out",
                                               "data"], write("log.csv", text))
    add("recsys from-interactions", "--out is a file", ["recsys", "from-interactions", "log.csv",
                                                        "--out", "notes.txt"],
        write("log.csv", "user,item,time\nu,1,2\n"))
    add("recsys from-interactions", "the log is the item file",
        ["recsys", "from-interactions", "item_data.h5", "--out", "data"])
    add("speech merge", "into one of its parts", ["speech", "merge", "cache/merged", "cache"])
    add("speech merge", "a run folder as a part", ["speech", "merge", "merged", "cache",
                                                    "runs/rqvae"])
    add("speech merge", "the same part twice through a link", ["speech", "merge", "merged",
                                                               "cache", "cache_link"],
        lambda ws: (ws / "cache_link").symlink_to(ws / "cache"))
    add("speech merge", "OUT exists", ["speech", "merge", "runs", "cache"])
    add("speech finalize", "a folder that is no cache", ["speech", "finalize", "runs"])
    add("speech finalize", "a shard of zeros", ["speech", "finalize", "cache"],
        write("cache/features_00002.h5", bytes(4096)))
    add("speech finalize", "the index lists a key in a shard without it",
        ["speech", "finalize", "cache"],
        lambda ws: _edit_index(ws, lambda idx: idx["sample_index"]["0/0"].update(file_idx=3)))
    add("speech migrate", "no .npz in the source", ["speech", "migrate", "runs", "migrated"])
    add("speech migrate", "target is the item file", ["speech", "migrate", "npz", "item_data.h5"],
        lambda ws: (ws / "npz").mkdir() or np.savez(ws / "npz/a.npz",
                                                    hidden_states=np.zeros((3, 4), "f4")))
    add("demo", "into a file", ["demo", "notes.txt"])
    add("demo", "over a user's sequence file", ["demo", "mine"],
        lambda ws: (ws / "mine" / "recsys").mkdir(parents=True) or shutil.copy(
            ws / "sequence.h5", ws / "mine" / "recsys" / "sequence.h5"))
    add("demo", "into a user's cache", ["demo", "mine"],
        lambda ws: shutil.copytree(ws / "cache", ws / "mine" / "speech"))
    add("schema", "--out is a folder", ["schema", "--out", "cache"])
    add("schema", "--out inside a run", ["schema", "--out", "runs/rqvae/schema.json"])
    return c


def _with_pipeline(setup, name: str, config: dict):
    def both(ws: Path) -> None:
        setup(ws)
        pipeline(ws, name, config)
    return both


def _virtual(f: h5py.File) -> None:
    del f["embeddings"]
    layout = h5py.VirtualLayout(shape=(300, 16), dtype=np.float32)
    layout[:] = h5py.VirtualSource("/etc/passwd", "x", (300, 16))
    f.create_virtual_dataset("embeddings", layout)


def _sequence_file(change: dict | None):
    def setup(ws: Path) -> None:
        if change is None:
            with h5py.File(ws / "sequence.h5", "w") as f:
                f.create_dataset("user_ids", (0,), dtype=h5py.string_dtype())
                f.create_dataset("sequences", (0,), dtype=h5py.vlen_dtype(np.int64))
                f.create_dataset("sequence_lengths", data=np.zeros(0, np.int32))
                f.attrs["n_sequences"] = 0
            return
        args = {"user_ids": ["a", "b"], "sequences": [[101, 102, 103], [104, 105, 106]],
                **change}
        if "timestamps" in args:
            args["timestamps"] = args.pop("timestamps")
        write_seed_sequences(ws / "sequence.h5", **args)
    return setup


def _forge_marker(run: Path, claim: str) -> None:
    (run / claim).write_text("four years of work")
    marker = json.loads((run / ".rqf-run.json").read_text())
    marker["claims"].append(claim)
    (run / ".rqf-run.json").write_text(json.dumps(marker))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _damage_checkpoint(run: Path, content: bytes | None) -> None:
    latest = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    if content is None:
        torch.save({"format": "rqf-checkpoint-1", "model": _Payload()}, latest)
    else:
        latest.write_bytes(content)


def _touch_ids(ws: Path) -> None:
    with h5py.File(ws / "runs/rqvae/semantic_ids.h5", "a") as f:
        f.attrs["edited"] = 1


def _edit_index(ws: Path, fn) -> None:
    path = ws / "cache/hdf5_index.json"
    index = json.loads(path.read_text())
    fn(index)
    path.write_text(json.dumps(index))


def snapshot(ws: Path) -> dict[str, str]:
    out = {}
    for p in ws.rglob("*"):
        if p.is_file() and not p.is_symlink() and ".lock" not in p.name:
            out[str(p.relative_to(ws))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def judge(case: Case, ws: Path) -> tuple[str, str, bool]:
    if case.setup is not None:
        case.setup(ws)
    before = snapshot(ws)
    try:
        proc = subprocess.run([PYTHON, "-m", "rqf", *case.args], capture_output=True, text=True,
                              cwd=ws, timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        return "hung", "", False
    after = snapshot(ws)
    allowed = tuple(case.may_write)
    damaged = [k for k, v in before.items() if after.get(k) != v
               and (not k.startswith(allowed) or k in case.keep)]
    damaged += ["pwned"] if (ws / "pwned").exists() else []
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    plain = "Traceback" not in proc.stderr and "rerun with --debug" not in proc.stderr
    if case.args[0] == "inspect":  # a report: exit 1 and its problems listed when there are any
        verdict = "clear" if proc.returncode == 1 and "problems (" in proc.stdout and plain \
            else "accepted" if proc.returncode == 0 else "unclear"
        last = next((line for line in proc.stdout.splitlines() if line.startswith("  - ")), last)
    elif proc.returncode == 0:
        verdict = "wrong" if case.refuse else "accepted"
    elif proc.returncode == 2 and last.startswith("error:") and plain:
        verdict = "clear"  # lines the run printed before it (its header) may precede the error
    else:
        verdict = "unclear"
    last = f"[exit {proc.returncode}] {last[:150]}"
    return verdict, last + (f"  DAMAGED {damaged[:3]}" if damaged else ""), bool(damaged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # every case runs in a fresh copy at the same path: the runs' saved configs name it
        ws, pristine = Path(tmp) / "ws", Path(tmp) / "pristine"
        ws.mkdir()
        started = time.perf_counter()
        build_workspace(ws)
        all_cases = cases(ws)
        shutil.copytree(ws, pristine, symlinks=True)
        print(f"workspace built in {time.perf_counter() - started:.0f} s", flush=True)
        results = []
        for case in all_cases:
            shutil.rmtree(ws)
            shutil.copytree(pristine, ws, symlinks=True)
            verdict, last, damaged = judge(case, ws)
            results.append((case, verdict, damaged))
            if args.verbose:
                print(f"{verdict:9s}{' DAMAGED' if damaged else ''}  {case.category}: "
                      f"{case.name}\n           {last}", flush=True)
    kinds = ("clear", "accepted", "wrong", "unclear", "hung")
    rows, totals = [], {**dict.fromkeys(kinds, 0), "damaged": 0}
    for category in dict.fromkeys(c.category for c, _, _ in results):
        mine = [(v, d) for c, v, d in results if c.category == category]
        counts = {k: sum(v == k for v, _ in mine) for k in kinds}
        counts["damaged"] = sum(d for _, d in mine)
        for k in totals:
            totals[k] += counts[k]
        rows.append([category, len(mine), *counts.values()])
    rows.append(["all", len(results), *totals.values()])
    print_table(["category", "cases", *kinds, "damaged"], rows,
                "hostile inputs, each a real process under a 60 s limit")


if __name__ == "__main__":
    main()
