"""Helpers for plugin tests that need only the core: in-memory data and a private registry.

``MemoryItems`` is a real ``Storage`` holding item vectors and, optionally, user sequences in
numpy arrays: it implements ``rqf.ItemSource`` / ``rqf.SequenceSource``, so any dataset and
splitter written against those protocols reads it as it reads files. ``MemoryItemsDataset`` is
a minimal ``items`` dataset over it (what a tokenizer trains on), and ``use_plugins`` runs a
block with chosen plugin modules registered, as if they were installed.

    from rqf.testing import MemoryItems, MemoryItemsDataset, use_plugins, toy_items

``clustered`` makes structured vectors; ``real_data`` finds a folder of the public data kept
beside a checkout (``../shared/data``, or ``$RQF_SHARED_DATA``) and skips the test without it;
``needs`` skips a test that needs another plugin. ``rqf_proc``, ``pipeline_file`` and
``one_line_error`` run the command line as a real process and check its one-line errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from rqf.data import ItemRows, SequenceTable, rows_of
from rqf.errors import DataError
from rqf.hookspecs import hookimpl
from rqf.interfaces import Storage
from rqf.params import Param


class MemoryItems(Storage):
    """Item vectors (and optionally user sequences) held in memory; validated on open."""

    name = "memory_items"
    params = (
        Param("item_ids", list, help="item ids, one per row", item=int),
        Param("embeddings", list, help="one vector (list of floats) per item"),
        Param("sequences", dict, None, "user id -> list of item ids, oldest first",
              nullable=True),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.item_ids = np.asarray(self.config["item_ids"], np.int64)
        self.embeddings = np.asarray(self.config["embeddings"], np.float32)
        seqs = self.config["sequences"]
        self.table = None if seqs is None else SequenceTable.from_lists(
            [str(u) for u in seqs], [list(v) for v in seqs.values()])
        self.sequence_rows: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, item_ids: np.ndarray, embeddings: np.ndarray,
                    sequences: dict[str, Sequence[int]] | None = None) -> "MemoryItems":
        return cls(item_ids=np.asarray(item_ids).tolist(),
                   embeddings=np.asarray(embeddings).tolist(), sequences=sequences)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def open(self) -> "MemoryItems":
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.item_ids):
            raise DataError(f"{self.name}: embeddings: expected ({len(self.item_ids)}, dim), "
                            f"got {self.embeddings.shape}")
        if not np.isfinite(self.embeddings).all():
            raise DataError(f"{self.name}: embeddings: NaN or Inf values")
        if len(np.unique(self.item_ids)) != len(self.item_ids):
            raise DataError(f"{self.name}: item_ids: repeated ids")
        if self.table is not None:
            rows = rows_of(self.item_ids, self.table.item_ids)
            unknown = rows < 0
            if unknown.any():
                raise DataError(f"{self.name}: sequences: item "
                                f"{int(self.table.item_ids[unknown][0])} is not an item")
            self.sequence_rows = rows
        return self

    def close(self) -> None:
        pass

    def read_embeddings(self, rows: np.ndarray) -> np.ndarray:
        return self.embeddings[np.asarray(rows, np.int64)]

    def read_embedding_range(self, start: int, stop: int) -> np.ndarray:
        return self.embeddings[start:stop]

    def read_features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(rows), 0), np.int32), np.zeros(len(rows), np.int32)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"n_items": len(self.item_ids), "embedding_dim": self.embedding_dim}
        if self.table is not None:
            info["n_sequences"] = len(self.table)
        return info


class MemoryItemsDataset(ItemRows):
    """One sample per item of an ``ItemSource``: what a tokenizer's tests train on."""

    name = "memory_items"
    params = ()


@hookimpl
def register_storages(register):
    register(MemoryItems)


@hookimpl
def register_datasets(register):
    register(MemoryItemsDataset)


def toy_items(n: int = 300, dim: int = 16, clusters: int = 8, seed: int = 0) -> MemoryItems:
    """Clustered unit vectors (ids 1..n): a tokenizer has structure to find in them."""
    return MemoryItems.from_arrays(np.arange(1, n + 1), clustered(n, dim, clusters, seed))


@contextlib.contextmanager
def use_plugins(*modules: Any, entry_points: bool = True) -> Iterator[Any]:
    """Run a block with ``modules`` registered as plugins (beside the installed ones when
    ``entry_points``), as ``rqf run`` would see them; the previous plugins come back after."""
    from rqf import plugins as plugin_module

    saved = plugin_module._plugins
    pm = plugin_module.Plugins().load(entry_points=entry_points)
    for i, module in enumerate(modules):
        pm.add(module, getattr(module, "__name__", f"test_plugin_{i}"), "test", "0")
    pm.add(sys.modules[__name__], "rqf.testing", "rqf", "0")
    plugin_module.reset_plugins(pm)
    try:
        yield pm
    finally:
        plugin_module.reset_plugins(saved)


def tiny_pipeline(out: Path, storage: dict[str, Any], model: dict[str, Any],
                  dataset: str = "memory_items", splitter: dict[str, Any] | None = None,
                  **train: Any) -> dict[str, Any]:
    """A pipeline mapping over in-memory data that trains for a few CPU steps."""
    return {"name": "test", "output_dir": str(out), "storage": storage,
            "dataset": {"type": dataset},
            "splitter": splitter or {"type": "index", "test_ratio": 0.2, "valid_ratio": 0.1},
            "model": model,
            "train": {"device": "cpu", "progress": False, "batch_size": 64, "max_steps": 20,
                      **train}}


# the public data kept beside a checkout; tests that read it skip where it is absent
SHARED_DATA = Path(os.environ.get("RQF_SHARED_DATA",
                                  Path(__file__).resolve().parents[3] / "shared" / "data"))


def real_data(name: str) -> Path:
    """A folder of the shared real data, or a pytest skip when this checkout has none beside it."""
    import pytest

    path = SHARED_DATA / name
    if not (path / "item_data.h5").exists():
        pytest.skip(f"real data {path} is not present")
    return path


def clustered(n: int, dim: int, clusters: int, seed: int = 0, spread: float = 0.3) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random centres (float32)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def needs(*modules: str):
    """A pytest mark that skips a test unless every named module (another plugin, an optional
    package) is installed: a plugin's own tests then run with only the core and that plugin."""
    import importlib.util

    import pytest

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


# -- the command line as a real process -----------------------------------------------------

def rqf_proc(*args: str, cwd: Path | None = None, timeout: int = 300) -> Any:
    """``python -m rqf ARGS`` in a new process, its output captured."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "rqf", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def one_line_error(proc: Any, *fragments: str) -> str:
    """The process failed with exit 2 and a single ``error:`` line holding every fragment."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


def pipeline_file(tmp_path: Path, config: dict, name: str = "pipeline.yaml") -> Path:
    """``config`` written as a pipeline file in ``tmp_path``."""
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def small_disk_works() -> bool:
    """Whether a small tmpfs can be mounted in a private namespace (for full-disk tests)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"],
                           capture_output=True)
    return probe.returncode == 0


def on_small_disk(mount: Path, size: str, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with a ``size`` tmpfs mounted on ``mount``, in a private namespace."""
    mount.mkdir(exist_ok=True)
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           f"mount -t tmpfs -o size={size} tmpfs {mount} && {script}"],
                          capture_output=True, text=True, timeout=300)
