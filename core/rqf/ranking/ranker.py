"""The base every ranker shares (``NextItemModel``), its training task, and the parameters
every ranker takes: metrics, export, health and the summary are written once, here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from rqf.errors import ConfigError, DataError
from rqf.interfaces import Dataset, Model, RunContext
from rqf.memory import require_memory
from rqf.params import Param
from rqf.ranking.examples import Examples, eval_examples, sequence_table, train_examples
from rqf.ranking.metrics import KS, coverage, ranking_metrics
from rqf.ranking.recommendations import write_recommendations
from rqf.training.loop import TrainingTask

HISTORY = Param("history", int, 20, "most recent items of a user's history a model reads",
                min=1)
TOP_K = Param("top_k", int, 10, "items recommended per user (recommendations.h5 width)", min=10)
FLOORS = Param("floors", bool, True, "also rank valid and test with mostpop and lastitem_nn "
               "(seconds) and report them beside this model; the run is unhealthy below them")
REPEAT_LIMIT = 0.01  # under this share of repeated training next items, auto leaves history out
EXCLUDE_HISTORY = Param(
    "exclude_history", str, "auto", "leave the items of a user's own history out of its list: "
    "always, never, or auto (always when under 1% of the training next items repeat an item "
    "of their history, as where users never buy an item twice); the floors follow the model",
    choices=("auto", "always", "never"))


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
                            self.valid.target, self.model.ks)
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
        table, _ = sequence_table(dataset)
        examples, history = len(table.item_ids), self.config["history"]
        require_memory("model.history", examples * history * 8 * 3,
                       f"histories of {history} items for up to {examples:,} examples")
        users, top_k = len(table), self.config["top_k"]
        require_memory("model.top_k", users * top_k * 8 * 3,
                       f"the top {top_k:,} items of up to {users:,} users")

    def recommend(self, history: np.ndarray, k: int, users: np.ndarray | None = None
                  ) -> np.ndarray:
        """(n, k) item ids, best first, for (n, H) histories left-aligned and -1 padded, of
        ``users`` (their ids in sequence.h5; None: unknown users), which a model may read;
        without the history's own items when ``excludes_history``."""
        raise NotImplementedError

    # -- the history-exclusion protocol ------------------------------------------------------
    exclusion: dict[str, Any] | None = None

    def decide_exclusion(self, train: Dataset) -> dict[str, Any]:
        """Whether lists leave out the user's own history (``exclude_history``), decided on
        the training sequences (``auto``: when under 1% of their next items repeat an item of
        their history); kept in ``exclusion`` and recorded with every split's metrics."""
        setting = self.config.get("exclude_history", "never")
        ex = train_examples(train, self.config["history"])
        repeats = float((ex.history == ex.target[:, None]).any(1).mean()) if len(ex) else 0.0
        exclude = setting == "always" or (setting == "auto" and repeats < REPEAT_LIMIT)
        self.exclusion = {"history_excluded": bool(exclude), "exclude_history": setting,
                          "training_repeats": round(repeats, 6)}
        return self.exclusion

    @property
    def excludes_history(self) -> bool:
        return bool(self.exclusion and self.exclusion["history_excluded"])

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
        require_memory("k", len(histories) * k * 8 * 4,
                       f"{k:,} items for each of {len(histories):,} histories")
        width = self.config["history"]
        rows = np.full((len(histories), width), -1, np.int64)
        known = self.known_items()
        for i, items in enumerate(histories):
            items = [int(x) for x in items][-width:]
            if not items:
                raise DataError(f"history {i + 1} is empty; give at least one item id")
            if min(items) < 0:
                raise DataError(f"history {i + 1}: item {min(items)} is not an item id (ids "
                                "are whole numbers from 0; -1 is padding)")
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
        """The floors fitted on ``train`` and measured beside this model, for a ranker that
        declares ``FLOORS`` and leaves it on (``fit_floors``); none otherwise."""
        from rqf.ranking.floors import fit_floors  # the floors are rankers themselves

        return fit_floors(self, train)

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
        role = data.role
        ranking = (predictions or {}).get(role) or self.rank(data)
        if not len(ranking.target):
            return {"users": 0}
        catalogue = self._catalogue_size(data)

        def measured(r: Ranking) -> dict[str, Any]:
            return {**ranking_metrics(r.items, r.target, self.ks),
                    "coverage@10": coverage(r.items, 10, catalogue)}

        metrics: dict[str, Any] = {**measured(ranking), **(self.exclusion or {})}
        floors = {name: measured(per[role])
                  for name, per in (predictions or {}).get("floors", {}).items() if role in per}
        if floors:
            metrics["floors"] = {name: {k: v for k, v in m.items() if k != "users"}
                                 for name, m in floors.items()}
        return metrics

    def _catalogue_size(self, data: Dataset) -> int:
        """Items of the data's sequences (what coverage is a share of), or of the model's
        catalogue when the view holds no sequence table."""
        table = getattr(data, "table", None)
        if table is not None:
            return int(len(np.unique(table.item_ids)))
        known = self.known_items()
        return 0 if known is None else int(len(known))

    def health(self, metrics: Mapping[str, Any]) -> list[str] | None:
        """Below a floor (mostpop, or lastitem_nn where the items have embeddings) on test
        NDCG@10 is unhealthy; without floors nothing is checked."""
        test = metrics.get("test") or {}
        floors = test.get("floors") or {}
        if "mostpop" not in floors:
            return None
        for name in ("mostpop", "lastitem_nn"):
            floor = floors.get(name)
            if floor is not None and test.get("ndcg@10", 0.0) < floor["ndcg@10"]:
                return [f"{self.name} ranks below {name} on test (NDCG@10 "
                        f"{test['ndcg@10']:.4f} < {floor['ndcg@10']:.4f}): {self.below_floor_fix}"]
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

    @property
    def ks(self) -> tuple[int, ...]:
        """The cut-offs metrics are read at: 5 and 10 (every ranker's, so runs compare), and
        the model's own ``top_k`` when it ranks more."""
        return tuple(sorted({*KS, self.config["top_k"]}))

    def summarize(self, metrics: Mapping[str, Any]) -> str:
        heads = [f"R@{k}" for k in self.ks] + [f"N@{k}" for k in self.ks] + ["cov@10"]
        lines = ["split   model         users  " + "".join(f"{h:>8}" for h in heads)]
        for role in ("valid", "test"):
            m = metrics.get(role) or {}
            if not m.get("users"):
                continue
            for name, r in {self.name: m, **(m.get("floors") or {})}.items():
                values = [r.get(f"recall@{k}", float("nan")) for k in self.ks] + \
                    [r.get(f"ndcg@{k}", float("nan")) for k in self.ks] + \
                    [r.get("coverage@10", float("nan"))]
                lines.append(f"{role:<7} {name:<12} {m['users']:6d}  "
                             + "".join(f"{v:8.4f}" for v in values))
        if self.exclusion:
            done = "left out of" if self.excludes_history else "kept in"
            lines.append(f"history items {done} every list (exclude_history: "
                         f"{self.exclusion['exclude_history']}; "
                         f"{self.exclusion['training_repeats']:.2%} of training next items "
                         "repeat their history)")
        return "\n".join(lines)


def without_history(ranked: np.ndarray, history: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` items of each ranked row (n, >= k) that its history row (n, H) lacks,
    order kept, -1 padded where too few are left."""
    ranked = np.asarray(ranked)
    seen = (ranked[:, :, None] == history[:, None, :]).any(2) | (ranked < 0)
    order = np.argsort(seen, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(ranked, order, 1)
    return np.where(np.take_along_axis(seen, order, 1), -1, out)


def mask_history(scores: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``scores`` (n, items) with -inf in place at each row's history ``columns`` (n, H)
    (-1: none), so a top-k over the catalogue never returns them."""
    rows = torch.arange(len(scores), device=scores.device)[:, None].expand_as(columns)
    keep = columns >= 0
    scores[rows[keep], columns[keep]] = -float("inf")
    return scores
