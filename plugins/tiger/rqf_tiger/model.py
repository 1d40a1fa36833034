"""The ``tiger`` model: an encoder-decoder transformer that reads a user's history as semantic-ID
tokens and generates the next item's full ID, decoded by beam search over valid IDs only."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from rqf import (Dataset, Param, RqfError, RunContext, TensorBatches, autocast,
                 require_memory)
from rqf.ranking import (EXCLUDE_HISTORY, FLOORS, HISTORY, TOP_K, Examples, RankingTask,
                         monitored_examples, sequence_table, train_examples)
from rqf_tiger.ids import SemanticIdRanker
from rqf_tiger.net import BOS, TigerNet


class TigerTask(RankingTask):
    """Teacher-forced next-ID cross-entropy; validation decodes whole IDs and ranks them."""

    def __init__(self, model: "TigerModel", history: torch.Tensor, target: torch.Tensor,
                 users: torch.Tensor, valid: Examples | None) -> None:
        super().__init__(model, model.net, {"semantic_ids_sha256": model.ids_sha256,
                                            "architecture": repr(model.net)}, valid)
        device = model.device
        self.history, self.target = history.to(device), target.to(device)
        self.users = users.to(device)
        self.item_tokens = model.item_tokens.to(device)
        self.bos = torch.full((1, 1), BOS, dtype=torch.long, device=device)
        self.loss = nn.CrossEntropyLoss()

    def training_step(self, module: nn.Module, batch: torch.Tensor):
        source = torch.cat([self.users[batch], self.item_tokens[self.history[batch]].flatten(1)], 1)
        goal = self.item_tokens[self.target[batch]]
        logits = module(source, torch.cat([self.bos.expand(len(batch), 1), goal[:, :-1]], 1))
        return self.loss(logits.reshape(-1, logits.shape[-1]).float(), goal.reshape(-1)), {}


class TigerModel(SemanticIdRanker):
    """TIGER: generative retrieval of the next item's semantic ID (Rajput et al., 2023)."""

    name = "tiger"
    gradient_free = False
    keeps_weights = True
    below_floor_fix = "train longer (train.max_steps) or check the IDs it reads"
    file_format = "rqf-tiger-1"
    params = (
        Param("semantic_ids", "path", help="semantic_ids.h5 of the items (from rqvae, rqkmeans, "
              "...); its unique_codes, collision level included, are the IDs generated"),
        HISTORY,
        TOP_K,
        FLOORS,
        EXCLUDE_HISTORY,
        Param("user_tokens", int, 0, "hash each user id into one of this many tokens read "
              "before the history, as the paper does with 2,000 (0: no user token)", min=0),
        Param("dedup_history", bool, False, "keep each item of a history at its latest "
              "position only (for data where users repeat items)"),
        Param("d_model", int, 64, "transformer width", min=8),
        Param("heads", int, 4, "attention heads (d_model must divide by it)", min=1),
        Param("layers", int, 2, "encoder layers, and as many decoder layers", min=1),
        Param("ff", int, 256, "feed-forward width", min=8),
        Param("dropout", float, 0.1, "dropout", min=0, max=1),
        Param("beam", int, 20, "beams of the constrained search (>= top_k)", min=1),
        Param("monitor_users", int, 2048, "validation users decoded after each epoch to pick "
              "the best weights (0: all)", min=0),
        Param("eval_batch_size", int, 256, "users decoded at once", min=1),
    )
    # A budget in steps (on a 2-core CPU, 1,200 steps on scientific took 712 s, validation and
    # ranking included; tiger_paper.yaml has the published size for a GPU); validation every
    # 250 steps keeps the best weights.
    train_defaults = {"epochs": None, "max_steps": 1000, "batch_size": 256, "lr": 2e-3,
                      "weight_decay": 0.01, "warmup_steps": 200, "scheduler": "cosine",
                      "eval_every": 250, "monitor": "valid_ndcg@10", "monitor_mode": "max"}

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        super().__init__(data_info, **params)  # the IDs read, beam and heads checked
        cfg = self.config
        self._require_network_memory()
        self.net = TigerNet(n_tokens=self.n_tokens + cfg["user_tokens"] + self.user_width,
                            source_len=self.user_width + cfg["history"] * self.levels,
                            levels=self.levels,
                            **{k: cfg[k] for k in ("d_model", "heads", "layers", "ff", "dropout")})

    def _require_network_memory(self) -> None:
        cfg = self.config
        d, ff, layers = cfg["d_model"], cfg["ff"], cfg["layers"]
        positions = cfg["history"] * self.levels + self.levels + 1
        # encoder 4d^2 + 2d*ff, decoder 8d^2 + 2d*ff per layer; embeddings and the output head
        network = layers * (12 * d * d + 4 * d * ff) + (2 * self.n_tokens + positions) * d
        users = cfg["user_tokens"] * d
        params = network + users
        keys = "model.user_tokens, model.d_model" if users > network else \
            "model.d_model, model.ff, model.layers, model.history"
        require_memory(keys, params * 16,
                       f"a network of {params:.3g} parameters ({layers}+{layers} layers, d_model "
                       f"{d}, ff {ff}, {self.n_tokens} ID tokens, {cfg['user_tokens']:,} user "
                       f"tokens, {positions} positions) with its gradients and optimizer state")

    def check(self, dataset: Dataset, train: Any) -> None:
        super().check(dataset, train)
        cfg = self.config
        width = cfg["history"] * self.levels
        # activations kept for the backward pass: attention and feed-forward of every layer
        activations = train.batch_size * width * (cfg["ff"] + 8 * cfg["d_model"]) * 4 \
            * 2 * cfg["layers"] * 3
        require_memory("train.batch_size, model.history, model.ff", activations,
                       f"a training batch of {train.batch_size} histories of {width} tokens "
                       f"through {cfg['layers']}+{cfg['layers']} layers")

    # -- training -----------------------------------------------------------------------------
    def fit(self, train: Dataset, valid: Dataset | None, ctx: RunContext) -> dict[str, Any]:
        cfg = self.config
        trainer = ctx.require_trainer(self.name)
        device = self.device = trainer.device
        self.precision = ctx.train.precision
        self.decide_exclusion(train)
        ex = train_examples(train, cfg["history"])
        table, _ = sequence_table(train)  # each user's token is hashed once, not once per example
        if not len(ex):
            raise RqfError("tiger: the training split holds no next-item examples: a training "
                           "sequence needs two items after the splitter held out its targets "
                           "(leave_last_out keeps all but the last two, so a user needs four)")
        valid_ex = monitored_examples(valid, cfg["history"], cfg["monitor_users"], ctx.seed,
                                      ctx.train.monitor)
        self.net.to(device)
        task = TigerTask(self, self._history_rows(ex.history, "training histories"),
                         torch.from_numpy(self._rows(ex.target, "training targets")),
                         self._user_tokens(table.user_ids, len(table))[ex.users], valid_ex)
        batches = TensorBatches(torch.arange(len(ex), device=device), ctx.train.batch_size,
                                seed=ctx.seed, device=device)
        result = trainer.fit(task, batches)
        self.net.eval()
        return {**result.summary(device), "training_examples": len(ex),
                "semantic_ids": str(self.ids_path), "semantic_ids_sha256": self.ids_sha256}

    # -- ranking ------------------------------------------------------------------------------
    @torch.no_grad()
    def recommend(self, history: np.ndarray, k: int, users: np.ndarray | None = None
                  ) -> np.ndarray:
        """The top ``k`` items of each history: whole IDs from the constrained beam search."""
        net, device = self.net, self.device
        self.require_beam_holds(k)
        rows = self._history_rows(history, "histories")
        user_tokens = self._user_tokens(users, len(history))
        bos = torch.full((1, 1), BOS, dtype=torch.long, device=device)

        def steps_for(b: slice):  # the encoder runs once for these users
            source = self._source(rows[b].to(device), user_tokens[b])
            with autocast(device, self.precision):
                memory, pad = net.encode(source)

            def step_logits(tokens: torch.Tensor, expand: int) -> torch.Tensor:
                beams = torch.cat([bos.expand(len(tokens), 1), tokens], 1)
                with autocast(device, self.precision):
                    logits = net.decode_beams(beams.reshape(len(memory), expand, -1), memory, pad)
                return logits.reshape(len(tokens), -1)
            return step_logits

        return self.decode_items(rows, k, steps_for)
