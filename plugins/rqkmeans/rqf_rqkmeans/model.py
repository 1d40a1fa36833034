"""The ``rqkmeans`` model: residual k-means, level by level on the residuals. No gradient loop."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from rqf import ConfigError, Dataset, ItemVectors, Param, RunContext, require_memory
from rqf.codes import (MOVER_ROWS_BUDGET, CodedItems, ItemTokenizer, balanced_kmeans,
                       handle_collisions_streamed, kmeans, nearest, squared_distances)

ENCODE_CHUNK = 16384  # rows coded at once: with 768-d vectors, about 50 MB per copy


class RQKMeansModel(ItemTokenizer):
    """Residual k-means semantic IDs: each level clusters what the levels before left over."""

    name = "rqkmeans"
    params = (
        ItemTokenizer.LEVELS,
        ItemTokenizer.CODEBOOK_SIZE,
        Param("normalize", str, "l2", "input normalisation before clustering: l2 (unit "
              "vectors), standardize (train mean/std) or none",
              choices=("l2", "standardize", "none")),
        Param("balanced", bool, True, "keep each level's clusters near equal size (Sinkhorn "
              "assignment between k-means updates; without it the deeper levels of small or "
              "tight catalogues crowd onto a few codes); items are still coded by nearest "
              "centroid"),
        Param("kmeans_iters", int, 50, "Lloyd iterations per level", min=1, max=10_000),
        Param("kmeans_samples", int, 262144, "at most this many training vectors are clustered",
              min=1),
        ItemTokenizer.COLLISION_HANDLING,
        ItemTokenizer.COLLABORATIVE,
    )
    # no gradient loop: the pipeline builds no trainer, the train section's budget does not
    # apply, and --resume fits it again
    gradient_free = True
    config_added = {"collaborative": 0.0}  # models saved before the view had none
    file_format = "rqf-rqkmeans-1"
    more_training = "more k-means iterations (model.kmeans_iters)"

    @property
    def spread_fix(self) -> str:  # type: ignore[override]
        return ("set model.balanced: true" if not self.config["balanced"] else
                "more k-means iterations (model.kmeans_iters) or fewer codes "
                "(model.codebook_size)")

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        super().__init__(data_info, **params)
        if not self.makes_item_ids:
            raise ConfigError(f"model.type: rqkmeans makes item IDs; the dataset's samples are "
                              f"{data_info.get('unit')}s (use rqvae for tokens)")
        config = self.config
        self.input_dim = int(data_info["input_dim"]) + self.view_dim()
        items = int(data_info.get("n_items") or data_info.get("n_samples") or 0)
        size = config["codebook_size"]
        # the codebooks, one encoding chunk's distances, the rows of items that share a tuple
        # (all of them for balanced) and the codes and errors of every item
        rows = items * size * 4 if config["collision_handling"] == "balanced" \
            else min(items * size * 4, MOVER_ROWS_BUDGET)
        need = (config["levels"] * size * self.input_dim + ENCODE_CHUNK * size) * 4 + rows \
            + items * (2 * config["levels"] * 8 + 3 * 8)
        require_memory("model.levels, model.codebook_size", need,
                       f"{config['levels']} x {size} codes of {self.input_dim}-d vectors over "
                       f"{items:,} items")
        self.codebooks = torch.zeros(config["levels"], config["codebook_size"], self.input_dim)
        self.mean = torch.zeros(self.input_dim)
        self.std = torch.ones(self.input_dim)
        self.device = torch.device("cpu")  # fitted on the CPU; a loaded model codes on its own

    def codebooks_array(self) -> np.ndarray:
        return self.codebooks.numpy()

    # -- fitting --------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.config["normalize"] == "l2":
            return F.normalize(x, dim=-1)
        if self.config["normalize"] == "standardize":
            return (x - self.mean) / self.std
        return x

    def fit(self, train: Dataset, valid: Dataset | None, ctx: RunContext) -> dict[str, Any]:
        cfg = self.config
        start = time.perf_counter()
        g = torch.Generator().manual_seed(ctx.seed)
        self.fit_view(train, ctx.seed)
        x = torch.from_numpy(np.asarray(self._training_vectors(train, g), np.float32))
        if cfg["normalize"] == "standardize":
            self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        ctx.echo(f"rqkmeans: clustering {len(x):,} vectors into {cfg['levels']} levels of "
                 f"{cfg['codebook_size']} codes ({cfg['kmeans_iters']} iterations each)")
        n = len(x)
        # from here on the sample is updated in place, a chunk at a time: one copy in memory
        residual = self._prepare(x)
        if residual.data_ptr() == x.data_ptr():  # normalize: none, and x may not be ours
            residual = residual.clone()
        del x
        energy = float((residual ** 2).sum())
        cluster = balanced_kmeans if cfg["balanced"] else kmeans
        for level in range(cfg["levels"]):
            book = cluster(residual, cfg["codebook_size"], cfg["kmeans_iters"], g)
            self.codebooks[level] = book
            for a in range(0, n, ENCODE_CHUNK):
                part = residual[a:a + ENCODE_CHUNK]
                part.sub_(book[nearest(part, book)[1]])
            ctx.echo(f"rqkmeans: level {level + 1}/{cfg['levels']} clustered")
        return {"seconds": round(time.perf_counter() - start, 3), "training_vectors": n,
                "remaining_energy": float((residual ** 2).sum()) / max(energy, 1e-12)}

    def _training_vectors(self, train: Dataset, g: torch.Generator) -> np.ndarray:
        """At most ``kmeans_samples`` of the training vectors, drawn at random; only the drawn
        rows are read when the dataset says which item rows it trains on."""
        cap = self.config["kmeans_samples"]
        rows = train.export_rows()
        source = train.export_source()
        read = self.through_view(source).read_rows \
            if rows is not None and isinstance(source, ItemVectors) else None
        if rows is None or read is None:
            x = self.vectors_of(train)
            return x[torch.randperm(len(x), generator=g)[:cap].numpy()] if len(x) > cap else x
        if len(rows) > cap:
            rows = rows[torch.randperm(len(rows), generator=g)[:cap].numpy()]
        return read(rows)

    def fit_line(self, fit: Mapping[str, Any]) -> str:
        return f"clustered {fit.get('training_vectors')} vectors in {fit.get('seconds')} s"

    # -- coding ---------------------------------------------------------------------------
    def _read(self, read, a: int, b: int) -> torch.Tensor:
        """Rows [a, b) prepared, on the device the model codes on."""
        rows = torch.from_numpy(np.asarray(read(a, b), np.float32)).to(self.device)
        return self._prepare(rows)

    def _chunks(self, read, n: int):
        for a in range(0, n, ENCODE_CHUNK):
            yield a, self._read(read, a, min(n, a + ENCODE_CHUNK))

    def code_rows(self, read, n: int, unique: bool = True) -> CodedItems:
        """Codes of rows read in chunks: nearest codes in one pass, then collision handling,
        which reads again only the rows of items that share a tuple (in parts of bounded
        memory). Memory: the codes and a few numbers per row, plus one chunk."""
        books = self.codebooks
        levels = len(books)
        raw_codes = np.zeros((n, levels), np.int64)
        sq_err, sq_norm = np.zeros(n), np.zeros(n)
        for a, x in self._chunks(read, n):
            residual = x
            for level in range(levels):
                i = nearest(residual, books[level])[1]
                raw_codes[a:a + len(x), level] = i.cpu().numpy()
                residual = residual - books[level][i]
            sq_err[a:a + len(x)] = (residual ** 2).sum(1).cpu().numpy()
            sq_norm[a:a + len(x)] = (x ** 2).sum(1).cpu().numpy()
        codes = raw_codes
        if unique:
            codes, final = handle_collisions_streamed(
                raw_codes, self.config["collision_handling"], books.shape[1],
                lambda items: self._last_distances(read, items, raw_codes))
            placed = ~np.isnan(final)  # the error of the IDs actually exported
            sq_err[placed] = final[placed]
        return CodedItems(None, raw_codes, codes, {"sq_err": sq_err, "sq_norm": sq_norm})

    def _last_distances(self, read, items: np.ndarray, raw_codes: np.ndarray) -> np.ndarray:
        """(len(items), k) distances of these rows' last residual to the last codebook, read
        in the chunks that hold them."""
        books = self.codebooks
        out = np.empty((len(items), books.shape[1]), np.float32)
        if not len(items):
            return out
        starts = np.arange(int(items[0]) // ENCODE_CHUNK * ENCODE_CHUNK, int(items[-1]) + 1,
                           ENCODE_CHUNK)
        bounds = np.searchsorted(items, np.r_[starts, starts[-1] + ENCODE_CHUNK])
        for a, lo, hi in zip(starts, bounds[:-1], bounds[1:]):
            if lo == hi:
                continue  # no row of this chunk is asked for: not read
            rows = items[lo:hi]
            b = int(rows[-1]) + 1
            residual = self._read(read, int(a), b)[torch.from_numpy(rows - a).to(self.device)]
            for level in range(len(books) - 1):
                code = torch.from_numpy(raw_codes[rows, level]).to(self.device)
                residual = residual - books[level][code]
            out[lo:hi] = squared_distances(residual, books[-1]).cpu().numpy()
        return out

    # -- the model file ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"codebooks": self.codebooks.cpu(), "mean": self.mean.cpu(), "std": self.std.cpu(),
                **self.view_state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        for name in ("codebooks", "mean", "std"):
            mine, saved = getattr(self, name), state[name]
            if tuple(saved.shape) != tuple(mine.shape):
                raise ValueError(f"{name} of shape {tuple(saved.shape)}, expected "
                                 f"{tuple(mine.shape)}")
        self.load_view(state)
        self.codebooks, self.mean, self.std = state["codebooks"], state["mean"], state["std"]

    def place(self, device: torch.device) -> None:
        self.device = device
        self.codebooks, self.mean, self.std = (t.to(device) for t in
                                               (self.codebooks, self.mean, self.std))
