"""``sasrec``: causal self-attention over item ids (Kang & McAuley, 2018), trained with full
softmax cross-entropy over the catalogue at every position, ranked over every item.

The reference generative retrieval is judged against: it reads no embeddings and no semantic
IDs, only the order of the items, and is measured by the same evaluator as tiger and the floors.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from rqf import (DataError, Dataset, Param, RqfError, RunContext, TensorBatches, autocast,
                 require_memory)
from rqf.ranking import (EXCLUDE_HISTORY, FLOORS, TOP_K, Examples, NextItemModel, RankingTask,
                         catalogue_positions, mask_history, monitored_examples, right_align,
                         sequence_rows, sequence_table)
from rqf_tiger.ids import require_heads_divide

PAD = 0  # item index 0 is padding; item i of the catalogue is index i + 1


class SASRecNet(nn.Module):
    """Item and position embeddings, pre-norm causal self-attention blocks, and scores of every
    item as the dot product with its (shared) embedding."""

    def __init__(self, *, n_items: int, width: int, d_model: int, heads: int, layers: int,
                 dropout: float) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1, d_model, padding_idx=PAD)
        self.positions = nn.Embedding(width, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, d_model, dropout, batch_first=True,
                                       norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        mask = torch.triu(torch.full((width, width), float("-inf")), diagonal=1)
        self.register_buffer("causal", mask, persistent=False)
        nn.init.normal_(self.items.weight, std=d_model ** -0.5)
        with torch.no_grad():
            self.items.weight[PAD].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, width) item indices, right-aligned, 0 padded -> (batch, width, d_model).

        Position t reads positions <= t only; padding is zeroed after every block, so it
        carries nothing forward.
        """
        keep = (seq != PAD).unsqueeze(-1).to(self.items.weight.dtype)
        pos = torch.arange(seq.shape[1], device=seq.device)
        x = self.dropout(self.items(seq) * self.items.embedding_dim ** 0.5 + self.positions(pos))
        x = x * keep
        causal = self.causal[:seq.shape[1], :seq.shape[1]]
        for block in self.blocks:
            x = block(x, src_mask=causal, is_causal=True) * keep
        return self.norm(x)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n, d_model) states -> (n, n_items) scores of every catalogue item (padding left out)."""
        return hidden @ self.items.weight[1:].T


class SASRecTask(RankingTask):
    """Next-item cross-entropy over the whole catalogue at every real position of a sequence."""

    def __init__(self, model: "SASRecModel", sequences: torch.Tensor,
                 valid: Examples | None) -> None:
        super().__init__(model, model.net, {"catalogue": int(len(model.item_ids)),
                                            "architecture": repr(model.net)}, valid)
        self.sequences = sequences.to(model.device)
        self.loss = nn.CrossEntropyLoss()

    def training_step(self, module: nn.Module, batch: torch.Tensor):
        seq = self.sequences[batch]
        inputs, targets = seq[:, :-1], seq[:, 1:]
        hidden = module(inputs)
        real = targets != PAD
        net = self.model.net
        logits = net.scores(hidden[real])
        return self.loss(logits.float(), targets[real] - 1), {}


class SASRecModel(NextItemModel):
    """SASRec: self-attentive sequential recommendation, full-softmax cross-entropy."""

    name = "sasrec"
    gradient_free = False
    keeps_weights = True
    reads_vectors = False
    file_format = "rqf-sasrec-1"
    params = (
        Param("history", int, 50, "most recent items of a user's sequence the model reads",
              min=1),
        TOP_K,
        FLOORS,
        EXCLUDE_HISTORY,
        Param("d_model", int, 64, "embedding and attention width", min=8),
        Param("heads", int, 2, "attention heads (d_model must divide by it)", min=1),
        Param("layers", int, 2, "self-attention blocks", min=1),
        Param("dropout", float, 0.5, "dropout on embeddings and in every block", min=0, max=1),
        Param("monitor_users", int, 4096, "validation users ranked at each validation to pick "
              "the best weights (0: all)", min=0),
        Param("eval_batch_size", int, 1024, "users ranked at once", min=1),
    )
    # measured on beauty (22,363 users) with the 2-core CPU: see the reference table in docs/retrieval.md
    train_defaults = {"epochs": None, "max_steps": 3000, "batch_size": 128, "lr": 1e-3,
                      "weight_decay": 0.0, "warmup_steps": 100, "scheduler": "constant",
                      "eval_every": 500, "monitor": "valid_ndcg@10", "monitor_mode": "max"}

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        super().__init__(data_info, **params)
        require_heads_divide(self.config)
        self.item_ids = np.zeros(0, np.int64)  # the catalogue: from fit, or the model file
        self.net: SASRecNet | None = None
        self.device = torch.device("cpu")
        self.precision = "fp32"

    def set_catalogue(self, item_ids: Any) -> None:
        """The items ranked (sorted ids), and a fresh network over them."""
        self.item_ids = np.asarray(item_ids, np.int64)
        cfg = self.config
        n, d = len(self.item_ids), cfg["d_model"]
        params = (n + 1 + cfg["history"]) * d + cfg["layers"] * 12 * d * d
        require_memory("model.d_model, model.layers", params * 16,
                       f"a SASRec of {params:,} parameters over {n:,} items (with its optimizer)")
        self.net = SASRecNet(n_items=n, width=cfg["history"], d_model=d, heads=cfg["heads"],
                             layers=cfg["layers"], dropout=cfg["dropout"]
                             ).eval()  # the trainer switches it to training

    def check(self, dataset: Dataset, train: Any) -> None:
        super().check(dataset, train)
        table, _ = sequence_table(dataset)
        n = len(np.unique(table.item_ids))  # one batch's scores of every item at every position
        require_memory("train.batch_size, model.history",
                       train.batch_size * self.config["history"] * n * 4 * 3,
                       f"scores of {n:,} items for a batch of {train.batch_size} sequences")

    def _rows(self, items: np.ndarray, where: str) -> np.ndarray:
        """Index (1..n) of each item id; -1 becomes padding; an unknown id is an error."""
        pos, missing = catalogue_positions(self.item_ids, items)
        if len(missing):
            raise DataError(f"{len(missing)} items of the {where} are not in the catalogue "
                            f"the model was trained on, e.g. {missing[:5].tolist()}")
        return np.where(items >= 0, pos + 1, PAD)

    def known_items(self) -> np.ndarray:
        return self.item_ids

    # -- training -----------------------------------------------------------------------------
    def fit(self, train: Dataset, valid: Dataset | None, ctx: RunContext) -> dict[str, Any]:
        cfg = self.config
        trainer = ctx.require_trainer(self.name)
        table, _ = sequence_table(train)
        self.decide_exclusion(train)
        self.set_catalogue(np.unique(table.item_ids))  # every item of the sequence file is ranked
        self.device, self.precision = trainer.device, ctx.train.precision
        seqs = sequence_rows(train, cfg["history"] + 1)
        if not len(seqs):
            raise RqfError("sasrec: the training split holds no sequence of two items or more")
        valid_ex = monitored_examples(valid, cfg["history"], cfg["monitor_users"], ctx.seed,
                                      ctx.train.monitor)
        self.net.to(self.device)
        task = SASRecTask(self, torch.from_numpy(self._rows(seqs, "training sequences")),
                          valid_ex)
        batches = TensorBatches(torch.arange(len(seqs), device=self.device),
                                ctx.train.batch_size, seed=ctx.seed, device=self.device)
        result = trainer.fit(task, batches)
        self.net.eval()
        return {**result.summary(self.device), "training_sequences": len(seqs),
                "items": len(self.item_ids)}

    # -- ranking ------------------------------------------------------------------------------
    @torch.no_grad()
    def item_scores(self, history: np.ndarray) -> torch.Tensor:
        """(n, n_items) scores of every catalogue item after each (n, H) history (left-aligned,
        -1 padded; the last ``history`` items are read); -inf for the history's own items when
        lists leave them out."""
        width = self.config["history"]
        history = right_align(_last_items(history, width))
        if history.shape[1] < width:
            history = np.concatenate([np.full((len(history), width - history.shape[1]), -1),
                                      history], 1)
        seq = torch.from_numpy(self._rows(history, "histories")).to(self.device)
        with autocast(self.device, self.precision):
            hidden = self.net(seq)[:, -1]
            scores = self.net.scores(hidden).float()
        return mask_history(scores, seq - 1) if self.excludes_history else scores

    def recommend(self, history: np.ndarray, k: int, users: np.ndarray | None = None
                  ) -> np.ndarray:
        """The ``k`` best-scored items of the whole catalogue after each history."""
        was_training = self.net.training
        self.net.eval()
        k = min(k, len(self.item_ids))
        out = np.full((len(history), k), -1, np.int64)
        step = self.config["eval_batch_size"]
        for a in range(0, len(history), step):
            top = self.item_scores(history[a:a + step]).topk(k, dim=1).indices.cpu().numpy()
            out[a:a + len(top)] = self.item_ids[top]
        self.net.train(was_training)
        return out

    # -- the model file --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"item_ids": torch.from_numpy(self.item_ids), "exclusion": self.exclusion,
                "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.set_catalogue(state["item_ids"].numpy())
        self.exclusion = state.get("exclusion")
        self.net.load_state_dict(state["state_dict"])
        self.net.eval()

    def place(self, device: torch.device) -> None:
        self.device = device
        self.net.to(device)


def _last_items(history: np.ndarray, width: int) -> np.ndarray:
    """The last ``width`` items of each left-aligned, -1 padded row, still left-aligned."""
    if history.shape[1] <= width:
        return history
    lengths = (history >= 0).sum(1)
    cols = np.arange(width)[None, :] + np.maximum(lengths - width, 0)[:, None]
    rows = np.arange(len(history))[:, None]
    taken = history[rows, np.minimum(cols, history.shape[1] - 1)]
    return np.where(np.arange(width)[None, :] < np.minimum(lengths, width)[:, None], taken, -1)
