"""What every ranker over semantic IDs shares: the IDs file read as a token vocabulary and a
prefix trie, the check that the IDs are the data's catalogue, item rows, hashed user tokens,
and the model file."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from rqf import ConfigError, DataError, Dataset, ItemSource, RqfError, missing_members
from rqf.codes import PrefixTrie, SemanticIds, sha256_of
from rqf.ranking import NextItemModel, catalogue_positions, dedup_history
from rqf_tiger.decode import constrained_beam_search
from rqf_tiger.net import PAD

# for one slice of the users being ranked: the step function of their beam search
StepsFor = Callable[[slice], Callable[[torch.Tensor, int], torch.Tensor]]


def require_heads_divide(cfg: Mapping[str, Any]) -> None:
    """``model.heads`` must divide ``model.d_model`` (every transformer ranker's check)."""
    if cfg["d_model"] % cfg["heads"]:
        raise RqfError(f"model.heads: d_model {cfg['d_model']} does not divide by "
                       f"{cfg['heads']} heads")


class SemanticIdRanker(NextItemModel):
    """A ranker that reads and generates items as their semantic IDs (``semantic_ids``), by a
    transformer (``d_model``, ``heads``) and a beam search (``beam``) over them, with optional
    hashed user tokens (``user_tokens``)."""

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        super().__init__(data_info, **params)
        cfg = self.config
        require_heads_divide(cfg)
        if cfg["beam"] < cfg["top_k"]:
            raise RqfError(f"model.beam: {cfg['beam']} beams cannot give top_k {cfg['top_k']} items")
        self._load_ids(Path(cfg["semantic_ids"]))
        if cfg["beam"] > len(self.item_ids):
            raise ConfigError(f"model.beam: {cfg['beam']} beams for {len(self.item_ids)} items; "
                              f"a beam holds distinct items, so at most {len(self.item_ids)}")
        self.user_base = self.n_tokens  # user tokens, then one for a user not given
        self.user_width = 1 if cfg["user_tokens"] else 0
        self.device = torch.device("cpu")
        self.precision = "fp32"

    # -- the vocabulary ---------------------------------------------------------------------
    def _load_ids(self, path: Path) -> None:
        ids = SemanticIds(path)
        if not len(ids.item_ids):
            raise DataError(f"{path}: holds no items; tiger generates the IDs of a catalogue's "
                            "items (make them with a tokenizer run, e.g. examples/rqkmeans.yaml)")
        self.ids_path, self.ids_sha256 = path, sha256_of(path)
        codes = ids.unique_codes.astype(np.int64)
        self.levels = codes.shape[1]
        self.trie = PrefixTrie(codes)
        self.offsets = list(2 + np.r_[0, np.cumsum(self.trie.vocab)[:-1]])
        self.n_tokens = 2 + int(sum(self.trie.vocab))
        order = np.argsort(ids.item_ids)
        self.item_ids = ids.item_ids[order].astype(np.int64)
        tokens = codes[order] + np.asarray(self.offsets)[None, :]
        # one row per item (sorted by id) and a last row of padding for an empty slot
        self.item_tokens = torch.from_numpy(np.vstack([tokens, np.full(self.levels, PAD)]))
        self.leaf_item = ids.item_ids[self.trie.rows].astype(np.int64)  # leaf -> item id
        self.item_leaf = np.empty(len(self.item_ids) + 1, np.int64)  # item row -> leaf
        self.item_leaf[np.searchsorted(self.item_ids, self.leaf_item)] = np.arange(
            len(self.leaf_item))
        self.item_leaf[-1] = -1  # the padding row
        self.codebooks = ids.codebooks

    def check(self, dataset: Dataset, train: Any) -> None:
        """The IDs must be of this catalogue: an ID for every item of the storage, and none
        for an item outside it (IDs of another catalogue would rank items it does not have)."""
        super().check(dataset, train)
        storage = dataset.storage
        if missing_members(storage, ItemSource):
            return
        catalogue = np.unique(np.asarray(storage.item_ids, np.int64))
        without = np.setdiff1d(catalogue, self.item_ids, assume_unique=True)
        foreign = np.setdiff1d(self.item_ids, catalogue, assume_unique=True)
        if len(without) or len(foreign):
            raise DataError(
                f"{self.ids_path}: made for another catalogue: {len(without)} of the "
                f"{len(catalogue)} items of the data have no semantic ID"
                f"{f' (e.g. {without[:3].tolist()})' if len(without) else ''} and "
                f"{len(foreign)} IDs name items it does not hold"
                f"{f' (e.g. {foreign[:3].tolist()})' if len(foreign) else ''}; make the IDs "
                "from this item file (e.g. examples/rqkmeans.yaml)")

    def _rows(self, items: np.ndarray, where: str) -> np.ndarray:
        """Row of each item id in the vocabulary; -1 stays padding, unknown ids are an error."""
        pos, missing = catalogue_positions(self.item_ids, items)
        if len(missing):
            raise DataError(f"{self.ids_path}: {len(missing)} items of the {where} have no "
                            f"semantic ID, e.g. {missing[:5].tolist()} (were the IDs made for "
                            "this item file?)")
        return np.where(items >= 0, pos, len(self.item_ids))

    def _user_tokens(self, users: np.ndarray | None, n: int) -> torch.Tensor:
        """(n, 1) tokens of the users' ids hashed into ``user_tokens`` buckets (a stable hash,
        the same in every process), the last token for users not given (None); (n, 0) without."""
        buckets = self.config["user_tokens"]
        if not buckets:
            return torch.zeros((n, 0), dtype=torch.long)
        if users is None:
            return torch.full((n, 1), self.user_base + buckets, dtype=torch.long)
        hashed = np.fromiter((buckets if u is None else zlib.crc32(str(u).encode()) % buckets
                              for u in users), np.int64, len(users))
        return torch.from_numpy(self.user_base + hashed)[:, None]

    def _history_rows(self, history: np.ndarray, where: str) -> torch.Tensor:
        if self.config["dedup_history"]:
            history = dedup_history(history)
        return torch.from_numpy(self._rows(history, where))

    def _source(self, history_rows: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        tokens = self.item_tokens.to(history_rows.device)[history_rows].flatten(1)
        return torch.cat([users.to(tokens.device), tokens], 1)

    def require_beam_holds(self, k: int) -> None:
        """A list of ``k`` items needs ``k`` beams: more is refused naming ``model.beam``."""
        beam = self.config["beam"]
        if k > beam:
            raise ConfigError(f"k: {k} items from {beam} beams; at most {beam} "
                              "(model.beam decides how many whole IDs are decoded)")

    def known_items(self) -> np.ndarray:
        return self.item_ids

    def export_attrs(self) -> dict[str, Any]:
        return {**super().export_attrs(), "semantic_ids": str(self.ids_path),
                "semantic_ids_sha256": self.ids_sha256}

    # -- the model file --------------------------------------------------------------------------
    @torch.no_grad()
    def decode_items(self, rows: torch.Tensor, k: int, steps_for: StepsFor) -> np.ndarray:
        """(len(rows), k) items from the constrained beam search, ``eval_batch_size`` users at
        a time: ``steps_for(batch)`` runs what the network reads once for those users and
        returns the step function the search calls; ``rows`` are their history's item rows
        (what history exclusion leaves out). The network is in eval mode meanwhile."""
        net, device = self.net, self.device
        was_training = net.training
        net.eval()
        trie = self.trie.to(device)
        out = np.full((len(rows), k), -1, np.int64)
        size = self.config["eval_batch_size"]
        try:
            for a in range(0, len(rows), size):
                b = slice(a, a + size)
                leaves, _ = constrained_beam_search(steps_for(b), len(rows[b]), trie,
                                                    self.offsets, self.config["beam"], device,
                                                    self.excluded_leaves(rows[b]))
                leaves = leaves[:, :k].cpu().numpy()
                out[a:a + len(leaves), :leaves.shape[1]] = np.where(
                    leaves >= 0, self.leaf_item[np.maximum(leaves, 0)], -1)
        finally:
            net.train(was_training)
        return out

    def excluded_leaves(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The leaves of the history ``rows`` (item rows, the padding row for none) when lists
        leave the history out; None otherwise."""
        if not self.excludes_history:
            return None
        return torch.from_numpy(self.item_leaf)[rows.cpu()]

    def state(self) -> dict[str, Any]:
        return {"semantic_ids_sha256": self.ids_sha256, "exclusion": self.exclusion,
                "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        if self.ids_sha256 != state["semantic_ids_sha256"]:
            raise RqfError(f"{self.ids_path}: the model was trained on other semantic IDs than "
                           "this file holds now")
        self.exclusion = state.get("exclusion")
        self.net.load_state_dict(state["state_dict"])
        self.net.eval()

    def place(self, device: torch.device) -> None:
        self.device = device
        self.net.to(device)
