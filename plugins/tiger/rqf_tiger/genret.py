"""``genret``: generative retrieval that trains every next item of a sequence in one pass.

A causal transformer reads a user's items as their semantic-ID tokens, oldest first, and learns
to write each next item's tokens from everything before them (teacher-forced), as SASRec learns
every next item at once; ranking writes the next item's whole ID by the same beam search over
valid IDs as ``tiger``. Its ID-token embeddings start from the tokenizer's codebooks (the
``codebooks`` of ``semantic_ids.h5``), so two items with near codes start near.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from rqf import (Dataset, Param, RqfError, RunContext, TensorBatches, autocast,
                 require_memory)
from rqf.ranking import (EXCLUDE_HISTORY, FLOORS, HISTORY, TOP_K, Examples, RankingTask,
                         dedup_history, monitored_examples, right_align, sequence_table)
from rqf_tiger.causal_net import PAD, CausalIdNet, codebook_embeddings
from rqf_tiger.ids import SemanticIdRanker


class GenretTask(RankingTask):
    """Next-token cross-entropy at every token of every item that has an item before it, each
    level's tokens scored among that level's codes only (what the beam search chooses from),
    over rows that pack several users' sequences (``pack_sequences``)."""

    def __init__(self, model: "GenretModel", packed: Mapping[str, torch.Tensor],
                 valid: Examples | None) -> None:
        super().__init__(model, model.net, {"semantic_ids_sha256": model.ids_sha256,
                                            "architecture": repr(model.net)}, valid)
        self.packed = {k: v.to(model.device) for k, v in packed.items()}
        self.loss = nn.CrossEntropyLoss(label_smoothing=model.config["label_smoothing"],
                                        reduction="sum")

    def training_step(self, module: nn.Module, batch: torch.Tensor):
        model = self.model
        tokens, slots, levels, segments, scored = (
            self.packed[k][batch] for k in ("tokens", "slots", "levels", "segments", "scored"))
        hidden, _ = module(tokens[:, :-1], slots[:, :-1], levels[:, :-1], segments[:, :-1])
        goal, scored, goal_level = tokens[:, 1:], scored[:, 1:], levels[:, 1:]
        total = hidden.new_zeros((), dtype=torch.float32)
        for level in range(model.levels):
            pick = scored & (goal_level == level)
            first, size = model.offsets[level], model.trie.vocab[level]
            logits = module.scores(hidden[pick], first, size).float()
            total = total + self.loss(logits, goal[pick] - first)
        return total / max(int(scored.sum()), 1), {}


def pack_sequences(model: "GenretModel", rows: np.ndarray, users: np.ndarray, seed: int,
                   skip: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Sequences, (n, H + 1) item rows right-aligned (the padding row on the left) and
    (n, user width) user tokens, packed whole into rows of ``user width + (H + 1) * levels``
    tokens, in a seeded random order, a new row when the next sequence does not fit.

    Each position keeps what it has in its own sequence's row: its item's slot (the newest
    item at slot H + 1, as when ranking), its level, a segment (the sequence's number + 1;
    0: padding) that keeps sequences from reading each other, and ``scored``: a token of an
    item after the first ``skip`` items of its sequence (default 1: every item with an item
    before it).
    """
    levels, width, pad = model.levels, model.user_width, len(model.item_ids)
    n, slots_per_row = rows.shape
    capacity = width + slots_per_row * levels
    count = (rows != pad).sum(1)
    sizes = width + count * levels
    row_of, start = np.empty(n, np.int64), np.empty(n, np.int64)
    row, used = 0, 0
    for u in np.random.default_rng(seed).permutation(n):
        if used + sizes[u] > capacity:
            row, used = row + 1, 0
        row_of[u], start[u] = row, used
        used += sizes[u]
    item_tokens = model.item_tokens.numpy()
    tokens = np.concatenate([users, item_tokens[rows].reshape(n, -1)], 1)
    column = np.arange(slots_per_row * levels)
    item_slot, item_level = 1 + column // levels, column % levels
    first_real = (slots_per_row - count)[:, None]  # the first real item's slot - 1
    real = np.concatenate([np.ones((n, width), bool), item_slot[None] > first_real], 1)
    skip = np.ones(n, np.int64) if skip is None else np.asarray(skip, np.int64)
    scored = np.concatenate([np.zeros((n, width), bool),
                             item_slot[None] > first_real + skip[:, None]], 1)
    slot = np.concatenate([np.zeros(width, np.int64), item_slot])
    level = np.concatenate([np.full(width, levels), item_level])
    user, col = np.nonzero(real)  # each user's real positions, in order
    rank = np.arange(len(user)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    at = (row_of[user], start[user] + rank)
    out = {name: np.zeros((row + 1, capacity), dtype) for name, dtype in (
        ("tokens", np.int64), ("slots", np.int64), ("levels", np.int64),
        ("segments", np.int64), ("scored", bool))}
    out["tokens"][at] = tokens[user, col]
    out["slots"][at], out["levels"][at] = slot[col], level[col]
    out["segments"][at], out["scored"][at] = user + 1, scored[user, col]
    return {k: torch.from_numpy(v) for k, v in out.items()}


def training_windows(train: Dataset, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every next item of the training inputs as a target once: each record's items cut into
    windows of ``width`` items, right-aligned, -1 padded on the left, the newest ending at the
    record's end and each older one ``width // 2`` items earlier. A window scores its newest
    ``width // 2`` items (its oldest window, every item after its first), so each target is
    read after at least ``width - width // 2`` items of its sequence (all it has, near its
    start). Returns (windows, the items each skips, each window's user row)."""
    table, r = sequence_table(train)
    keep = r.end - r.start >= 2
    start, end, user = r.start[keep], r.end[keep], r.user[keep]
    stride = max(width // 2, 1)
    extra = np.maximum(end - start - width, 0)
    count = 1 + -(-extra // stride)  # windows per record
    rec = np.repeat(np.arange(len(start)), count)
    nth = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    stop = end[rec] - nth * stride
    first = np.maximum(start[rec], stop - width)
    oldest = first == start[rec]
    skip = np.where(oldest, 1, (stop - first) - stride)
    lengths = stop - first
    windows = np.full((len(rec), width), -1, np.int64)
    rows = np.repeat(np.arange(len(rec)), lengths)
    offset = np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = np.arange(int(lengths.sum())) - offset + np.repeat(width - lengths, lengths)
    base = table.offsets[user[rec]]
    windows[rows, cols] = table.item_ids[np.repeat(base + first, lengths)
                                         + np.arange(int(lengths.sum())) - offset]
    return windows, skip, user[rec]


class GenretModel(SemanticIdRanker):
    """A causal decoder over semantic-ID tokens, every next item a target, IDs from codebooks."""

    name = "genret"
    gradient_free = False
    keeps_weights = True
    below_floor_fix = "train longer (train.max_steps) or check the IDs it reads"
    file_format = "rqf-genret-1"
    params = (
        Param("semantic_ids", "path", help="semantic_ids.h5 of the items (from rqkmeans, "
              "rqvae, ...); its unique_codes are the IDs generated, its codebooks the tokens' "
              "first embeddings"),
        HISTORY,
        TOP_K,
        FLOORS,
        EXCLUDE_HISTORY,
        Param("user_tokens", int, 0, "hash each user id into one of this many tokens read "
              "before the history (0: none)", min=0),
        Param("dedup_history", bool, False, "keep each item of a history at its latest "
              "position only (for data where users repeat items)"),
        Param("codebook_init", bool, True, "start the ID tokens' embeddings from the "
              "codebooks of semantic_ids (projected to d_model); IDs without codebooks, and "
              "a level without one (the collision level), start at random"),
        Param("tied", bool, False, "score each level's codes with their input embeddings "
              "instead of a separate output layer"),
        Param("label_smoothing", float, 0.0, "label smoothing of the next-token loss",
              min=0, max=0.99),
        Param("d_model", int, 64, "transformer width", min=8),
        Param("heads", int, 2, "attention heads (d_model must divide by it)", min=1),
        Param("layers", int, 2, "causal self-attention blocks", min=1),
        Param("ff", int, 256, "feed-forward width", min=8),
        Param("dropout", float, 0.1, "dropout on embeddings, attention and feed-forward",
              min=0, max=1),
        Param("beam", int, 20, "beams of the constrained search (>= top_k)", min=1),
        Param("monitor_users", int, 2048, "validation users decoded at each validation to "
              "pick the best weights (0: all)", min=0),
        Param("eval_batch_size", int, 256, "users decoded at once", min=1),
    )
    # measured on scientific's validation users (docs/retrieval.md has the table)
    train_defaults = {"epochs": None, "max_steps": 3000, "batch_size": 128, "lr": 5e-3,
                      "weight_decay": 0.01, "warmup_steps": 100, "scheduler": "cosine",
                      "eval_every": 500, "monitor": "valid_ndcg@10", "monitor_mode": "max"}

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        super().__init__(data_info, **params)  # the IDs read, beam and heads checked
        cfg = self.config
        d = cfg["d_model"]
        params = cfg["layers"] * (4 * d * d + 2 * d * cfg["ff"]) + \
            (self.n_tokens + cfg["user_tokens"] + cfg["history"] + 2) * d
        require_memory("model.d_model, model.layers, model.user_tokens", params * 16,
                       f"a network of {params:.3g} parameters with its gradients and optimizer "
                       "state")
        self.net = CausalIdNet(
            n_tokens=self.n_tokens + cfg["user_tokens"] + self.user_width,
            slots=cfg["history"] + 2, levels=self.levels, tied=cfg["tied"],
            **{k: cfg[k] for k in ("d_model", "heads", "layers", "ff", "dropout")})
        self.initialised_levels = self._init_from_codebooks() if cfg["codebook_init"] else []

    def _init_from_codebooks(self) -> list[int]:
        """Copy the projected codebooks into the embeddings of the levels that have one; the
        levels initialised."""
        books = self.codebooks
        if books is None or books.ndim != 3:
            return []
        levels = min(len(books), self.levels)
        table = codebook_embeddings(books[:levels], self.config["d_model"],
                                    self.config["d_model"] ** -0.5)
        with torch.no_grad():
            for level in range(levels):
                size = min(self.trie.vocab[level], table.shape[1])
                first = self.offsets[level]
                self.net.embed.weight[first:first + size] = torch.from_numpy(table[level, :size])
        return list(range(levels))

    def layout(self, items: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot and level of each position of a user token (if any) then ``items`` items of
        ``levels`` tokens: the user token is slot 0, the items slots 1 .. items."""
        slots = torch.arange(1, items + 1).repeat_interleave(self.levels)
        levels = torch.arange(self.levels).repeat(items)
        if self.user_width:
            slots = torch.cat([torch.zeros(1, dtype=torch.long), slots])
            levels = torch.cat([torch.full((1,), self.levels), levels])
        return slots, levels

    def check(self, dataset: Dataset, train: Any) -> None:
        super().check(dataset, train)
        cfg = self.config
        width = (cfg["history"] + 1) * self.levels + self.user_width
        activations = train.batch_size * width * (cfg["ff"] + 10 * cfg["d_model"] + width) \
            * 4 * 2 * cfg["layers"]
        require_memory("train.batch_size, model.history, model.ff", activations,
                       f"a training batch of {train.batch_size} sequences of {width} tokens "
                       f"through {cfg['layers']} layers")

    # -- training -----------------------------------------------------------------------------
    def fit(self, train: Dataset, valid: Dataset | None, ctx: RunContext) -> dict[str, Any]:
        cfg = self.config
        trainer = ctx.require_trainer(self.name)
        self.device, self.precision = trainer.device, ctx.train.precision
        self.decide_exclusion(train)
        table, _ = sequence_table(train)
        seqs, skip, user_rows = training_windows(train, cfg["history"] + 1)
        if not len(seqs):
            raise RqfError("genret: the training split holds no sequence of two items or more")
        if cfg["dedup_history"]:  # each window's items at their latest place; as many scored
            before = (seqs >= 0).sum(1)
            seqs = right_align(dedup_history(seqs))
            skip = np.maximum(1, (seqs >= 0).sum(1) - (before - skip))
        users = self._user_tokens(table.user_ids[user_rows], len(seqs)).numpy()
        packed = pack_sequences(self, self._rows(seqs, "training sequences"), users, ctx.seed,
                                skip)
        valid_ex = monitored_examples(valid, cfg["history"], cfg["monitor_users"], ctx.seed,
                                      ctx.train.monitor)
        self.net.to(self.device)
        task = GenretTask(self, packed, valid_ex)
        batches = TensorBatches(torch.arange(len(packed["tokens"]), device=self.device),
                                ctx.train.batch_size, seed=ctx.seed, device=self.device)
        result = trainer.fit(task, batches)
        self.net.eval()
        return {**result.summary(self.device), "training_sequences": len(seqs),
                "packed_rows": len(packed["tokens"]),
                "codebook_levels_initialised": self.initialised_levels,
                "semantic_ids": str(self.ids_path), "semantic_ids_sha256": self.ids_sha256}

    # -- ranking ------------------------------------------------------------------------------
    def _recent_rows(self, history: np.ndarray) -> torch.Tensor:
        """Item rows of the last ``history`` items of each left-aligned history, right-aligned
        (the newest last), the padding row on the left."""
        width = self.config["history"]
        rows = self._history_rows(history, "histories").numpy()
        pad = len(self.item_ids)
        rows = right_align(np.where(rows == pad, -1, rows))
        if rows.shape[1] < width:
            rows = np.concatenate([np.full((len(rows), width - rows.shape[1]), -1), rows], 1)
        return torch.from_numpy(np.where(rows[:, -width:] < 0, pad, rows[:, -width:]))

    @torch.no_grad()
    def recommend(self, history: np.ndarray, k: int, users: np.ndarray | None = None
                  ) -> np.ndarray:
        """The top ``k`` items of each history: whole IDs from the constrained beam search."""
        net, device, cfg = self.net, self.device, self.config
        self.require_beam_holds(k)
        rows = self._recent_rows(history)
        user_tokens = self._user_tokens(users, len(history))
        slots, levels = (t.to(device) for t in self.layout(cfg["history"]))
        new_slot = cfg["history"] + 1

        def steps_for(b: slice):  # the history runs once; its keys and values are kept
            tokens = torch.cat([user_tokens[b].to(device),
                                self.item_tokens.to(device)[rows[b].to(device)].flatten(1)], 1)
            with autocast(device, self.precision):
                hidden, cache = net(tokens, slots, levels)
            last, real = hidden[:, -1], tokens != PAD

            def step_logits(beams: torch.Tensor, expand: int) -> torch.Tensor:
                with autocast(device, self.precision):
                    if beams.shape[1] == 0:
                        h = last.repeat_interleave(expand, 0)
                    else:
                        h = net.extend(beams.reshape(len(last), expand, -1), new_slot, cache,
                                       real).reshape(len(beams), -1)
                    return net.scores(h, 0, self.n_tokens)
            return step_logits

        return self.decode_items(rows, k, steps_for)
