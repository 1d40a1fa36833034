"""The ``rqkmeans`` model: residual k-means, level by level on the residuals. No gradient loop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from rqf import (ConfigError, Dataset, ItemVectors, Model, Param, RqfError, RunContext,
                 atomic_path, load_tensors)
from rqf.codes import (COLLISION_MODES, balanced_kmeans, code_health, code_statistics,
                       handle_collisions, kmeans, nearest, plot_usage, squared_distances,
                       write_semantic_ids)

MODEL_FORMAT = "rqf-rqkmeans-1"
ENCODE_CHUNK = 65536


class RQKMeansModel(Model):
    """Residual k-means semantic IDs: each level clusters what the levels before left over."""

    name = "rqkmeans"
    params = (
        Param("levels", int, 3, "number of residual codebooks (code length)", min=1),
        Param("codebook_size", int, 256, "codes per codebook", min=2),
        Param("normalize", str, "l2", "input normalisation before clustering: l2 (unit "
              "vectors), standardize (train mean/std) or none",
              choices=("l2", "standardize", "none")),
        Param("balanced", bool, False, "keep each level's clusters near equal size (Sinkhorn "
              "assignment between k-means updates); items are still coded by nearest centroid"),
        Param("kmeans_iters", int, 50, "Lloyd iterations per level", min=1),
        Param("kmeans_samples", int, 262144, "at most this many training vectors are clustered",
              min=1),
        Param("collision_handling", str, "reassign", "how items that share a code tuple get "
              "distinct IDs: suffix, reassign or balanced (see rqvae)", choices=COLLISION_MODES),
    )
    export_params = (
        Param("semantic_ids", bool, True, "write semantic_ids.h5"),
        Param("plots", bool, True, "save a code-usage plot per level when matplotlib is there"),
    )
    # no gradient loop: the train section's budget does not apply, and --resume refits
    gradient_free = True

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        config = {p.name: p.default for p in self.params}
        config.update(params)
        super().__init__(data_info, **config)
        if data_info.get("unit") not in (None, "item"):
            raise ConfigError(f"model.type: rqkmeans makes item IDs; the dataset's samples are "
                              f"{data_info.get('unit')}s (use rqvae for tokens)")
        self.input_dim = int(data_info["input_dim"])
        self.codebooks = torch.zeros(config["levels"], config["codebook_size"], self.input_dim)
        self.mean = torch.zeros(self.input_dim)
        self.std = torch.ones(self.input_dim)
        self._coded: tuple[Any, np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None

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
        residual = self._prepare(x)
        cluster = balanced_kmeans if cfg["balanced"] else kmeans
        for level in range(cfg["levels"]):
            self.codebooks[level] = cluster(residual, cfg["codebook_size"], cfg["kmeans_iters"], g)
            residual = residual - self.codebooks[level][nearest(residual, self.codebooks[level])[1]]
            ctx.echo(f"rqkmeans: level {level + 1}/{cfg['levels']} clustered")
        self._coded = None
        return {"seconds": round(time.perf_counter() - start, 3), "training_vectors": len(x),
                "remaining_energy": float((residual ** 2).sum() / max(float((self._prepare(x) ** 2)
                                                                            .sum()), 1e-12))}

    # -- coding ---------------------------------------------------------------------------
    def _code(self, read, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(nearest codes, IDs after collision handling, per-row error terms) of ``n`` rows."""
        raw, last, sq_err, sq_norm = [], [], [], []
        books = self.codebooks
        for a in range(0, n, ENCODE_CHUNK):
            x = self._prepare(torch.from_numpy(np.asarray(read(a, min(n, a + ENCODE_CHUNK)),
                                                          np.float32)))
            residual, idx = x, []
            for level in range(len(books)):
                if level == len(books) - 1:
                    last.append(squared_distances(residual, books[level]).numpy())
                i = nearest(residual, books[level])[1]
                idx.append(i)
                residual = residual - books[level][i]
            raw.append(torch.stack(idx, 1).numpy())
            sq_norm.append((x ** 2).sum(1).numpy())
        raw_codes = np.concatenate(raw) if raw else np.zeros((0, len(books)), np.int64)
        codes = handle_collisions(raw_codes, np.concatenate(last) if last else None,
                                  self.config["collision_handling"])
        for a in range(0, n, ENCODE_CHUNK):  # the error of the IDs actually exported
            x = self._prepare(torch.from_numpy(np.asarray(read(a, min(n, a + ENCODE_CHUNK)),
                                                          np.float32)))
            c = torch.from_numpy(codes[a:a + len(x)])
            recon = sum(books[level][c[:, level]] for level in range(len(books)))
            sq_err.append(((x - recon) ** 2).sum(1).numpy())
        per_row = {"sq_err": np.concatenate(sq_err) if sq_err else np.zeros(0),
                   "sq_norm": np.concatenate(sq_norm) if sq_norm else np.zeros(0)}
        return raw_codes, codes, per_row

    def _catalogue(self, source: ItemVectors):
        key = (id(getattr(source.read, "__self__", source.read)), len(source.ids))
        if self._coded is None or self._coded[0] != key:
            self._coded = (key, *self._code(source.read, len(source.ids)))
        return self._coded[1:]

    def _metrics(self, raw: np.ndarray, codes: np.ndarray, per_row: Mapping[str, np.ndarray]
                 ) -> dict[str, Any]:
        size = self.config["codebook_size"]
        norm = float(per_row["sq_norm"].sum())
        return {"recon_mse": float(per_row["sq_err"].sum()) / max(len(codes) * self.input_dim, 1),
                "recon_rel_error": float(per_row["sq_err"].sum()) / norm if norm else float("nan"),
                **code_statistics(codes, size),
                "collision_handling": self.config["collision_handling"],
                "quantizer_collision_rate": code_statistics(raw, size)["collision_rate"]
                if len(raw) else 0.0}

    def evaluate(self, data: Dataset) -> dict[str, Any]:
        rows = data.export_rows()
        source = data.export_source()
        if rows is not None and isinstance(source, ItemVectors):
            raw, codes, per_row = self._catalogue(source)
            return self._metrics(raw[rows], codes[rows], {k: v[rows] for k, v in per_row.items()})
        vectors = np.asarray(data.vectors(), np.float32)
        return self._metrics(*self._code(lambda a, b: vectors[a:b], len(vectors)))

    def health(self, metrics: Mapping[str, Any]) -> list[str]:
        return code_health(metrics.get("all") or {}, self.config["collision_handling"], True,
                           self.config["normalize"])

    # -- export ---------------------------------------------------------------------------
    @classmethod
    def run_outputs(cls, export: Mapping[str, Any]) -> tuple[str, ...]:
        return ("semantic_ids.h5", "code_usage.png")

    def export(self, dataset: Dataset, ctx: RunContext) -> dict[str, str]:
        artifacts = {"model": str(ctx.run_dir / "model.pt")}
        source = dataset.export_source()
        if not ctx.export.get("semantic_ids", True) or not isinstance(source, ItemVectors):
            return artifacts
        raw, codes, _ = self._catalogue(source)
        artifacts["semantic_ids"] = str(self.write_ids(source.ids, raw, codes,
                                                       ctx.run_dir / "semantic_ids.h5"))
        if ctx.export.get("plots", True):
            plot = plot_usage(codes, self.config["codebook_size"], ctx.run_dir / "code_usage.png")
            if plot:
                artifacts["code_usage_plot"] = str(plot)
        return artifacts

    def write_ids(self, ids: np.ndarray, raw: np.ndarray, codes: np.ndarray, path: Path) -> Path:
        attrs = {"levels": self.config["levels"], "codebook_size": self.config["codebook_size"],
                 "collision_handling": self.config["collision_handling"], "tokenizer": self.name}
        return write_semantic_ids(path, ids, codes, self.codebooks.numpy(), attrs, raw_codes=raw)

    def encode(self, dataset: Dataset, out: Path) -> Path:
        source = dataset.export_source()
        if not isinstance(source, ItemVectors):
            raise RqfError(f"model 'rqkmeans' codes items; dataset {dataset.name!r} exports "
                           "utterances (use model: rqvae for frame tokens)")
        return self.export_items(source, out)

    def export_items(self, source: ItemVectors, path: Path) -> Path:
        """Semantic IDs of every item of ``source`` (new data)."""
        raw, codes, _ = self._code(source.read, len(source.ids))
        return self.write_ids(source.ids, raw, codes, path)

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

    def summarize(self, metrics: Mapping[str, Any]) -> str:
        lines = ["split   rel_err  collisions (nearest)  max/code  used codes per level"]
        for role in ("train", "valid", "test", "all"):
            m = metrics.get(role)
            if m:
                util = " ".join(f"{u:5.1%}" for u in m["utilization_of_reachable"])
                lines.append(f"{role:<7} {m['recon_rel_error']:7.3f}  {m['collision_rate']:10.2%} "
                             f"({m['quantizer_collision_rate']:7.2%})  "
                             f"{m['max_items_per_code']:8d}  {util}")
        fit = metrics.get("fit", {})
        lines.append(f"clustered {fit.get('training_vectors')} vectors in {fit.get('seconds')} s")
        return "\n".join(lines)
