"""The shell every item tokenizer shares: a ``Model`` whose codes are semantic IDs.

A subclass gives its codes (``code_rows``: nearest codes, IDs after collision handling and
per-row error terms of rows read in slices) and its codebooks; this base encodes the whole
catalogue once (``predict``), derives every split's metrics from that one pass (``evaluate``),
writes ``semantic_ids.h5`` and the usage plot (``export``), encodes new data (``encode``),
judges health and prints the summary. ``rqvae`` and ``rqkmeans`` are built on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from rqf.codes.collaborative import DIM as VIEW_DIM
from rqf.codes.collaborative import CollaborativeView, fit_view, read_item_rows
from rqf.codes.collisions import COLLISION_MODES
from rqf.codes.semantic_ids import write_semantic_ids
from rqf.codes.statistics import code_health, code_statistics, plot_usage
from rqf.errors import RqfError
from rqf.interfaces import Dataset, ItemVectors, Model, RunContext
from rqf.params import Param

Read = Callable[[int, int], np.ndarray]
# code statistics about items sharing a tuple: meaningless for frame tokens
MIN_ITEMS_PER_CODE = 4  # a default codebook the catalogue fills less than this is made smaller
TOKENS_SKIP = ("unique_code_share", "collision_rate", "max_items_per_code", "distinct_codes")


@dataclass
class CodedItems:
    """Rows encoded once: what metrics and export both read.

    ``per_row`` holds ``sq_err`` (squared reconstruction error of the IDs) and ``sq_norm``
    (squared norm of the target) per row, and any further per-row loss a tokenizer reports.
    """

    ids: np.ndarray | None
    raw_codes: np.ndarray      # each row's nearest codes
    codes: np.ndarray          # after collision handling: the IDs that are exported
    per_row: dict[str, np.ndarray]
    keys: Sequence[str] | None = None  # the items' own keys (ASINs), where the data has them

    def rows(self, rows: np.ndarray) -> "CodedItems":
        return CodedItems(None if self.ids is None else self.ids[rows], self.raw_codes[rows],
                          self.codes[rows], {k: v[rows] for k, v in self.per_row.items()})


class ItemTokenizer(Model):
    """A model that turns item vectors into semantic IDs (see the module docstring)."""

    # the parameters every tokenizer takes; a subclass lists them in its own params
    LEVELS = Param("levels", int, 3, "number of residual codebooks (code length)", min=1, max=64)
    CODEBOOK_SIZE = Param("codebook_size", int, 256, "codes per codebook", min=2)
    COLLISION_HANDLING = Param(
        "collision_handling", str, "reassign", "how items that share a code tuple get distinct "
        "IDs: suffix (an extra counter level only), reassign (nearest free last-level code "
        "within the prefix), balanced (Sinkhorn-balanced last level) or optimal (the last "
        "level of a prefix holding a shared tuple by a minimum-cost assignment)",
        choices=COLLISION_MODES)
    COLLABORATIVE = Param(
        "collaborative", float, 0.8, "weight of the collaborative view where the data holds "
        "user sequences: each item is coded as its text vector joined with a vector of the "
        "items it appears beside in the training sequences (no validation or test item "
        "counts); 0 codes the text alone (see rqf.codes.collaborative)", min=0.0, max=0.95)
    # beside the core's export keys (``plots``: here, the code-usage plot per level)
    export_params = (Param("semantic_ids", bool, True, "write semantic_ids.h5"),)
    # what the health check advises when codes go unused
    more_training: ClassVar[str] = "more k-means iterations"
    # ... and when a level's items crowd onto a few codes
    spread_fix: ClassVar[str | None] = None

    input_dim: int
    view: CollaborativeView | None = None

    # -- what a subclass gives ---------------------------------------------------------------
    def code_rows(self, read: Read, n: int, unique: bool = True) -> CodedItems:
        """Codes of ``n`` rows read as ``read(start, stop)``; ``unique``: apply collision
        handling (IDs), else nearest codes only (tokens)."""
        raise NotImplementedError

    def codebooks_array(self) -> np.ndarray | None:
        """(levels, codebook_size, dim) codewords written beside the IDs, or None."""
        return None

    # -- shared ----------------------------------------------------------------------------------
    @property
    def makes_item_ids(self) -> bool:
        return self.data_info.get("unit") in (None, "item")

    @classmethod
    def fit_defaults(cls, data_info: Mapping[str, Any], params: Mapping[str, Any],
                     unset: frozenset[str]) -> tuple[dict[str, Any], list[str]]:
        """A default ``codebook_size`` the catalogue cannot fill (under ``MIN_ITEMS_PER_CODE``
        items a code: the deeper levels collapse) becomes the largest power of two it fills;
        a size the pipeline sets is kept (the health check judges the result)."""
        params = dict(params)
        items = int(data_info.get("n_items") or data_info.get("n_samples") or 0)
        size = params.get("codebook_size")
        if "codebook_size" not in unset or not items or data_info.get("unit") not in (
                None, "item") or not isinstance(size, int) or items >= MIN_ITEMS_PER_CODE * size:
            return params, []
        fits = max(2, 1 << max(1, (items // MIN_ITEMS_PER_CODE).bit_length() - 1))
        params["codebook_size"] = fits
        return params, [f"model.codebook_size: {fits}, not the default {size}: {items:,} items "
                        f"give under {MIN_ITEMS_PER_CODE} items a code at {size} (set "
                        f"model.codebook_size to keep {size})"]

    # -- the collaborative view (rqf.codes.collaborative) ------------------------------------
    def view_dim(self) -> int:
        """Columns the collaborative view adds to every coded vector: ``VIEW_DIM`` where the
        tokenizer takes ``collaborative``, sets it above 0 and its dataset is a view over user
        sequences (its description says ``user_sequences``), else 0."""
        weight = self.config.get("collaborative", 0.0)
        return VIEW_DIM if weight and self.makes_item_ids and \
            self.data_info.get("user_sequences") else 0

    def fit_view(self, train: Dataset, seed: int) -> None:
        """Learn the view from ``train``'s sequences (its training inputs only); a dataset
        without sequences gives a view that adds zeros."""
        if not self.view_dim():
            return
        weight = float(self.config["collaborative"])
        self.view = fit_view(train, weight, seed) or CollaborativeView(
            np.zeros(0, np.int64), np.zeros((0, VIEW_DIM), np.float32),
            np.zeros((int(self.data_info["input_dim"]), VIEW_DIM), np.float32), weight)

    def through_view(self, source: ItemVectors) -> ItemVectors:
        """``source`` as the tokenizer codes it: read through the view where there is one."""
        return source if self.view is None else self.view.wrap(source)

    def vectors_of(self, data: Dataset) -> np.ndarray:
        """The coded vectors of ``data``'s items (``data.vectors()`` through the view)."""
        if self.view is None:
            return np.asarray(data.vectors(), np.float32)
        source = self.through_view(data.export_source())  # type: ignore[arg-type]
        rows = data.export_rows()
        return read_item_rows(source, rows) if len(rows) else \
            np.zeros((0, self.input_dim), np.float32)

    def view_state(self) -> dict[str, Any]:
        return {} if self.view is None else self.view.state()

    def load_view(self, state: Mapping[str, Any]) -> None:
        if not self.view_dim():
            return
        if "collaborative_ids" not in state:
            raise ValueError("no collaborative view in the model file, which the model's "
                             "collaborative setting needs (a file from before the view: "
                             "load it with collaborative: 0)")
        self.view = CollaborativeView.from_state(state, float(self.config["collaborative"]))

    @classmethod
    def run_outputs(cls, export: Mapping[str, Any]) -> tuple[str, ...]:
        return ("semantic_ids.h5", "code_usage.png")

    def predict(self, dataset: Dataset, splits: Mapping[str, Dataset]) -> CodedItems | None:
        """Every item of the export source, encoded and scored once for the whole run."""
        source = dataset.export_source()
        if not isinstance(source, ItemVectors):
            return None
        source = self.through_view(source)
        coded = self.code_rows(source.read, len(source.ids))
        coded.ids, coded.keys = source.ids, source.keys
        return coded

    def evaluate(self, data: Dataset, predictions: CodedItems | None = None) -> dict[str, Any]:
        rows = data.export_rows()
        if predictions is not None and rows is not None:
            return self.metrics(predictions.rows(rows))
        # no predictions, or frames and other units (their vectors are not rows of what is
        # exported): coded here, through the view where there is one
        vectors = self.vectors_of(data)
        started = time.perf_counter()
        coded = self.code_rows(lambda a, b: vectors[a:b], len(vectors),
                               unique=self.makes_item_ids)
        seconds = time.perf_counter() - started
        metrics = self.metrics(coded)
        if not self.makes_item_ids and seconds > 0:
            metrics["frames_per_second"] = round(len(vectors) / seconds, 1)
        return metrics

    @property
    def collision_handling(self) -> str:
        """The ``collision_handling`` the tokenizer declares (its ``COLLISION_HANDLING``
        parameter); one that declares none hands its codes over as they are, shared tuples
        told apart by the extra level alone: what ``suffix`` names."""
        return self.config["collision_handling"] if "collision_handling" in self.config \
            else "suffix"

    def metrics(self, coded: CodedItems) -> dict[str, Any]:
        """Code statistics of ``coded``, and its reconstruction error when it reports one."""
        n, size = len(coded.codes), self.config["codebook_size"]
        per_row, out = coded.per_row, {}
        if "sq_err" in per_row:
            err, norm = float(per_row["sq_err"].sum()), float(per_row["sq_norm"].sum())
            out = {"recon_mse": err / max(n * self.input_dim, 1),
                   "recon_rel_error": err / norm if norm else float("nan")}
        out.update({f"{k}_loss": float(v.sum()) / max(n, 1) for k, v in per_row.items()
                    if k not in ("sq_err", "sq_norm")})
        out.update(code_statistics(coded.codes, size))
        if not self.makes_item_ids:  # tokens: no IDs, frames sharing a code tuple is the point
            for key in TOKENS_SKIP:
                out.pop(key, None)
            return out
        return {**out, "collision_handling": self.collision_handling,
                "quantizer_collision_rate":
                    code_statistics(coded.raw_codes, size)["collision_rate"] if n else 0.0,
                "moved_share": float((coded.codes != coded.raw_codes).any(1).mean()) if n else 0.0}

    def health(self, metrics: Mapping[str, Any]) -> list[str]:
        return code_health(metrics.get("all") or {}, self.collision_handling,
                           self.makes_item_ids, self.config.get("normalize", "none"),
                           more_training=self.more_training, spread_fix=self.spread_fix,
                           keys={p.name for p in self.params})

    def codes_of(self, vectors: np.ndarray) -> np.ndarray:
        """(n, levels) nearest codes of raw input vectors, no collision handling: the same
        method on every tokenizer (``rqf.load(RUN).codes_of(x)``)."""
        vectors = np.asarray(vectors, np.float32)
        if self.view is not None:  # no item ids: the collaborative part predicted from text
            vectors = self.view.join(None, vectors)
        return self.code_rows(lambda a, b: vectors[a:b], len(vectors), unique=False).raw_codes

    def export(self, dataset: Dataset, ctx: RunContext,
               predictions: CodedItems | None = None) -> dict[str, str]:
        artifacts = {"model": str(ctx.run_dir / "model.pt")}
        export = self.resolve_export(ctx.export)
        if not export["semantic_ids"] or predictions is None:
            return artifacts
        artifacts["semantic_ids"] = str(self.write_ids(predictions,
                                                       ctx.run_dir / "semantic_ids.h5"))
        if export["plots"]:
            plot = plot_usage(predictions.codes, self.config["codebook_size"],
                              ctx.run_dir / "code_usage.png")
            if plot:
                artifacts["code_usage_plot"] = str(plot)
            else:
                ctx.echo("no code-usage plot: matplotlib is not installed "
                         "(pip install matplotlib, or export.plots: false)")
        return artifacts

    def encode(self, dataset: Dataset, out: Path) -> Path:
        source = dataset.export_source()
        if not isinstance(source, ItemVectors):
            raise RqfError(f"model {self.name!r} codes items; dataset {dataset.name!r} exports "
                           "utterances (use model: rqvae for frame tokens)")
        return self.export_items(source, out)

    def export_items(self, source: ItemVectors, path: Path) -> Path:
        """Semantic IDs of every item of ``source`` (new data, e.g. ``rqf encode``)."""
        source = self.through_view(source)
        coded = self.code_rows(source.read, len(source.ids))
        coded.ids, coded.keys = source.ids, source.keys
        return self.write_ids(coded, path)

    def write_ids(self, coded: CodedItems, path: Path) -> Path:
        attrs = {"levels": self.config["levels"], "codebook_size": self.config["codebook_size"],
                 "collision_handling": self.collision_handling, "tokenizer": self.name}
        return write_semantic_ids(path, coded.ids, coded.codes, self.codebooks_array(), attrs,
                                  raw_codes=coded.raw_codes, item_keys=coded.keys)

    def summarize(self, metrics: Mapping[str, Any]) -> str:
        items = self.makes_item_ids
        lines = ["split   recon_mse  rel_err  " + ("collisions (nearest)  moved  " if items else
                                                   "  frames   frames/s  ")
                 + "used codes per level      perplexity per level"]
        for role in ("train", "valid", "test", "all"):
            m = metrics.get(role)
            if not m:
                continue
            util = " ".join(f"{u:5.1%}" for u in m["utilization_of_reachable"])
            ppl = " ".join(f"{p:6.1f}" for p in m["perplexity"])
            recon = (f"{m['recon_mse']:9.3g}  {m['recon_rel_error']:7.3f}"
                     if "recon_mse" in m else f"{'-':>9}  {'-':>7}")
            middle = (f"{m['collision_rate']:10.2%} ({m['quantizer_collision_rate']:7.2%})  "
                      f"{m['moved_share']:5.1%}" if items else
                      f"{m['n']:8d}  {m.get('frames_per_second', float('nan')):9.0f}")
            lines.append(f"{role:<7} {recon}  {middle}  {util:<25} {ppl}")
        line = self.fit_line(metrics.get("fit") or {})
        return "\n".join(lines + ([line] if line else []))

    def fit_line(self, fit: Mapping[str, Any]) -> str:
        """One line on how the tokenizer was fit, under the summary's table."""
        return ""
