#!/usr/bin/env bash
# Stop what infra/local/up.sh started, and nothing else: the S3 server whose pid up.sh
# recorded (after checking that the pid still runs that server), and the processes of this
# Ray head, found by its own temp dir ($ZS_STATE_DIR/ray) on their command lines plus all their
# descendants (workers rename themselves to ray::...). Never `ray stop`, which stops every Ray
# of the user. Removes the token, env and pid files; MinIO data stays unless ZS_PURGE=1.
set -euo pipefail

STATE="${ZS_STATE_DIR:-${TMPDIR:-/tmp}/zipscribe-local-$(id -u)}"
say() { echo "down.sh: $*" >&2; }

if [ ! -d "$STATE" ]; then
  say "nothing to stop ($STATE does not exist)"; exit 0
fi

cmdline_of() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null || true; }
running() {   # alive and not a zombie waiting for its parent (pid 1 here) to reap it
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

declare -A victims=()

# S3 server: the recorded pid, if it is still that server.
if [ -f "$STATE/s3.pid" ]; then
  read -r pid kind port < "$STATE/s3.pid" || true
  cmd="$(cmdline_of "$pid")"
  if [ -n "$cmd" ] && [[ "$cmd" == *"$kind"* ]] && [[ "$cmd" == *"$port"* ]]; then
    victims[$pid]=1
  fi
fi

# Ray: every process whose command line names this head's temp dir (or, like Ray's client
# server, its GCS address: --address=HOST:PORT), and all their descendants.
raydir="$STATE/ray"
gcs_port=""
[ -f "$STATE/ray.port" ] && read -r gcs_port < "$STATE/ray.port"
roots=()
for dir in /proc/[0-9]*; do
  pid="${dir#/proc/}"
  [ "$pid" = "$$" ] && continue
  cmd="$(cmdline_of "$pid")"
  case "$cmd" in
    *"$raydir/"* | *"$raydir "* | *"=$raydir"*) roots+=("$pid"); continue ;;
  esac
  if [ -n "$gcs_port" ] && [[ "$cmd" == *ray* ]] \
     && [[ " $cmd" =~ \ --(gcs-)?address=[^\ ]*:${gcs_port}\  ]]; then
    roots+=("$pid")
  fi
done
if [ "${#roots[@]}" -gt 0 ]; then
  declare -A children=()
  while read -r pid ppid; do
    children[$ppid]+=" $pid"
  done < <(ps -e -o pid= -o ppid=)
  queue=("${roots[@]}")
  while [ "${#queue[@]}" -gt 0 ]; do
    pid="${queue[0]}"; queue=("${queue[@]:1}")
    [ -n "${victims[$pid]:-}" ] && continue
    victims[$pid]=1
    for child in ${children[$pid]:-}; do queue+=("$child"); done
  done
fi
unset "victims[$$]" 2>/dev/null || true

pids=("${!victims[@]}")
if [ "${#pids[@]}" -gt 0 ]; then
  say "stopping ${#pids[@]} process(es): ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 100); do   # up to 10 s
    alive=()
    for pid in "${pids[@]}"; do running "$pid" && alive+=("$pid"); done
    [ "${#alive[@]}" -eq 0 ] && break
    sleep 0.1
  done
  if [ "${#alive[@]}" -gt 0 ]; then
    say "killing ${#alive[@]} that ignored TERM: ${alive[*]}"
    kill -KILL "${alive[@]}" 2>/dev/null || true
  fi
else
  say "no running processes of $STATE"
fi

rm -rf "$STATE/ray" "$STATE/ray.port" "$STATE/ray-token" "$STATE/env" "$STATE/s3.pid" "$STATE/s3.log" "$STATE/ray-start.log"
if [ "${ZS_PURGE:-0}" = 1 ]; then rm -rf "$STATE/minio-data"; fi
rmdir "$STATE" 2>/dev/null || true
say "down"
