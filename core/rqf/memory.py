"""Memory a setting would take, checked before anything is allocated.

A model estimates what its settings cost (parameters and optimizer state, the arrays its data
makes) and asks ``require_memory``; over what the machine has free, the run is refused in one
line naming the key and the estimate, instead of ending in an allocator's error minutes later.
"""

from __future__ import annotations

import os

from rqf.errors import ConfigError

# a run may plan on this share of the memory free when it starts
USABLE_SHARE = 0.8


def available_bytes() -> int:
    """Memory this machine has free now (``MemAvailable``), or its physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: nothing is refused


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def require_memory(key: str, nbytes: float, what: str) -> None:
    """Refuse ``key`` when ``what`` would need more than this machine can give it."""
    free = available_bytes()
    if nbytes > USABLE_SHARE * free:
        raise ConfigError(f"{key}: {what} needs about {human_bytes(nbytes)}, more than the "
                          f"{human_bytes(free)} this machine has free")
