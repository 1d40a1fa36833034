"""Every test starts with the installed plugins loaded afresh and torch seeded.

Shared helpers live where a plugin author finds them too: ``rqf.testing`` (in-memory data, a
private registry, structured vectors, the shared real data) and each data plugin's ``testing``
module, which pytest loads as a plugin (``recsys_files``, ``speech_cache``).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_plugins_and_seed():
    from rqf.plugins import reset_plugins

    reset_plugins()
    torch.manual_seed(0)
    yield
    reset_plugins()
