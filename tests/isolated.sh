#!/usr/bin/env bash
# Run a command in a private network namespace that has only a loopback interface,
# so the services the tests start (Ray's head binds some ports on every interface,
# moto S3) can talk to each other on 127.0.0.1 and to nothing else.
# Falls back to running the command directly where namespaces are not available.
set -euo pipefail
if command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 && unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' _ "$@"
fi
echo "tests/isolated.sh: no network namespace available; running without isolation" >&2
exec "$@"
