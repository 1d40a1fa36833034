"""RQ-VAE training and encoding throughput on synthetic items, with the quality reached.

1M (by default) 768-d items drawn from a mixture of Gaussians and L2-normalised, the default
architecture (768 -> 512 -> 256 -> 128 -> 32, 3 x 256 codes). Prints items/s for training and
encoding and, for the training time spent, the reconstruction error and code usage reached.

    python benchmarks/rqvae_throughput.py                     # every device present
    python benchmarks/rqvae_throughput.py --device cuda --batch-size 65536 --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb, print_table  # noqa: E402

from rqf.interfaces import RunContext  # noqa: E402
from rqf.training import TrainConfig  # noqa: E402
from rqf_rqvae.model import RQVAEModel  # noqa: E402


def mixture(n: int, dim: int, components: int, seed: int, sample_seed: int) -> np.ndarray:
    centers = np.random.default_rng(seed).normal(size=(components, dim)).astype(np.float32)
    rng = np.random.default_rng(sample_seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        which = rng.integers(0, components, stop - start)
        block = centers[which] + 0.5 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


class Vectors:
    name = "synthetic"

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def vectors(self) -> np.ndarray:
        return self.x

    def __len__(self) -> int:
        return len(self.x)


def run(device: str, x: np.ndarray, held_out: np.ndarray, args) -> list[object]:
    cfg = TrainConfig(epochs=1000, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      device=device, precision=args.precision, checkpoint_every=0,
                      progress=False, log_every=max(args.steps, 1),
                      compile=None if args.compile == "auto" else args.compile == "on")
    model = RQVAEModel({"input_dim": x.shape[1]})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(Path(tmp), cfg, {}, seed=0, echo=lambda _m: None)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fit = model.fit(Vectors(x), None, ctx)
    # encoding: every item, timed after one warm-up batch
    model.codes_of(x[:args.encode_batch])
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if device == "cuda":
        gpu = torch.from_numpy(x).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision != "fp32"):
            codes = torch.cat([model.net.encode(gpu[i:i + args.encode_batch])
                               for i in range(0, len(gpu), args.encode_batch)])
        torch.cuda.synchronize()
        codes = codes.cpu().numpy()
    else:
        codes = model.codes_of(x)
    encode_s = time.perf_counter() - start
    quality = model.evaluate(Vectors(held_out))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else peak_rss_mb() / 1024
    return [device, torch.cuda.get_device_name() if device == "cuda" else "cpu",
            args.batch_size, args.precision, fit["steps"], fit["seconds"],
            fit["items_per_second"], len(x) / encode_s, quality["recon_mse"],
            quality["recon_rel_error"], " ".join(f"{u:.0%}" for u in quality["utilization"]),
            f"{peak:.1f} GiB"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    p.add_argument("--batch-size", type=int, default=None, help="default: 4096 CPU, 65536 CUDA")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 300 CPU, 2000 CUDA)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default=None, help="default: fp32 CPU, bf16 CUDA")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--encode-batch", type=int, default=262144)
    args = p.parse_args()
    t0 = time.perf_counter()
    x = mixture(args.items, args.dim, 1024, seed=0, sample_seed=1)
    held_out = mixture(100_000, args.dim, 1024, seed=0, sample_seed=2)  # same mixture, new draws
    print(f"generated {args.items:,} x {args.dim} items in {time.perf_counter() - t0:.1f} s; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    rows = []
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: skipping the CUDA rows")
            continue
        run_args = argparse.Namespace(**vars(args))
        run_args.batch_size = args.batch_size or (65536 if device == "cuda" else 4096)
        run_args.steps = args.steps or (2000 if device == "cuda" else 300)
        run_args.precision = args.precision or ("bf16" if device == "cuda" else "fp32")
        rows.append(run(device, x, held_out, run_args))
    print_table(["device", "name", "batch", "precision", "steps", "train s", "train items/s",
                 "encode items/s", "recon mse", "rel err", "utilization", "peak mem"], rows,
                "RQ-VAE throughput (default architecture, 3 x 256 codes)")


if __name__ == "__main__":
    main()
