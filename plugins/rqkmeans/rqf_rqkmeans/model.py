"""The ``rqkmeans`` model: residual k-means, level by level on the residuals. No gradient loop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from rqf import (ConfigError, Dataset, Param, RqfError, RunContext, atomic_path, load_tensors,
                 require_memory)
from rqf.codes import (CodedItems, ItemTokenizer, balanced_kmeans, handle_collisions, kmeans,
                       nearest, squared_distances)

MODEL_FORMAT = "rqf-rqkmeans-1"
ENCODE_CHUNK = 65536


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
    )
    # no gradient loop: the pipeline builds no trainer, the train section's budget does not
    # apply, and --resume fits it again
    gradient_free = True

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
        self.input_dim = int(data_info["input_dim"])
        items = int(data_info.get("n_items") or data_info.get("n_samples") or 0)
        size = config["codebook_size"]
        # the codebooks, one encoding chunk's distances, every item's last-level distances
        need = (config["levels"] * size * self.input_dim + ENCODE_CHUNK * size
                + items * size) * 4
        require_memory("model.levels, model.codebook_size", need,
                       f"{config['levels']} x {size} codes of {self.input_dim}-d vectors over "
                       f"{items:,} items")
        self.codebooks = torch.zeros(config["levels"], config["codebook_size"], self.input_dim)
        self.mean = torch.zeros(self.input_dim)
        self.std = torch.ones(self.input_dim)

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
        x = torch.from_numpy(np.asarray(train.vectors(), np.float32))
        g = torch.Generator().manual_seed(ctx.seed)
        if len(x) > cfg["kmeans_samples"]:
            x = x[torch.randperm(len(x), generator=g)[:cfg["kmeans_samples"]]]
        if cfg["normalize"] == "standardize":
            self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        ctx.echo(f"rqkmeans: clustering {len(x):,} vectors into {cfg['levels']} levels of "
                 f"{cfg['codebook_size']} codes ({cfg['kmeans_iters']} iterations each)")
        residual = self._prepare(x)
        cluster = balanced_kmeans if cfg["balanced"] else kmeans
        for level in range(cfg["levels"]):
            self.codebooks[level] = cluster(residual, cfg["codebook_size"], cfg["kmeans_iters"], g)
            residual = residual - self.codebooks[level][nearest(residual, self.codebooks[level])[1]]
            ctx.echo(f"rqkmeans: level {level + 1}/{cfg['levels']} clustered")
        return {"seconds": round(time.perf_counter() - start, 3), "training_vectors": len(x),
                "remaining_energy": float((residual ** 2).sum() / max(float((self._prepare(x) ** 2)
                                                                            .sum()), 1e-12))}

    def fit_line(self, fit: Mapping[str, Any]) -> str:
        return f"clustered {fit.get('training_vectors')} vectors in {fit.get('seconds')} s"

    # -- coding ---------------------------------------------------------------------------
    def _chunks(self, read, n: int):
        for a in range(0, n, ENCODE_CHUNK):
            yield a, self._prepare(torch.from_numpy(np.asarray(read(a, min(n, a + ENCODE_CHUNK)),
                                                               np.float32)))

    def code_rows(self, read, n: int, unique: bool = True) -> CodedItems:
        raw, last, sq_norm = [], [], []
        books = self.codebooks
        for _, x in self._chunks(read, n):
            residual, idx = x, []
            for level in range(len(books)):
                if level == len(books) - 1 and unique:
                    last.append(squared_distances(residual, books[level]).numpy())
                i = nearest(residual, books[level])[1]
                idx.append(i)
                residual = residual - books[level][i]
            raw.append(torch.stack(idx, 1).numpy())
            sq_norm.append((x ** 2).sum(1).numpy())
        raw_codes = np.concatenate(raw) if raw else np.zeros((0, len(books)), np.int64)
        codes = handle_collisions(raw_codes, np.concatenate(last) if last else None,
                                  self.config["collision_handling"]) if unique else raw_codes
        sq_err = []
        for a, x in self._chunks(read, n):  # the error of the IDs actually exported
            c = torch.from_numpy(codes[a:a + len(x)])
            recon = sum(books[level][c[:, level]] for level in range(len(books)))
            sq_err.append(((x - recon) ** 2).sum(1).numpy())
        per_row = {"sq_err": np.concatenate(sq_err) if sq_err else np.zeros(0),
                   "sq_norm": np.concatenate(sq_norm) if sq_norm else np.zeros(0)}
        return CodedItems(None, raw_codes, codes, per_row)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save({"format": MODEL_FORMAT, "config": dict(self.config),
                        "data_info": {"input_dim": self.input_dim, "unit": "item"},
                        "codebooks": self.codebooks, "mean": self.mean, "std": self.std}, tmp)

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> "RQKMeansModel":
        payload = load_tensors(Path(path), "rqkmeans model", MODEL_FORMAT)
        model = cls(payload["data_info"], **payload["config"])
        if tuple(payload["codebooks"].shape) != tuple(model.codebooks.shape):
            raise RqfError(f"{path}: codebooks of shape {tuple(payload['codebooks'].shape)} do "
                           f"not fit the saved configuration")
        model.codebooks, model.mean, model.std = payload["codebooks"], payload["mean"], payload["std"]
        return model
