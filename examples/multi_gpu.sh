#!/usr/bin/env bash
# Train the quickstart pipeline on every GPU of this machine with DistributedDataParallel.
# Each process draws a disjoint share of every epoch; rank 0 alone writes the run directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NPROC=${NPROC:-$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
# the run goes in runs/ of this checkout (a --set path is relative to the working directory)
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m rqf \
  run examples/quickstart.yaml --set output_dir=runs/quickstart_ddp \
  --set train.precision=bf16 "$@"
