#!/usr/bin/env bash
# The GPU check in one go: the CUDA tests, then bench/gpu_suite.py (the shipped decoding's model
# stage and its search's host syncs, throughput by shape, precision and batch size, decoding's share
# of the encoder, one end-to-end job on a Ray GPU actor).
#
#   bench/gpu_suite.sh                      # on a CUDA machine: one call, well under 10 minutes
#   bench/gpu_suite.sh --device cpu --quick # the same code paths on a CPU, in a few minutes
#
# Extra arguments go to bench/gpu_suite.py. PYTHON picks the interpreter (default: .venv/bin/python
# if present, else python3). A failing test does not stop the benchmark: both always run, and the
# exit status is the tests' when they failed, else the benchmark's (non-zero when the search synced
# with the host, or a section failed).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
device=cuda
for arg in "$@"; do [ "$arg" = "cpu" ] && device=cpu; done
tests=0
if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >&2 || true
    echo "== CUDA tests" >&2
    "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m cuda tests/ >&2
    tests=$?
    [ "$tests" = 5 ] && tests=0  # pytest's "no tests collected" (no CUDA test selected) is not a failure
    [ "$tests" = 0 ] || echo "== CUDA tests FAILED (pytest exit status $tests); the benchmark runs anyway" >&2
fi
echo "== benchmark" >&2
"$PYTHON" bench/gpu_suite.py "$@"
bench=$?
if [ "$tests" != 0 ]; then
    echo "== gpu_suite: the CUDA tests failed (exit status $tests)" >&2
    exit "$tests"
fi
exit "$bench"
