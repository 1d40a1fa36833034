"""Training speed against torch's thread count on a machine other jobs share.

Times a fixed training workload (an RQ-VAE-sized MLP, forward and backward on batches of
1,024 768-d vectors; and a SASRec-sized transformer step) with 1 thread, with every core
(torch's own default) and with rqf's ``threads: auto``, while 0, 1, 2 or 4 other processes
keep a core busy each (plain Python loops, like the other jobs of a shared box).

    python benchmarks/threads.py --steps 30
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402


def _hog(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x += 1


def _mlp_step():
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(768, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 32), torch.nn.Linear(32, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 768))
    opt = torch.optim.AdamW(net.parameters())
    x = torch.randn(1024, 768)

    def step():
        loss = ((net(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def _transformer_step():
    import torch

    layer = torch.nn.TransformerEncoderLayer(64, 2, 256, batch_first=True)
    net = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    emb = torch.nn.Embedding(4000, 64)
    opt = torch.optim.AdamW([*net.parameters(), *emb.parameters()])
    seq = torch.randint(0, 4000, (128, 50))

    def step():
        h = net(emb(seq))
        loss = (h @ emb.weight.T).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def timed(make, threads: int, steps: int) -> float:
    import torch

    torch.set_num_threads(threads)
    step = make()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--others", type=int, nargs="+", default=[0, 1, 2, 4])
    args = parser.parse_args()
    from rqf.threads import auto_threads

    cores = len(os.sched_getaffinity(0))
    rows = []
    for others in args.others:
        stop = mp.Event()
        hogs = [mp.Process(target=_hog, args=(stop,), daemon=True) for _ in range(others)]
        for h in hogs:
            h.start()
        time.sleep(1.0)
        auto = auto_threads()
        for name, make in (("rqvae-like MLP", _mlp_step), ("sasrec-like transformer",
                                                             _transformer_step)):
            one = timed(make, 1, args.steps)
            every = timed(make, cores, args.steps)
            picked = timed(make, auto, args.steps)
            rows.append([others, name, round(one * 1000, 1), round(every * 1000, 1), auto,
                         round(picked * 1000, 1)])
        stop.set()
        for h in hogs:
            h.join()
    print_table(["other busy processes", "workload", "ms/step, 1 thread",
                 f"ms/step, {cores} threads (torch's default)", "auto picks",
                 "ms/step, auto"], rows,
                f"torch threads on a shared machine ({cores} cores)")


if __name__ == "__main__":
    main()
