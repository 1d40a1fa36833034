"""Next-item examples from a sequence view, ranking metrics, recommendations.h5, and the base
every ranking model here shares, so baselines and TIGER are measured by one evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from rqf import (ConfigError, DataError, Dataset, Model, Param, RqfError, RunContext,
                 SequenceView, TrainingTask, atomic_h5, missing_members, require_memory)

KS = (5, 10)
FORMAT = "rqf-recommendations-1"
HISTORY = Param("history", int, 20, "most recent items of a user's history a model reads",
                min=1)
TOP_K = Param("top_k", int, 10, "items recommended per user (recommendations.h5 width)", min=10)
FLOORS = Param("floors", bool, True, "also rank valid and test with mostpop and lastitem_nn "
               "(seconds) and report them beside this model; the run is unhealthy below mostpop")


@dataclass
class Examples:
    """Next-item examples: ``users`` (rows of the sequence table), ``history`` (n, H) item ids,
    left-aligned, -1 padded; ``target``; for ranked examples the ``user_ids`` (as in
    sequence.h5) too."""

    users: np.ndarray
    history: np.ndarray
    target: np.ndarray
    user_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, pick: np.ndarray) -> "Examples":
        return Examples(self.users[pick], self.history[pick], self.target[pick],
                        None if self.user_ids is None else self.user_ids[pick])


def _sequences(view: Dataset) -> tuple[Any, Any]:
    if missing_members(view, SequenceView):
        raise ConfigError("dataset.type: next-item models read user sequences: use "
                          "dataset: sequences (with storage.sequences) and a sequence splitter "
                          "such as leave_last_out")
    records = view.records  # type: ignore[attr-defined]
    return view.table, records  # type: ignore[attr-defined]


def _gather(table: Any, base: np.ndarray, begin: np.ndarray, end: np.ndarray,
            width: int) -> np.ndarray:
    """(n, width) item ids of positions [begin, end) of each row's sequence, -1 padded."""
    n = len(base)
    out = np.full((n, width), -1, np.int64)
    lengths = end - begin
    rows = np.repeat(np.arange(n), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = np.arange(int(lengths.sum())) - starts
    out[rows, cols] = table.item_ids[np.repeat(base + begin, lengths) + cols]
    return out


def eval_examples(view: Dataset, history: int) -> Examples:
    """One example per record with a target: its last ``history`` inputs -> the target."""
    table, r = _sequences(view)
    has = (r.target >= 0) & (r.end > r.start)
    user, start, end, target = r.user[has], r.start[has], r.end[has], r.target[has]
    base = table.offsets[user]
    return Examples(user, _gather(table, base, np.maximum(start, end - history), end, history),
                    table.item_ids[base + target], table.user_ids[user])


def train_examples(view: Dataset, history: int) -> Examples:
    """Every next item inside each record's inputs: positions start+1 .. end-1 as targets."""
    table, r = _sequences(view)
    counts = np.maximum(r.end - r.start - 1, 0)
    user = np.repeat(r.user, counts)
    start = np.repeat(r.start, counts)
    pos = start + 1 + (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))
    base = table.offsets[user]
    return Examples(user, _gather(table, base, np.maximum(start, pos - history), pos, history),
                    table.item_ids[base + pos])


def sequence_rows(view: Dataset, width: int) -> np.ndarray:
    """(n, width) item ids of the last ``width`` inputs of each record with two or more,
    right-aligned (the newest item last), -1 padded on the left: what a causal model trains on."""
    table, r = _sequences(view)
    keep = r.end - r.start >= 2
    start, end = r.start[keep], r.end[keep]
    base = table.offsets[r.user[keep]]
    left = _gather(table, base, np.maximum(start, end - width), end, width)
    return right_align(left)


def right_align(history: np.ndarray) -> np.ndarray:
    """Left-aligned, -1 padded rows moved to the right end, order kept."""
    lengths = (history >= 0).sum(1)
    width = history.shape[1]
    cols = np.arange(width)[None, :] - (width - lengths)[:, None]
    rows = np.arange(len(history))[:, None]
    return np.where(cols >= 0, history[rows, np.maximum(cols, 0)], -1)


def dedup_history(history: np.ndarray) -> np.ndarray:
    """Left-aligned, -1 padded rows with each item kept at its latest position only (the
    order of the kept items unchanged), left-aligned again."""
    n, width = history.shape
    rows, cols = np.divmod(np.arange(n * width), width)
    items = history.ravel()
    order = np.lexsort((-cols, items, rows))  # per row and item, the latest position first
    r, it = rows[order], items[order]
    latest = np.ones(len(order), bool)
    latest[1:] = (r[1:] != r[:-1]) | (it[1:] != it[:-1])
    keep = np.zeros(n * width, bool)
    keep[order] = latest & (it >= 0)
    keep = keep.reshape(n, width)
    out = np.full_like(history, -1)
    out[np.nonzero(keep)[0], (np.cumsum(keep, 1) - 1)[keep]] = history[keep]
    return out


def monitored_examples(valid: Dataset | None, history: int, users: int, seed: int,
                       monitor: str | None) -> Examples | None:
    """The validation examples ``train.monitor`` is read on: at most ``users`` of them (0: all),
    drawn with ``seed``; None without a validation split (refused when a monitor needs one)."""
    ex = eval_examples(valid, history) if valid is not None else None
    if ex is not None and users and len(ex) > users:
        pick = np.random.default_rng(seed).choice(len(ex), users, replace=False)
        ex = ex.subset(pick)
    if ex is None or not len(ex):
        if monitor:
            raise RqfError(f"train.monitor: {monitor} needs a validation split; set "
                           "train.monitor: null to keep the last weights")
        return None
    return ex


def catalogue_positions(catalogue: np.ndarray, items: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Position of each item id in the sorted ``catalogue`` (-1, padding, maps anywhere), and
    the distinct ids (>= 0) the catalogue lacks."""
    pos = np.searchsorted(catalogue, items).clip(0, len(catalogue) - 1)
    missing = (items >= 0) & (catalogue[pos] != items)
    return pos, np.unique(items[missing])


def ranking_metrics(recommended: np.ndarray, target: np.ndarray, ks=KS) -> dict[str, float]:
    """Recall@K and NDCG@K of ranked item ids (n, >=K) against one target item each.

    A hit is the whole item: the target's id among the first K. With one relevant item the
    ideal DCG is 1, so NDCG@K is 1/log2(rank + 1) for a hit at rank <= K, else 0.
    """
    recommended = np.asarray(recommended)
    target = np.asarray(target)
    out: dict[str, float] = {"users": int(len(target))}
    if not len(target):
        return out
    hit = recommended == target[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), recommended.shape[1])  # 0-based
    for k in ks:
        if recommended.shape[1] < k:
            raise ValueError(f"recall@{k} needs {k} recommendations per user, got "
                             f"{recommended.shape[1]}")
        out[f"recall@{k}"] = float((rank < k).mean())
        out[f"ndcg@{k}"] = float(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0).mean())
    return out


def write_recommendations(path: Path, user_ids: np.ndarray, items: np.ndarray,
                          attrs: Mapping[str, Any]) -> Path:
    """``user_ids`` (vlen str, as in sequence.h5) and ``items`` (n, K) int64, best first."""
    with atomic_h5(path) as f:
        f.create_dataset("user_ids", data=np.array([str(u) for u in user_ids], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("items", data=np.asarray(items, np.int64))
        f.attrs["format"] = FORMAT
        for k, v in attrs.items():
            f.attrs[k] = v
    return Path(path)


def read_recommendations(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    try:
        with h5py.File(path, "r") as f:
            users = np.array([u.decode() if isinstance(u, bytes) else str(u)
                              for u in f["user_ids"][()]], dtype=object)
            items = f["items"][()]
            attrs = dict(f.attrs)
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: not a readable recommendations.h5 ({exc})") from None
    if items.ndim != 2 or len(items) != len(users):
        raise DataError(f"{path}: items must be (n_users, K) with one row per user id")
    return users, items, attrs


class RankingTask(TrainingTask):
    """A ranker's training task: each validation ranks the monitored ``valid`` examples with
    the model being trained (``model.recommend``), read as ``valid_recall@10`` and so on."""

    def __init__(self, model: "NextItemModel", module: Any, fingerprint: Mapping[str, Any],
                 valid: Examples | None) -> None:
        super().__init__(module, fingerprint)
        self.model, self.valid = model, valid

    @property
    def validates(self) -> bool:
        return self.valid is not None

    def validation_metrics(self, module: Any) -> dict[str, float]:
        top_k = self.model.config["top_k"]
        m = ranking_metrics(self.model.recommend(self.valid.history, top_k, self.valid.user_ids),
                            self.valid.target)
        return {f"valid_{k}": v for k, v in m.items() if k != "users"}


@dataclass
class Ranking:
    """A split's examples ranked: ``users`` (their ids in sequence.h5), ``items`` (n, top_k)
    best first, and each example's ``target``."""

    users: np.ndarray
    items: np.ndarray
    target: np.ndarray


class NextItemModel(Model):
    """A model that ranks the next item of a user's history; metrics and export are shared.

    Subclasses fit on the training view and implement ``recommend(history, k)``. ``predict``
    ranks every split once; a split's metrics and the test split's ``recommendations.h5`` are
    both read from that one (n, top_k) array.
    """

    gradient_free = True
    keeps_weights = False
    reads_vectors = False  # rankers over item ids; lastitem_nn reads embeddings and says so
    below_floor_fix = "train longer (train.max_steps)"  # what health advises below mostpop

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        config = {p.name: p.default for p in self.params}
        config.update(params)
        super().__init__(data_info, **config)

    def check(self, dataset: Dataset, train: Any) -> None:
        """Histories of every example as (examples, history) arrays must fit in memory."""
        table = getattr(dataset, "table", None)
        if table is None:
            return
        examples, history = len(table.item_ids), self.config["history"]
        require_memory("model.history", examples * history * 8 * 3,
                       f"histories of {history} items for up to {examples:,} examples")

    def recommend(self, history: np.ndarray, k: int, users: np.ndarray | None = None
                  ) -> np.ndarray:
        """(n, k) item ids, best first, for (n, H) histories left-aligned and -1 padded, of
        ``users`` (their ids in sequence.h5; None: unknown users), which a model may read."""
        raise NotImplementedError

    def known_items(self) -> np.ndarray | None:
        """Item ids a history may hold (None: any); the fitted or loaded catalogue."""
        return None

    def recommend_histories(self, histories: Sequence[Sequence[int]], k: int | None = None,
                            users: Sequence[str] | None = None) -> np.ndarray:
        """The top ``k`` items (default ``top_k``) for each history of item ids, oldest first,
        of ``users`` (ids as in sequence.h5; None, or a None among them: unknown); the last
        ``history`` items of each are read, as in training."""
        k = self.config["top_k"] if k is None else int(k)
        if k < 1:
            raise ConfigError(f"k: expected a positive number of items, got {k}")
        width = self.config["history"]
        rows = np.full((len(histories), width), -1, np.int64)
        known = self.known_items()
        for i, items in enumerate(histories):
            items = [int(x) for x in items][-width:]
            if not items:
                raise DataError(f"history {i + 1} is empty; give at least one item id")
            if known is not None:
                unknown = np.setdiff1d(items, known)
                if len(unknown):
                    raise DataError(f"history {i + 1}: item {int(unknown[0])} is not in the "
                                    "catalogue the model was trained on")
            rows[i, :len(items)] = items
        return self.recommend(rows, k, None if users is None else np.array(
            [None if u is None else str(u) for u in users], dtype=object))

    def rank(self, view: Dataset) -> Ranking:
        """The examples of ``view`` (one per user with a target) and their top items."""
        ex = eval_examples(view, self.config["history"])
        items = self.recommend(ex.history, self.config["top_k"], ex.user_ids) if len(ex) else \
            np.zeros((0, self.config["top_k"]), np.int64)
        return Ranking(ex.user_ids, items, ex.target)

    def floors(self, train: Dataset) -> dict[str, "NextItemModel"]:
        """Reference rankers fitted on ``train``, measured beside this model (none here)."""
        return {}

    def predict(self, dataset: Dataset, splits: Mapping[str, Dataset]) -> dict[str, Any]:
        """Each split's ranking by role, and under ``floors`` the floors' valid and test
        rankings by name."""
        views = {role: view for role, view in splits.items() if view is not None and len(view)}
        out: dict[str, Any] = {role: self.rank(view)
                               for role, view in {**views, "all": dataset}.items()}
        floors = self.floors(views["train"]) if "train" in views else {}
        out["floors"] = {name: {role: floor.rank(views[role]) for role in ("valid", "test")
                                if role in views} for name, floor in floors.items()}
        return out

    def evaluate(self, data: Dataset, predictions: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
        role = getattr(data, "role", "all")
        ranking = (predictions or {}).get(role) or self.rank(data)
        if not len(ranking.target):
            return {"users": 0}
        metrics: dict[str, Any] = ranking_metrics(ranking.items, ranking.target)
        floors = {name: ranking_metrics(per[role].items, per[role].target)
                  for name, per in (predictions or {}).get("floors", {}).items() if role in per}
        if floors:
            metrics["floors"] = {name: {k: v for k, v in m.items() if k != "users"}
                                 for name, m in floors.items()}
        return metrics

    def health(self, metrics: Mapping[str, Any]) -> list[str] | None:
        """Below mostpop on test is unhealthy; without floors nothing is checked."""
        test = metrics.get("test") or {}
        floor = (test.get("floors") or {}).get("mostpop")
        if floor is None:
            return None
        if test.get("ndcg@10", 0.0) < floor["ndcg@10"]:
            return [f"{self.name} ranks below mostpop on test (NDCG@10 {test['ndcg@10']:.4f} < "
                    f"{floor['ndcg@10']:.4f}): {self.below_floor_fix}"]
        return []

    @classmethod
    def run_outputs(cls, export: Mapping[str, Any]) -> tuple[str, ...]:
        return ("recommendations.h5",)

    def export_attrs(self) -> dict[str, Any]:
        return {"model": self.name, "history": self.config["history"]}

    def export(self, dataset: Dataset, ctx: RunContext,
               predictions: Mapping[str, Ranking] | None = None) -> dict[str, str]:
        artifacts = {}
        if (ctx.run_dir / "model.pt").exists():
            artifacts["model"] = str(ctx.run_dir / "model.pt")
        test = (predictions or {}).get("test")
        if test is not None and len(test.target):
            artifacts["recommendations"] = str(write_recommendations(
                ctx.run_dir / "recommendations.h5", test.users, test.items,
                {**self.export_attrs(), "split": "test"}))
        return artifacts

    def summarize(self, metrics: Mapping[str, Any]) -> str:
        lines = ["split   model         users    R@5     R@10    N@5     N@10"]
        for role in ("valid", "test"):
            m = metrics.get(role) or {}
            if not m.get("users"):
                continue
            for name, r in {self.name: m, **(m.get("floors") or {})}.items():
                lines.append(f"{role:<7} {name:<12} {m['users']:6d}  {r['recall@5']:.4f}  "
                             f"{r['recall@10']:.4f}  {r['ndcg@5']:.4f}  {r['ndcg@10']:.4f}")
        return "\n".join(lines)

    def save(self, path: Path) -> None:  # what a baseline needs is refit in seconds
        raise NotImplementedError(f"{self.name} keeps no model file")

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> "NextItemModel":
        raise NotImplementedError(f"{cls.name} keeps no model file")
