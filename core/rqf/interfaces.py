"""The four interfaces every component implements: Storage, Dataset, Splitter and Model.

The core knows no data format. Plugins subclass these and register the subclasses; the
pipeline builds them from the YAML sections by their registered ``name``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from rqf.errors import RqfError
from rqf.params import Param, validate_params

if TYPE_CHECKING:
    from rqf.training import TrainConfig, Trainer


class Component:
    """Base of every registered component: a ``name`` users type and the ``params`` it takes."""

    name: ClassVar[str] = ""
    params: ClassVar[Sequence[Param]] = ()

    @classmethod
    def resolve(cls, values: Mapping[str, Any], section: str) -> dict[str, Any]:
        """``values`` checked against ``params``, every default filled in: what ``config``
        holds, so a component reads ``self.config[name]`` and states no default twice."""
        return validate_params(cls.params, values, section)

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Storage(Component, ABC):
    """Where arrays live. Opens lazily, validates its format, and is safe in worker processes.

    Implementations open file handles per process (never inherited across fork) and close
    what they opened in ``close``.
    """

    # what the writer of this storage's export source (``SequenceVectors.open_writer``) makes
    # in its folder: names or ``*`` patterns, owned here and read by whoever claims the folder
    writer_files: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        self.config = self.resolve(params, "storage")

    @abstractmethod
    def open(self) -> "Storage":
        """Open and validate; raise ``DataError`` naming file, field and expectation."""

    @abstractmethod
    def close(self) -> None:
        """Close every handle this process opened."""

    def describe(self) -> dict[str, Any]:
        return {}

    def item_keys(self) -> list[str] | None:
        """The items' own string keys (ASINs) in the order of ``item_ids``; None where the
        data has none (its ids are its keys)."""
        return None

    def __enter__(self) -> "Storage":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def recognizes(cls, path: Path) -> bool:
        """Whether ``rqf inspect PATH`` should be handed to this storage."""
        return False

    @classmethod
    def for_path(cls, path: Path) -> "Storage":
        """This storage over ``path`` alone (a path it ``recognizes``), not yet opened: how a
        command that is handed a file (``rqf ids import --items``) reads it."""
        raise NotImplementedError(f"storage {cls.name!r} cannot be opened from a path alone")

    @classmethod
    def inspect(cls, path: Path, full: bool = False) -> "InspectReport":
        """Describe ``path`` and list its problems; ``full`` reads every value (a storage may
        sample a large file otherwise, and says so in the report)."""
        raise NotImplementedError(f"storage {cls.name!r} cannot inspect files")


@dataclass
class InspectReport:
    """What ``rqf inspect`` prints: lines of description and the problems found."""

    title: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def render(self) -> str:
        out = [self.title, *self.lines]
        if self.problems:
            out.append(f"problems ({len(self.problems)}):")
            out += [f"  - {p}" for p in self.problems]
        else:
            out.append("problems: none")
        return "\n".join(out)


@dataclass
class ItemVectors:
    """Export source for item-like data: one vector per id, read in slices."""

    ids: np.ndarray
    read: Callable[[int, int], np.ndarray]  # rows [start, stop) as float32 (n, d)
    # chosen rows, any order (None: the source reads slices only)
    read_rows: Callable[[np.ndarray], np.ndarray] | None = None
    # the items' own string keys (ASINs) in the order of ids, where the data has them
    keys: Sequence[str] | None = None


@dataclass
class SequenceVectors:
    """Export source for utterance-like data: a matrix of frame vectors per key.

    ``open_writer(out_dir)`` returns a context manager whose ``write(key, codes)`` stores a
    (T, levels) integer code matrix for that key in the data's own format.
    """

    keys: Sequence[str]
    read: Callable[[str], np.ndarray]
    open_writer: Callable[[Path, dict[str, Any]], Any]


class Dataset(Component, ABC):
    """A map-style view over a Storage that yields samples (dicts of arrays)."""

    sample_unit = "samples"  # what one sample is (users, items, utterances): the report's word
    role = "all"  # which split a view is (train, valid, test), set by ``subset``

    def __init__(self, storage: Storage, **params: Any) -> None:
        self.storage = storage
        self.config = self.resolve(params, "dataset")

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Metadata a model configures itself from; ``input_dim`` at least."""

    def subset(self, indices: np.ndarray, role: str = "train") -> "Dataset":
        """A view of the samples at ``indices``; ``role`` (train, valid or test) is the view's
        ``role``."""
        raise NotImplementedError(f"dataset {self.name!r} cannot be split by position")

    def vectors(self) -> np.ndarray:
        """The (n, input_dim) float32 vectors a quantizer learns from in this view."""
        raise NotImplementedError(f"dataset {self.name!r} yields no training vectors")

    def export_source(self) -> ItemVectors | SequenceVectors:
        """What a model encodes on export: every unit of the underlying data, all splits."""
        raise NotImplementedError(f"dataset {self.name!r} has nothing to export")

    def key_ids(self) -> np.ndarray:
        """Identifiers of this view's samples, for the leakage checks of splitters."""
        return np.arange(len(self))

    def export_rows(self) -> np.ndarray | None:
        """Rows of ``export_source()`` that ``vectors()`` holds, in its order; None when the
        vectors are not rows of it. Lets a model encode the data once and derive every
        split's metrics from that one pass."""
        return None


class Splitter(Component, ABC):
    """Splits a dataset into train/valid/test views; pure and deterministic for a seed."""

    def __init__(self, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.config = self.resolve(params, "splitter")
        self.report: dict[str, Any] = {}

    @abstractmethod
    def split(self, dataset: Dataset) -> dict[str, Dataset]:
        """Return {"train": ..., "valid": ..., "test": ...}; empty splits may be omitted.

        Sets ``self.report`` to what it did (counts, dropped samples and why, checks run).
        """


@dataclass
class RunContext:
    """What a model needs from the run: where to write and how to train.

    ``trainer`` is the run's training loop, built by the pipeline from the train section for
    every model that is not ``gradient_free``; a model never builds its own.
    """

    run_dir: Path
    train: "TrainConfig"
    export: dict[str, Any]
    seed: int = 0
    resume: bool = False
    is_main: bool = True
    echo: Callable[[str], None] = print
    trainer: "Trainer | None" = None

    def require_trainer(self, model: str) -> "Trainer":
        if self.trainer is None:
            raise RqfError(f"model {model!r} trains through rqf's training loop: its RunContext "
                           "needs a trainer (rqf.run builds one from the train section)")
        return self.trainer


class Model(Component, ABC):
    """A model fit on the train split, evaluated per split and exported over all data."""

    export_params: ClassVar[Sequence[Param]] = ()
    # defaults for the ``train`` section that suit this model, under the user's values
    train_defaults: ClassVar[Mapping[str, Any]] = {}
    # True for a model fit without the gradient loop (e.g. k-means, a popularity count): the
    # pipeline builds it no Trainer (RunContext.trainer is None), so the train section's budget
    # and checkpoints do not apply, and --resume fits it again
    gradient_free: ClassVar[bool] = False
    # False for a model with nothing worth keeping (a baseline refit in seconds): the pipeline
    # then writes no model.pt and ``rqf encode`` cannot reopen its runs
    keeps_weights: ClassVar[bool] = True
    # False for a model that reads no vectors of the data (e.g. one over item ids alone):
    # ``rqf validate`` then does not ask the storage to check its vector values
    reads_vectors: ClassVar[bool] = True

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        self.data_info = dict(data_info)
        self.config = self.resolve(params, "model")

    @classmethod
    def fit_defaults(cls, data_info: Mapping[str, Any], params: Mapping[str, Any],
                     unset: frozenset[str]) -> tuple[dict[str, Any], list[str]]:
        """``params`` with the defaults among ``unset`` (keys the pipeline left out) that do
        not fit this data changed, and one line per change saying why. The pipeline calls it
        before building the model and keeps what it returns in the run's config.yaml."""
        return dict(params), []

    def check(self, dataset: Dataset, train: "TrainConfig") -> None:
        """Refuse data this model cannot use (e.g. IDs made for another catalogue) or settings
        the data makes absurd (e.g. more memory than the machine has), before anything is
        trained or written: ``rqf validate`` and ``rqf run`` both call it."""

    @abstractmethod
    def fit(self, train: Dataset, valid: Dataset | None, ctx: RunContext) -> dict[str, Any]:
        """Train; return a summary (steps, time, final losses)."""

    def predict(self, dataset: Dataset, splits: Mapping[str, Dataset]) -> Any:
        """What ``evaluate`` and ``export`` both read, computed once after ``fit`` and handed
        to them as a value (e.g. the codes of every item, each split's rankings); None when
        they share nothing, and then the pipeline calls them without it."""
        return None

    @abstractmethod
    def evaluate(self, data: Dataset, predictions: Any = None) -> dict[str, Any]:
        """Metrics on one split; ``predictions`` is what ``predict`` returned."""

    @abstractmethod
    def export(self, dataset: Dataset, ctx: RunContext, predictions: Any = None) -> dict[str, str]:
        """Write artifacts for every unit of ``dataset`` into ``ctx.run_dir``; name -> path."""

    def encode(self, dataset: Dataset, out: Path) -> Path:
        """Write this model's codes for every unit of ``dataset`` (its ``export_source()``)
        to ``out``, a file or folder outside any run: what ``rqf encode`` calls."""
        raise NotImplementedError(f"model {self.name!r} makes no codes to encode data with")

    # the model file (``model.pt``): its format tag, and the values of keys added since, for
    # files written before they existed
    file_format: ClassVar[str] = ""
    config_added: ClassVar[Mapping[str, Any]] = {}

    def state(self) -> dict[str, Any]:
        """What ``load`` needs beside the config and the data description: tensors and plain
        data only (weights, codebooks, the catalogue)."""
        raise NotImplementedError(f"model {self.name!r} keeps no model file")

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take back what ``state`` gave, on a model built from the saved config."""
        raise NotImplementedError(f"model {self.name!r} keeps no model file")

    def place(self, device: Any) -> None:
        """Move to the torch device a loaded model runs on (nothing to move: nothing)."""

    def save(self, path: Path) -> None:
        """Write everything ``load`` needs; the pipeline calls it once fit has returned."""
        from rqf.training.checkpoints import save_model_file

        save_model_file(path, self)

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> "Model":
        """The model saved at ``path``, on ``device`` (auto, cpu or cuda)."""
        from rqf.training.checkpoints import load_model_file

        return load_model_file(cls, path, device)

    @classmethod
    def resolve_export(cls, export: Mapping[str, Any]) -> dict[str, Any]:
        """``export`` with every default of the run's export keys filled in (the core's and
        this model's ``export_params``): what ``export`` reads, so no default is restated."""
        from rqf.config import export_params

        return validate_params(export_params(cls), export, "export")

    @classmethod
    def run_outputs(cls, export: Mapping[str, Any]) -> tuple[str, ...]:
        """Names of the files and folders ``export`` writes at the top of the run folder, and
        ``folder/pattern`` for the files it writes inside a folder.

        The run folder's marker claims them before anything is written, so ``--force`` and
        ``--resume`` may remove them, and only them, as rqf's own; a folder goes only once
        nothing but claimed files was in it.
        """
        return ()

    @classmethod
    def writer_folders(cls, export: Mapping[str, Any]) -> tuple[str, ...]:
        """Folders among ``run_outputs`` whose files the data's own writer makes
        (``SequenceVectors.open_writer``); the storage says which (``Storage.writer_files``)."""
        return ()

    def summarize(self, metrics: Mapping[str, Any]) -> str:
        """A short human-readable summary of ``metrics`` for the end of a run."""
        return ""

    def health(self, metrics: Mapping[str, Any]) -> list[str] | None:
        """One line per sign of an unhealthy result (e.g. a collapsed codebook), naming
        the setting to change; empty when the checks found nothing wrong. None (the default):
        the model checks nothing, and the run is reported "not checked", never healthy."""
        return None

