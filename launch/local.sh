#!/usr/bin/env bash
# Run `jtl train` on this machine, optionally as N local processes of one data-parallel job
# (CPU collectives over loopback), the same command a cluster launcher runs per host.
#
#   launch/local.sh [--dry-run] [--processes N] [--port P] -- --config configs/x.py --workdir DIR [...]
set -euo pipefail

dry_run=0
processes=1
port=12355
jtl="${JTL_BIN:-$(dirname "$0")/../.venv/bin/jtl}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --processes) processes="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "launch/local.sh: unknown option $1 (put jtl arguments after --)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "usage: launch/local.sh [--dry-run] [--processes N] [--port P] -- JTL_TRAIN_ARGS..." >&2
  exit 2
fi

run() {
  if [[ $dry_run -eq 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

if [[ "$processes" -eq 1 ]]; then
  run "$jtl" train "$@"
  exit 0
fi

pids=()
for ((i = 0; i < processes; i++)); do
  if [[ $dry_run -eq 1 ]]; then
    run env JTL_DISTRIBUTED=1 JTL_COORDINATOR="127.0.0.1:$port" JTL_NUM_PROCESSES="$processes" \
      JTL_PROCESS_ID="$i" "$jtl" train "$@"
  else
    JTL_DISTRIBUTED=1 JTL_COORDINATOR="127.0.0.1:$port" JTL_NUM_PROCESSES="$processes" \
      JTL_PROCESS_ID="$i" "$jtl" train "$@" &
    pids+=("$!")
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
