#!/usr/bin/env bash
# A local stand-in for the cluster, without Docker: a single-node Ray head with token
# authentication and an S3 server, everything on 127.0.0.1.
#
#   eval "$(infra/local/up.sh)"      # start; prints the exports for ray job submit / boto3
#   ray job submit --working-dir . -- python jobs/transcribe.py --manifest s3://zipscribe/... ...
#   infra/local/down.sh              # stop exactly what up.sh started
#
# S3: MinIO when a `minio` binary is on PATH (data kept in $ZS_STATE_DIR/minio-data), else
# moto_server from the project's venv (in memory: gone after down.sh). A bucket $ZS_BUCKET is
# created. Ray: `ray start --head` with RAY_AUTH_MODE=token; the token is generated into a
# 0600 file ($ZS_STATE_DIR/ray-token) that Ray and its clients read through RAY_AUTH_TOKEN_PATH.
# The S3 endpoint and credentials are in the head's environment, so jobs inherit them.
#
# Settings (environment): ZS_STATE_DIR (default ${TMPDIR:-/tmp}/zipscribe-local-<uid>),
# ZS_RAY_PORT (6379), ZS_DASHBOARD_PORT (8265), ZS_S3_PORT (9000), ZS_S3_CONSOLE_PORT (9001,
# MinIO only), ZS_CLIENT_PORT (10001), ZS_AGENT_PORT (52365), ZS_NUM_CPUS (all), ZS_BUCKET
# (zipscribe), ZS_VENV (<repo>/.venv). Progress goes to stderr, the exports to stdout.
#
# KubeRay: where kubectl has a current context, up.sh first checks that context's KubeRay operator
# and CRDs with infra/k8s/check-kuberay.sh (infra/k8s needs KubeRay >= 1.6.0; older ones drop
# authOptions and leave the job API open) and stops if they are too old, before starting anything.
# ZS_KUBERAY_CHECK: auto (default; a cluster that cannot be reached is only mentioned), 1 (the
# check must pass), 0 (skip).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ZS_VENV:-$REPO/.venv}"
STATE="${ZS_STATE_DIR:-${TMPDIR:-/tmp}/zipscribe-local-$(id -u)}"
RAY_PORT="${ZS_RAY_PORT:-6379}"
DASHBOARD_PORT="${ZS_DASHBOARD_PORT:-8265}"
S3_PORT="${ZS_S3_PORT:-9000}"
S3_CONSOLE_PORT="${ZS_S3_CONSOLE_PORT:-9001}"
CLIENT_PORT="${ZS_CLIENT_PORT:-10001}"
AGENT_PORT="${ZS_AGENT_PORT:-52365}"
BUCKET="${ZS_BUCKET:-zipscribe}"
HOST=127.0.0.1

say() { echo "up.sh: $*" >&2; }

if [ -x "$VENV/bin/ray" ]; then
  BIN="$VENV/bin"
elif command -v ray >/dev/null 2>&1; then
  BIN="$(dirname "$(command -v ray)")"
else
  say "no ray found (run 'make install' first, or set ZS_VENV)"; exit 1
fi
PY="$BIN/python"

case "${ZS_KUBERAY_CHECK:-auto}" in
  0) ;;
  1) "$REPO/infra/k8s/check-kuberay.sh" || { say "KubeRay check failed (ZS_KUBERAY_CHECK=1)"; exit 1; } ;;
  auto)
    if command -v "${KUBECTL:-kubectl}" >/dev/null 2>&1 && "${KUBECTL:-kubectl}" config current-context >/dev/null 2>&1; then
      rc=0; "$REPO/infra/k8s/check-kuberay.sh" || rc=$?
      if [ "$rc" = 1 ]; then say "the KubeRay of kubectl's current context is too old for infra/k8s (ZS_KUBERAY_CHECK=0 skips this)"; exit 1; fi
      if [ "$rc" != 0 ]; then say "could not check KubeRay in kubectl's current context; going on"; fi
    fi ;;
  *) say "ZS_KUBERAY_CHECK must be auto, 1 or 0"; exit 1 ;;
esac

if [ -e "$STATE/ray" ] || [ -e "$STATE/s3.pid" ]; then
  say "$STATE is in use (already up?); run infra/local/down.sh first"; exit 1
fi
umask 077
mkdir -p "$STATE"
chmod 700 "$STATE"

started=0
cleanup_on_error() {
  if [ "$started" = 0 ]; then
    say "start failed; cleaning up (logs were in $STATE)"
    for log in "$STATE"/s3.log "$STATE"/ray-start.log; do [ -f "$log" ] && tail -n 20 "$log" >&2; done
    ZS_STATE_DIR="$STATE" "$REPO/infra/local/down.sh" >&2 || true
  fi
}
trap cleanup_on_error EXIT

# --- token (0600 file; never on a command line or in the environment) -------------------
"$PY" -c 'import secrets; print(secrets.token_hex(32))' > "$STATE/ray-token"
chmod 600 "$STATE/ray-token"

# --- S3 -------------------------------------------------------------------------------
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL="http://$HOST:$S3_PORT"
unset AWS_PROFILE AWS_SESSION_TOKEN
if command -v minio >/dev/null 2>&1; then
  S3_KIND=minio
  export AWS_ACCESS_KEY_ID=zipscribe
  AWS_SECRET_ACCESS_KEY="$("$PY" -c 'import secrets; print(secrets.token_hex(20))')"
  export AWS_SECRET_ACCESS_KEY
  mkdir -p "$STATE/minio-data"
  MINIO_ROOT_USER="$AWS_ACCESS_KEY_ID" MINIO_ROOT_PASSWORD="$AWS_SECRET_ACCESS_KEY" \
    nohup minio server "$STATE/minio-data" --address "$HOST:$S3_PORT" \
      --console-address "$HOST:$S3_CONSOLE_PORT" > "$STATE/s3.log" 2>&1 < /dev/null &
else
  S3_KIND=moto
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  [ -x "$BIN/moto_server" ] || { say "neither minio nor $BIN/moto_server found"; exit 1; }
  nohup "$BIN/moto_server" -H "$HOST" -p "$S3_PORT" > "$STATE/s3.log" 2>&1 < /dev/null &
fi
echo "$! $S3_KIND $S3_PORT" > "$STATE/s3.pid"
say "S3 ($S3_KIND) starting on $AWS_ENDPOINT_URL"

"$PY" - "$BUCKET" <<'PYEOF'
import sys, time
import boto3
from botocore.config import Config

bucket = sys.argv[1]
s3 = boto3.client("s3", config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5))
deadline = time.time() + 30
while True:
    try:
        names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
        break
    except Exception as exc:  # not listening yet
        if time.time() > deadline:
            sys.exit(f"S3 server did not come up: {exc}")
        time.sleep(0.2)
if bucket not in names:
    s3.create_bucket(Bucket=bucket)
PYEOF
say "bucket s3://$BUCKET ready"

# --- Ray ------------------------------------------------------------------------------
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/ray-token" RAY_USAGE_STATS_ENABLED=0
unset RAY_AUTH_TOKEN RAY_ADDRESS
export PATH="$BIN:$PATH"   # jobs' `python` is the venv's
cpus=()
if [ -n "${ZS_NUM_CPUS:-}" ]; then cpus=(--num-cpus "$ZS_NUM_CPUS"); fi
say "Ray head starting (dashboard http://$HOST:$DASHBOARD_PORT)"
echo "$RAY_PORT" > "$STATE/ray.port"   # down.sh: processes that name no temp dir but this GCS port
"$BIN/ray" start --head --node-ip-address "$HOST" --port "$RAY_PORT" \
  --dashboard-host "$HOST" --dashboard-port "$DASHBOARD_PORT" --include-dashboard true \
  --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
  --temp-dir "$STATE/ray" --disable-usage-stats "${cpus[@]}" > "$STATE/ray-start.log" 2>&1
deadline=$((SECONDS + 60))
until "$BIN/ray" job list --address "http://$HOST:$DASHBOARD_PORT" > /dev/null 2>&1; do
  if [ "$SECONDS" -gt "$deadline" ]; then say "Ray job API did not answer within 60 s"; exit 1; fi
  sleep 0.5
done

cat > "$STATE/env" <<ENVEOF
export RAY_ADDRESS=http://$HOST:$DASHBOARD_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$STATE/ray-token
unset RAY_AUTH_TOKEN
export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_REGION=$AWS_REGION
export AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
ENVEOF
chmod 600 "$STATE/env"
started=1
say "up: Ray http://$HOST:$DASHBOARD_PORT (GCS $HOST:$RAY_PORT), S3 $AWS_ENDPOINT_URL bucket s3://$BUCKET; state in $STATE"
say "(the same exports are in $STATE/env; stop with: ZS_STATE_DIR=$STATE infra/local/down.sh)"
cat "$STATE/env"
