"""Every test starts with the installed plugins loaded afresh and torch seeded.

Shared helpers live where a plugin author finds them too: ``rqf.testing`` (in-memory data, a
private registry, structured vectors, the shared real data) and each data plugin's ``testing``
module, which pytest loads as a plugin (``recsys_files``, ``speech_cache``).
"""

from __future__ import annotations

import os

import pytest
import torch

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if WORKERS:  # pytest -n: workers side by side, the cores shared between them
    THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
    torch.set_num_threads(THREADS)
    # and the processes a test starts (rqf runs, writers): more threads than their share of
    # busy cores make each of them several times slower
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


@pytest.fixture(autouse=True)
def _fresh_plugins_and_seed():
    from rqf.plugins import reset_plugins

    reset_plugins()
    torch.manual_seed(0)
    yield
    reset_plugins()
