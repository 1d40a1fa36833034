"""How many CPU threads torch uses: ``train.threads``, ``rqf --threads N`` or ``RQF_THREADS``.

torch starts one thread per core. On a machine other jobs share, that oversubscribes the cores:
each step waits for its slowest thread, and a thread that lost its core to another job stalls
the rest (a step on two busy cores can take several times as long as on one). ``auto`` counts
the processes running right now (the kernel's count of runnable tasks, sampled a few times)
and leaves their cores to them: every core when the machine is idle, one thread when it is
full. Under ``torchrun`` the processes of one machine share its cores.

Imports no torch: the command line sets the thread count before torch is loaded (through
``OMP_NUM_THREADS``, which also holds numpy's BLAS), and again through torch once it is.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "RQF_THREADS"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_elsewhere(samples: int = 5, interval: float = 0.01) -> int:
    """Processes other than this one running now (median of a few samples); 0 where the
    kernel does not say."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(max(running - 1, 0))  # this process is one of them
        if i + 1 < samples:
            time.sleep(interval)
    return sorted(counts)[len(counts) // 2]


def auto_threads() -> int:
    """Threads for this process: its share of the cores the other running processes leave."""
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    free = cores() - busy_elsewhere()
    return max(1, free // local)


def parse_threads(value: object, key: str) -> int | None:
    """``auto`` (None), or a positive whole number; anything else refused naming ``key``."""
    from rqf.errors import ConfigError

    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1 or isinstance(value, bool) or (isinstance(value, float) and value != int(value)):
        raise ConfigError(f"{key}: expected auto or a positive whole number, got {value!r}")
    return n


def apply_threads(n: int | None) -> int:
    """Use ``n`` threads (None: ``auto_threads``) from now on; returns the number used."""
    n = auto_threads() if n is None else n
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
