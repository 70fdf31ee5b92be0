#!/usr/bin/env bash
# The GPU check in one go: the CUDA tests, then bench/gpu_suite.py (throughput by shape, precision
# and batch size; decoding's share of the encoder; one end-to-end job on a Ray GPU actor).
#
#   bench/gpu_suite.sh                      # on a CUDA machine (< 8 minutes)
#   bench/gpu_suite.sh --device cpu --quick # the same code paths on a CPU, in about a minute
#
# Extra arguments go to bench/gpu_suite.py. PYTHON picks the interpreter (default: .venv/bin/python
# if present, else python3). Exit status: the tests' if they fail, else the benchmark's.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
device=cuda
for arg in "$@"; do [ "$arg" = "cpu" ] && device=cpu; done
if [ "$device" = cuda ]; then
    echo "== CUDA tests" >&2
    "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/ >&2
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >&2 || true
fi
echo "== benchmark" >&2
exec "$PYTHON" bench/gpu_suite.py "$@"
