"""The ``rqvae`` model: trains through the core loop, evaluates code quality, exports IDs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from rqf import Dataset, ItemVectors, Model, Param, RunContext, SequenceVectors
from rqf.errors import ConfigError, DataError, RqfError
from rqf.io import atomic_path
from rqf.training import Trainer, TensorBatches, autocast, resolve_device
from rqf_rqvae.module import ACTIVATIONS, RQVAE
from rqf_rqvae.semantic_ids import code_statistics, write_semantic_ids

MODEL_FORMAT = "rqf-rqvae-1"
CPU_ENCODE_BATCH = 4096
ARCHITECTURE_KEYS = ("input_dim", "levels", "codebook_size", "latent_dim", "hidden_dims",
                     "activation", "distance", "normalize")


class RQVAEModel(Model):
    """Residual-quantized autoencoder that turns vectors into semantic IDs / tokens."""

    name = "rqvae"
    params = (
        Param("levels", int, 3, "number of residual codebooks (code length)", min=1),
        Param("codebook_size", int, 256, "codes per codebook", min=2),
        Param("latent_dim", int, 32, "width of the quantized latent", min=1),
        Param("hidden_dims", list, [512, 256, 128], "encoder hidden widths (decoder mirrors)",
              item=int),
        Param("activation", str, "silu", "hidden activation", choices=tuple(ACTIVATIONS)),
        Param("dropout", float, 0.0, "dropout between hidden layers", min=0, max=1),
        Param("distance", str, "l2", "code assignment distance", choices=("l2", "cosine")),
        Param("quantizer", str, "ste", "forward mode: straight-through, rotation trick or "
              "Gumbel-softmax", choices=("ste", "rotation", "gumbel")),
        Param("commitment_weight", float, 0.25, "weight of the commitment loss", min=0),
        Param("gumbel_tau", float, 1.0, "Gumbel-softmax temperature", min=1e-6),
        Param("normalize", str, "none", "input normalisation: none, standardize (train "
              "mean/std) or l2", choices=("none", "standardize", "l2")),
        Param("kmeans_init", bool, True, "initialise each codebook by k-means on encoded data"),
        Param("kmeans_iters", int, 25, "k-means iterations per level", min=1),
        Param("kmeans_samples", int, 65536, "vectors used for the k-means initialisation", min=1),
        Param("restart_every", int, 50, "check for dead codes every N steps (0: never)", min=0),
        Param("restart_threshold", float, 1.0,
              "a code used fewer times than this since the last check is re-seeded", min=0),
        Param("data_on_device", bool, None, "keep the training vectors on the GPU (null: when "
              "they fit in a quarter of free memory)", nullable=True),
        Param("encode_batch_size", int, 65536, "vectors per batch when encoding", min=1),
    )
    export_params = (
        Param("semantic_ids", bool, True, "write semantic_ids.h5 (items) or a token cache "
              "(utterances)"),
        Param("codes_dir", str, "codes", "folder, inside the run, for per-utterance tokens"),
        Param("plots", bool, True, "save a code-usage plot per level when matplotlib is there"),
    )

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        from rqf.params import validate_params

        params = validate_params(self.params, params, "model")
        super().__init__(data_info, **params)
        input_dim = data_info.get("input_dim")
        if not isinstance(input_dim, int) or input_dim <= 0:
            raise ConfigError("model: the dataset does not report a positive input_dim")
        if params["latent_dim"] > input_dim:
            raise ConfigError(f"model.latent_dim: {params['latent_dim']} is larger than the "
                              f"input ({input_dim}-d); a latent should compress the input")
        if any(h <= 0 for h in params["hidden_dims"]):
            raise ConfigError(f"model.hidden_dims: widths must be positive, got {params['hidden_dims']}")
        self.input_dim = input_dim
        self.net = self._build()
        self.device = torch.device("cpu")
        self.precision = "fp32"

    def _build(self) -> RQVAE:
        c = self.config
        return RQVAE(self.input_dim, c["hidden_dims"], c["latent_dim"], c["levels"],
                     c["codebook_size"], c["distance"], c["quantizer"], c["commitment_weight"],
                     c["gumbel_tau"], c["activation"], c["dropout"], c["normalize"])

    def architecture(self) -> dict[str, Any]:
        return {k: (self.input_dim if k == "input_dim" else self.config[k])
                for k in ARCHITECTURE_KEYS}

    # -- training -------------------------------------------------------------------------
    def _training_tensor(self, data: Dataset, device: torch.device) -> torch.Tensor:
        vectors = np.asarray(data.vectors(), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.input_dim:
            raise DataError(f"training vectors have shape {vectors.shape}, expected (n, {self.input_dim})")
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            raise DataError(f"training vectors: {int(bad.sum())} rows hold NaN or Inf "
                            f"(first at row {int(np.flatnonzero(bad)[0])})")
        if len(vectors) == 0:
            raise DataError("the training split holds no vectors")
        tensor = torch.from_numpy(vectors)
        on_device = self.config["data_on_device"]
        if device.type == "cuda" and on_device is not False:
            free, _ = torch.cuda.mem_get_info(device)
            if on_device or tensor.nbytes < free // 4:
                tensor = tensor.to(device)
        return tensor

    def fit(self, train: Dataset, valid: Dataset | None, ctx: RunContext) -> dict[str, Any]:
        cfg = self.config
        trainer = Trainer(ctx.train, ctx.run_dir, seed=ctx.seed, resume=ctx.resume, echo=ctx.echo,
                          checkpoint_extra={"architecture": repr(self.architecture())})
        device = trainer.device
        self.device, self.precision = device, ctx.train.precision
        data = self._training_tensor(train, device)
        net = self.net.to(device)
        if cfg["normalize"] == "standardize":
            sample = data[:1_000_000].float()
            net.mean.copy_(sample.mean(0))
            net.std.copy_(sample.std(0).clamp_min(1e-6))
        init_seconds = 0.0
        if cfg["kmeans_init"]:
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(ctx.seed)
            idx = torch.randperm(len(data), generator=g)[:cfg["kmeans_samples"]].to(data.device)
            with torch.no_grad():
                z = net.encoder(net.prepare(data[idx].to(device)))
            net.quantizer.init_from_data(z, cfg["kmeans_iters"], g)
            init_seconds = time.perf_counter() - t0
        valid_tensor = None
        if valid is not None and len(valid):
            valid_tensor = torch.from_numpy(np.asarray(valid.vectors(), np.float32))[:65536]
        batches = TensorBatches(data, ctx.train.batch_size, seed=ctx.seed, device=device)
        last: dict[str, Any] = {}

        def loss_fn(module: torch.nn.Module, batch: torch.Tensor):
            out = module(batch)
            last["residuals"] = out["residuals"]
            return out["loss"], {"recon": out["recon_loss"].detach(),
                                 "quant": out["quant_loss"].detach()}

        def after_step(step: int) -> None:
            if cfg["restart_every"] and step % cfg["restart_every"] == 0:
                net.quantizer.restart_dead_codes(last["residuals"], cfg["restart_threshold"])

        def valid_fn(module: torch.nn.Module) -> dict[str, float]:
            if valid_tensor is None:
                return {}
            x = valid_tensor.to(device)
            with autocast(device, ctx.train.precision):
                target, recon, _ = net.reconstruct(x)
            return {"valid_recon_mse": float(((recon - target) ** 2).mean())}

        result = trainer.fit(net, batches, loss_fn, valid_fn if valid_tensor is not None else None,
                             after_step)
        net.eval()
        if ctx.is_main:
            self.save(ctx.run_dir / "model.pt")
        return {"steps": result.steps, "seconds": round(result.seconds, 3),
                "kmeans_init_seconds": round(init_seconds, 3),
                "items_per_second": round(result.samples_per_second, 1),
                "training_vectors": len(data), "resumed_from": result.resumed_from,
                "device": str(device), "history": result.history}

    # -- encoding and metrics -------------------------------------------------------------
    def _batches_of(self, vectors: np.ndarray):
        bs = self.config["encode_batch_size"]
        if self.device.type == "cpu":
            bs = min(bs, CPU_ENCODE_BATCH)  # CPU matmuls run fastest on cache-sized blocks
        for start in range(0, len(vectors), bs):
            yield torch.from_numpy(np.ascontiguousarray(vectors[start:start + bs],
                                                        dtype=np.float32)).to(self.device)

    @torch.no_grad()
    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """(n, levels) codes of raw input vectors."""
        self.net.eval().to(self.device)
        out = []
        for x in self._batches_of(vectors):
            with autocast(self.device, self.precision):
                out.append(self.net.encode(x).cpu())
        if not out:
            return np.zeros((0, self.config["levels"]), np.int64)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def evaluate(self, data: Dataset) -> dict[str, Any]:
        vectors = np.asarray(data.vectors(), np.float32)
        self.net.eval().to(self.device)
        sq_err = sq_norm = quant = 0.0
        codes = []
        for x in self._batches_of(vectors):
            with autocast(self.device, self.precision):
                target, recon, c = self.net.reconstruct(x)
                z = self.net.encoder(target).float()
            zq = self.net.quantizer.decode_codes(c)
            sq_err += float(((recon - target) ** 2).sum())
            sq_norm += float((target ** 2).sum())
            quant += float(((z - zq) ** 2).sum())
            codes.append(c.cpu())
        n = len(vectors)
        codes_np = torch.cat(codes).numpy() if codes else np.zeros((0, self.config["levels"]), int)
        return {
            "recon_mse": sq_err / max(n * self.input_dim, 1),
            "recon_rel_error": sq_err / sq_norm if sq_norm else float("nan"),
            "quant_loss": quant / max(n, 1),
            **code_statistics(codes_np, self.config["codebook_size"]),
        }

    # -- export ---------------------------------------------------------------------------
    def export(self, dataset: Dataset, ctx: RunContext) -> dict[str, str]:
        artifacts = {"model": str(ctx.run_dir / "model.pt")}
        if not ctx.export.get("semantic_ids", True):
            return artifacts
        source = dataset.export_source()
        if isinstance(source, ItemVectors):
            path = self.export_items(source, ctx.run_dir / "semantic_ids.h5")
            artifacts["semantic_ids"] = str(path)
            if ctx.export.get("plots", True):
                plot = self.plot_usage(path, ctx.run_dir / "code_usage.png")
                if plot:
                    artifacts["code_usage_plot"] = str(plot)
        elif isinstance(source, SequenceVectors):
            out = ctx.run_dir / ctx.export.get("codes_dir", "codes")
            artifacts["codes"] = str(self.export_sequences(source, out))
        return artifacts

    def export_items(self, source: ItemVectors, path: Path) -> Path:
        n = len(source.ids)
        bs = self.config["encode_batch_size"]
        codes = np.concatenate([self.encode(source.read(s, min(s + bs, n)))
                                for s in range(0, n, bs)]) if n else \
            np.zeros((0, self.config["levels"]), np.int64)
        attrs = {"levels": self.config["levels"], "codebook_size": self.config["codebook_size"],
                 "format": "rqf-semantic-ids-1"}
        return write_semantic_ids(path, source.ids, codes,
                                  self.net.quantizer.codebooks.detach().cpu().numpy(), attrs)

    def export_sequences(self, source: SequenceVectors, out_dir: Path) -> Path:
        meta = {"levels": self.config["levels"], "codebook_size": self.config["codebook_size"]}
        dtype = np.int16 if self.config["codebook_size"] <= np.iinfo(np.int16).max else np.int32
        with source.open_writer(out_dir, meta) as writer:
            for key in source.keys:
                writer.write(key, self.encode(source.read(key)).astype(dtype))
        return out_dir

    def plot_usage(self, semantic_ids: Path, path: Path) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        import h5py

        with h5py.File(semantic_ids, "r") as f:
            codes = f["codes"][()]
        levels, k = codes.shape[1], self.config["codebook_size"]
        fig, axes = plt.subplots(levels, 1, figsize=(8, 2.2 * levels), squeeze=False)
        for level in range(levels):
            counts = np.sort(np.bincount(codes[:, level], minlength=k))[::-1]
            axes[level, 0].bar(np.arange(k), counts, width=1.0)
            axes[level, 0].set_ylabel(f"level {level}")
        axes[-1, 0].set_xlabel("codes, most used first")
        fig.suptitle("items per code")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        return path

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save({"format": MODEL_FORMAT, "config": dict(self.config),
                        "data_info": {"input_dim": self.input_dim},
                        "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}},
                       tmp)

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> "RQVAEModel":
        path = Path(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise RqfError(f"{path}: model file not found") from None
        except Exception as exc:
            raise RqfError(f"{path}: not a readable rqvae model ({type(exc).__name__})") from None
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise RqfError(f"{path}: not an rqvae model file (expected format {MODEL_FORMAT!r})")
        model = cls(payload["data_info"], **payload["config"])
        try:
            model.net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise RqfError(f"{path}: weights do not fit the saved architecture "
                           f"({str(exc).splitlines()[0]})") from None
        model.device = resolve_device(device)
        model.net.eval()
        return model

    # -- reporting ------------------------------------------------------------------------
    def summarize(self, metrics: Mapping[str, Any]) -> str:
        lines = ["split   recon_mse  rel_err  collisions  max/code  used codes per level      perplexity per level"]
        for role in ("train", "valid", "test", "all"):
            m = metrics.get(role)
            if not m:
                continue
            util = " ".join(f"{u:5.1%}" for u in m["utilization_of_reachable"])
            ppl = " ".join(f"{p:6.1f}" for p in m["perplexity"])
            lines.append(f"{role:<7} {m['recon_mse']:9.3g}  {m['recon_rel_error']:7.3f}  "
                         f"{m['collision_rate']:10.2%}  {m['max_items_per_code']:8d}  "
                         f"{util:<25} {ppl}")
        fit = metrics.get("fit", {})
        if fit:
            lines.append(f"trained {fit.get('steps')} steps in {fit.get('seconds')} s "
                         f"({fit.get('items_per_second')} vectors/s on {fit.get('device')})")
        return "\n".join(lines)


