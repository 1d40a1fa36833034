#!/usr/bin/env bash
# Train the quickstart pipeline on every GPU of this machine with DistributedDataParallel.
# Each process draws a disjoint share of every epoch; rank 0 alone writes the run directory.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")}
exec torchrun --standalone --nproc_per_node="$NPROC" --no-python \
  rqf run examples/quickstart.yaml --set output_dir=../runs/quickstart_ddp \
  --set train.precision=bf16 "$@"
