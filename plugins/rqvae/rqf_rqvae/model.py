"""The ``rqvae`` model: trains through the core loop, evaluates code quality, exports IDs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from rqf import (ConfigError, DataError, Dataset, ItemVectors, Param, RunContext,
                 SequenceVectors, TensorBatches, TrainingTask, autocast, require_memory)
from rqf.codes import DISTANCE_CHUNK, CodedItems, ItemTokenizer
from rqf_rqvae.module import ACTIVATIONS, RQVAE

CPU_ENCODE_BATCH = 4096
ARCHITECTURE_KEYS = ("input_dim", "levels", "codebook_size", "latent_dim", "hidden_dims",
                     "activation", "distance", "normalize", "latent_norm")
# the model's keys the network is built from, under the same names
NETWORK_KEYS = ("hidden_dims", "latent_dim", "levels", "codebook_size", "distance", "quantizer",
                "commitment_weight", "gumbel_tau", "activation", "dropout", "normalize",
                "latent_norm")


class RQVAETask(TrainingTask):
    """One RQ-VAE step; dead codes restarted from the last batch's residuals."""

    def __init__(self, net: RQVAE, config: Mapping[str, Any], fingerprint: Mapping[str, Any],
                 valid: torch.Tensor | None, precision: str) -> None:
        super().__init__(net, fingerprint)
        self.net, self.config, self.valid, self.precision = net, config, valid, precision
        self.residuals: list[torch.Tensor] | None = None

    @property
    def validates(self) -> bool:
        return self.valid is not None

    def training_step(self, module: torch.nn.Module, batch: torch.Tensor):
        out = module(batch)
        self.residuals = out["residuals"]
        return out["loss"], {"recon": out["recon_loss"].detach(),
                             "quant": out["quant_loss"].detach()}

    def after_step(self, step: int) -> None:
        every = self.config["restart_every"]
        if every and step % every == 0:
            self.net.quantizer.restart_dead_codes(self.residuals, self.config["restart_threshold"])

    def validation_metrics(self, module: torch.nn.Module) -> dict[str, float]:
        x = self.valid.to(next(self.net.parameters()).device)
        with autocast(x.device, self.precision):
            target, recon, _ = self.net.reconstruct(x)
        return {"valid_recon_mse": float(((recon - target) ** 2).mean())}


class RQVAEModel(ItemTokenizer):
    """Residual-quantized autoencoder that turns vectors into semantic IDs / tokens."""

    name = "rqvae"
    params = (
        ItemTokenizer.LEVELS,
        ItemTokenizer.CODEBOOK_SIZE,
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
        Param("latent_norm", bool, True, "a parameter-free LayerNorm on the encoder output, so "
              "the latent keeps the scale its codebooks were initialised at"),
        Param("encoder_init", str, "data", "data: scale each encoder layer to unit variance on "
              "the training data before k-means (keeps the first steps from collapsing the "
              "codebooks); default: torch's initialisation", choices=("data", "default")),
        ItemTokenizer.COLLISION_HANDLING,
        ItemTokenizer.COLLABORATIVE,
        Param("kmeans_init", bool, True, "initialise each codebook by k-means on encoded data"),
        Param("kmeans_iters", int, 25, "k-means iterations per level", min=1, max=10_000),
        Param("kmeans_samples", int, 65536, "vectors used for the k-means initialisation", min=1),
        Param("restart_every", int, 50, "check for dead codes every N steps (0: never)", min=0),
        Param("restart_threshold", float, 1.0,
              "a code used fewer times than this since the last check is re-seeded", min=0),
        Param("data_on_device", bool, None, "keep the training vectors on the GPU (null: when "
              "they fit in a quarter of free memory)", nullable=True),
        Param("encode_batch_size", int, 65536, "vectors per batch when encoding", min=1),
    )
    # A budget in steps, not epochs: a 1,700-item catalogue is two batches an epoch, and the
    # codebooks need a few thousand steps whatever the catalogue size. The warm-up keeps the
    # first steps small against the spread of the freshly initialised latent.
    train_defaults = {"epochs": None, "max_steps": 2000, "warmup_steps": 100}
    export_params = (
        Param("semantic_ids", bool, True, "write semantic_ids.h5 (items) or a token cache "
              "(utterances)"),
        Param("codes_dir", str, "codes", "folder, inside the run, for per-utterance tokens"),
    )
    more_training = "train longer (train.max_steps)"
    file_format = "rqf-rqvae-1"
    # models saved before these existed had none
    config_added = {"latent_norm": False, "collaborative": 0.0}

    @classmethod
    def run_outputs(cls, export: Mapping[str, Any]) -> tuple[str, ...]:
        codes_dir = export["codes_dir"]
        if not codes_dir or "/" in codes_dir or "\\" in codes_dir or codes_dir.startswith("."):
            raise ConfigError(f"export.codes_dir: expected a folder name inside the run folder, "
                              f"got {codes_dir!r}")
        return (*super().run_outputs(export), codes_dir)

    @classmethod
    def writer_folders(cls, export: Mapping[str, Any]) -> tuple[str, ...]:
        return (export["codes_dir"],)  # the tokens, in the data's own cache format

    def __init__(self, data_info: Mapping[str, Any], **params: Any) -> None:
        super().__init__(data_info, **params)
        params = self.config
        input_dim = data_info.get("input_dim")
        if not isinstance(input_dim, int) or input_dim <= 0:
            raise ConfigError("model: the dataset does not report a positive input_dim")
        if params["latent_dim"] > input_dim:
            raise ConfigError(f"model.latent_dim: {params['latent_dim']} is larger than the "
                              f"input ({input_dim}-d); a latent should compress the input")
        if any(h <= 0 for h in params["hidden_dims"]):
            raise ConfigError(f"model.hidden_dims: widths must be positive, got {params['hidden_dims']}")
        self.input_dim = input_dim + self.view_dim()
        self._require_memory()
        self.net = self._build()
        self.device = torch.device("cpu")
        self.precision = "fp32"

    def _require_memory(self) -> None:
        c = self.config
        widths = [self.input_dim, *c["hidden_dims"], c["latent_dim"]]
        layers = sum(a * b + b for a, b in zip(widths, widths[1:]))
        books = c["levels"] * c["codebook_size"] * c["latent_dim"]
        params = 2 * layers + books  # encoder and its mirror, the codebooks
        # weights, gradients and two Adam moments in fp32; k-means distances of one chunk
        need = params * 16 + DISTANCE_CHUNK * c["codebook_size"] * 4 * 2
        require_memory("model.levels, model.codebook_size, model.hidden_dims", need,
                       f"an RQ-VAE of {params:.3g} parameters ({c['levels']} x "
                       f"{c['codebook_size']} codes) with its optimizer state")

    def check(self, dataset: Dataset, train: Any) -> None:
        c = self.config
        widths = [self.input_dim, *c["hidden_dims"], c["latent_dim"]]
        batch = min(train.batch_size, max(len(dataset), 1))
        # activations of encoder and decoder kept for the backward pass, and their gradients
        need = batch * sum(widths) * 4 * 2 * 3
        require_memory("train.batch_size, model.hidden_dims", need,
                       f"a training batch of {batch:,} vectors through layers of "
                       f"{', '.join(map(str, widths))}")

    def _build(self) -> RQVAE:
        return RQVAE(input_dim=self.input_dim, **{k: self.config[k] for k in NETWORK_KEYS})

    def architecture(self) -> dict[str, Any]:
        return {k: (self.input_dim if k == "input_dim" else self.config[k])
                for k in ARCHITECTURE_KEYS}

    def codebooks_array(self) -> np.ndarray:
        return self.net.quantizer.codebooks.detach().cpu().numpy()

    # -- training -------------------------------------------------------------------------
    def _training_tensor(self, data: Dataset, device: torch.device) -> torch.Tensor:
        vectors = self.vectors_of(data)
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

    @torch.no_grad()
    def _initialise(self, data: torch.Tensor, seed: int) -> None:
        """Input statistics, encoder scale and k-means codebooks from the training data."""
        cfg, net = self.config, self.net
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data), generator=g)[:cfg["kmeans_samples"]].to(data.device)
        sample = data[idx].to(self.device).float()
        if cfg["normalize"] == "standardize":
            net.mean.copy_(sample.mean(0))
            net.std.copy_(sample.std(0).clamp_min(1e-6))
        if cfg["encoder_init"] == "data" and len(sample) > 1:
            net.calibrate(sample)
        if cfg["kmeans_init"]:
            net.quantizer.init_from_data(net.encoder(net.prepare(sample)), cfg["kmeans_iters"], g)

    def fit(self, train: Dataset, valid: Dataset | None, ctx: RunContext) -> dict[str, Any]:
        trainer = ctx.require_trainer(self.name)
        device = self.device = trainer.device
        self.precision = ctx.train.precision
        self.fit_view(train, ctx.seed)
        data = self._training_tensor(train, device)
        self.net.to(device)
        t0 = time.perf_counter()
        if trainer.resume_checkpoint is None:  # a checkpoint holds the initialised weights
            cfg = self.config
            ctx.echo(f"rqvae: initialising {cfg['levels']} codebooks of {cfg['codebook_size']} "
                     f"codes by k-means on {min(len(data), cfg['kmeans_samples']):,} vectors")
            self._initialise(data, ctx.seed)
        init_seconds = time.perf_counter() - t0
        valid_tensor = None
        if valid is not None and len(valid):
            valid_tensor = torch.from_numpy(self.vectors_of(valid))[:65536]
        task = RQVAETask(self.net, self.config, {"architecture": repr(self.architecture())},
                         valid_tensor, ctx.train.precision)
        result = trainer.fit(task, TensorBatches(data, ctx.train.batch_size, seed=ctx.seed,
                                                 device=device))
        self.net.eval()
        return {**result.summary(device), "kmeans_init_seconds": round(init_seconds, 3),
                "items_per_second": round(result.samples_per_second, 1),
                "training_vectors": len(data)}

    def fit_line(self, fit: Mapping[str, Any]) -> str:
        if not fit:
            return ""
        return (f"trained {fit.get('steps')} steps in {fit.get('seconds')} s "
                f"({fit.get('items_per_second')} vectors/s on {fit.get('device')})")

    # -- encoding ---------------------------------------------------------------------------
    def _chunks(self, n: int):
        """[start, stop) row ranges of one encoding batch each."""
        bs = self.config["encode_batch_size"]
        if self.device.type == "cpu":
            bs = min(bs, CPU_ENCODE_BATCH)  # CPU matmuls run fastest on cache-sized blocks
        return ((s, min(s + bs, n)) for s in range(0, n, bs))

    def _rows(self, read, a: int, b: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(read(a, b), dtype=np.float32)).to(self.device)

    @torch.no_grad()
    def codes_of(self, vectors: np.ndarray) -> np.ndarray:
        """(n, levels) nearest codes of raw input vectors (no collision handling)."""
        if self.view is not None:  # no item ids: the collaborative part predicted from text
            vectors = self.view.join(None, np.asarray(vectors, np.float32))
        self.net.eval().to(self.device)
        out = []
        for a, b in self._chunks(len(vectors)):
            with autocast(self.device, self.precision):
                out.append(self.net.encode(self._rows(lambda s, e: vectors[s:e], a, b)).cpu())
        if not out:
            return np.zeros((0, self.config["levels"]), np.int64)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def _latents(self, read, n: int) -> np.ndarray:
        """The encoder's (n, latent_dim) output, read and encoded once in chunks."""
        self.net.eval().to(self.device)
        out = np.empty((n, self.config["latent_dim"]), np.float32)
        for a, b in self._chunks(n):
            with autocast(self.device, self.precision):
                z = self.net.encoder(self.net.prepare(self._rows(read, a, b)))
            out[a:b] = z.float().cpu().numpy()
        return out

    @torch.no_grad()
    def _nearest(self, latents: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(latents).to(self.device)
        if not len(z):
            return np.zeros((0, self.config["levels"]), np.int64)
        return torch.cat([self.net.quantizer.encode(z[a:b]) for a, b in self._chunks(len(z))]
                         ).cpu().numpy()

    @torch.no_grad()
    def _assign(self, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nearest codes, IDs after collision handling) of encoder outputs."""
        from rqf.codes import handle_collisions_streamed

        q = self.net.quantizer
        raw = self._nearest(latents)

        def last_rows(items: np.ndarray) -> np.ndarray:
            # only the items that share a tuple (all for balanced), a part at a time
            out = np.empty((len(items), q.codebook_size), np.float32)
            for a, b in self._chunks(len(items)):
                out[a:b] = q.distances_at(torch.from_numpy(latents[items[a:b]]).to(self.device),
                                          torch.from_numpy(raw[items[a:b]]).to(self.device),
                                          q.levels - 1).cpu().numpy()
            return out

        codes, _ = handle_collisions_streamed(raw, self.config["collision_handling"],
                                              q.codebook_size, last_rows)
        return raw, codes

    @torch.no_grad()
    def _score(self, read, n: int, latents: np.ndarray, codes: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row reconstruction and quantisation errors of the IDs ``codes`` (decoder once)."""
        sq_err, sq_norm, quant = np.empty(n), np.empty(n), np.empty(n)
        for a, b in self._chunks(n):
            target = self.net.prepare(self._rows(read, a, b))
            zq = self.net.quantizer.decode_codes(torch.from_numpy(codes[a:b]).to(self.device))
            with autocast(self.device, self.precision):
                recon = self.net.decoder(zq.to(target.dtype)).float()
            sq_err[a:b] = ((recon - target) ** 2).sum(1).double().cpu().numpy()
            sq_norm[a:b] = (target ** 2).sum(1).double().cpu().numpy()
            z = torch.from_numpy(latents[a:b]).to(self.device)
            quant[a:b] = ((z - zq) ** 2).sum(1).double().cpu().numpy()
        return {"sq_err": sq_err, "sq_norm": sq_norm, "quant": quant}

    def code_rows(self, read, n: int, unique: bool = True) -> CodedItems:
        latents = self._latents(read, n)
        if unique:
            raw, codes = self._assign(latents)
        else:  # tokens need no unique IDs
            raw = codes = self._nearest(latents)
        return CodedItems(None, raw, codes, self._score(read, n, latents, codes))

    # -- export -----------------------------------------------------------------------------
    def export(self, dataset: Dataset, ctx: RunContext,
               predictions: CodedItems | None = None) -> dict[str, str]:
        artifacts = super().export(dataset, ctx, predictions)
        source = dataset.export_source()
        export = self.resolve_export(ctx.export)
        if export["semantic_ids"] and isinstance(source, SequenceVectors):
            out = ctx.run_dir / export["codes_dir"]
            artifacts["codes"] = str(self.export_sequences(source, out))
        return artifacts

    def encode(self, dataset: Dataset, out: Path) -> Path:
        source = dataset.export_source()
        if isinstance(source, ItemVectors):
            return self.export_items(source, out)
        return self.export_sequences(source, out)

    def export_sequences(self, source: SequenceVectors, out_dir: Path) -> Path:
        meta = {"levels": self.config["levels"], "codebook_size": self.config["codebook_size"]}
        dtype = np.int16 if self.config["codebook_size"] <= np.iinfo(np.int16).max else np.int32
        with source.open_writer(out_dir, meta) as writer:
            for key in source.keys:
                writer.write(key, self.codes_of(source.read(key)).astype(dtype))
        return out_dir

    # -- the model file ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                **self.view_state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.load_view(state)
        self.net.load_state_dict(state["state_dict"])
        self.net.eval()

    def place(self, device: torch.device) -> None:
        self.device = device
        self.net.to(device)
