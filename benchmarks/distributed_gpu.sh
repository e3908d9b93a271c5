#!/usr/bin/env bash
# The distributed benchmark on a CUDA machine, in under 5 minutes: steps/s of 1 process (and
# of 2 on nccl when there are 2 or more GPUs), coupling times on the GPU (ExactOT: cost matrix
# on the GPU, assignment on the CPU; ApproxOT: torch auction on the GPU) and the coupling gap,
# on a smaller grid (B in 256, 1024, 4096). Writes docs/results/distributed_gpu.json and
# re-renders docs/results/distributed.md. Extra arguments go to benchmarks/distributed.py.
#
#   bash benchmarks/distributed_gpu.sh              # PYTHON=... to pick the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 290 "${PYTHON:-python}" benchmarks/distributed.py --gpu "$@"
