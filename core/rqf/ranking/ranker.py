"""The base every ranker shares (``NextItemModel``), its training task, and the parameters
every ranker takes: metrics, export, health and the summary are written once, here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from rqf.errors import ConfigError, DataError
from rqf.interfaces import Dataset, Model, RunContext
from rqf.memory import require_memory
from rqf.params import Param
from rqf.ranking.examples import Examples, eval_examples, sequence_table
from rqf.ranking.metrics import KS, ranking_metrics
from rqf.ranking.recommendations import write_recommendations
from rqf.training.loop import TrainingTask

HISTORY = Param("history", int, 20, "most recent items of a user's history a model reads",
                min=1)
TOP_K = Param("top_k", int, 10, "items recommended per user (recommendations.h5 width)", min=10)
FLOORS = Param("floors", bool, True, "also rank valid and test with mostpop and lastitem_nn "
               "(seconds) and report them beside this model; the run is unhealthy below mostpop")



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
        metrics: dict[str, Any] = ranking_metrics(ranking.items, ranking.target, self.ks)
        floors = {name: ranking_metrics(per[role].items, per[role].target, self.ks)
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

    @property
    def ks(self) -> tuple[int, ...]:
        """The cut-offs metrics are read at: 5 and 10 (every ranker's, so runs compare), and
        the model's own ``top_k`` when it ranks more."""
        return tuple(sorted({*KS, self.config["top_k"]}))

    def summarize(self, metrics: Mapping[str, Any]) -> str:
        heads = [f"R@{k}" for k in self.ks] + [f"N@{k}" for k in self.ks]
        lines = ["split   model         users  " + "".join(f"{h:>8}" for h in heads)]
        for role in ("valid", "test"):
            m = metrics.get(role) or {}
            if not m.get("users"):
                continue
            for name, r in {self.name: m, **(m.get("floors") or {})}.items():
                values = [r.get(f"recall@{k}", float("nan")) for k in self.ks] + \
                    [r.get(f"ndcg@{k}", float("nan")) for k in self.ks]
                lines.append(f"{role:<7} {name:<12} {m['users']:6d}  "
                             + "".join(f"{v:8.4f}" for v in values))
        return "\n".join(lines)
