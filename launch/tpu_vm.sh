#!/usr/bin/env bash
# Cloud TPU VM: create, install jtl with jax[tpu] on every worker, run one jtl command on all
# workers (jax.distributed auto-detects the pod), optionally delete. Workdirs may be gs:// paths.
#
#   launch/tpu_vm.sh [--dry-run] --name NAME --zone ZONE [--type v5litepod-8]
#       [--version tpu-ubuntu2204-base] [--repo URL] [--delete] [--retries N] \
#       -- train --config ... --workdir gs://...
#
# Preemption: jtl exits 75 after checkpointing on SIGTERM, and an ssh session to a preempted VM
# ends with 255. Either way the command is run again (up to --retries times, default 3), after
# re-creating the VM and its install if it is no longer READY; the run resumes from its last
# checkpoint in the (gs://) workdir.
#
# What runs on the pod is this checkout: a wheel built here (`pip wheel`, configs included) is
# copied to every worker. `--repo URL` clones and installs that repository instead.
set -euo pipefail

dry_run=0
name=""
zone=""
type="v5litepod-8"
version="tpu-ubuntu2204-base"
repo="${JTL_REPO:-}"
delete=0
retries=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --delete) delete=1; shift ;;
    --retries) retries="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "launch/tpu_vm.sh: unknown option $1 (put the jtl command after --)" >&2; exit 2 ;;
  esac
done
if [[ -z "$name" || -z "$zone" || $# -eq 0 ]]; then
  echo "usage: launch/tpu_vm.sh [--dry-run] --name NAME --zone ZONE [--type T] -- JTL_ARGS..." >&2
  exit 2
fi

run() {
  if [[ $dry_run -eq 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

jtl_args=$(printf '%q ' "$@")
data="mnist fashion_mnist digits lfw_subset"
if [[ -n "$repo" ]]; then
  install="if [ ! -d jtl ]; then git clone $repo jtl; fi; jtl-venv/bin/pip install -q -U 'jax[tpu]' ./jtl"
else
  root=$(cd "$(dirname "$0")/.." && pwd)
  jtl_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")
  wheel="jtl-$jtl_version-py3-none-any.whl"
  wheels=$(mktemp -d)
  run python3 -m pip wheel -q --no-deps -w "$wheels" "$root"
  install="jtl-venv/bin/pip install -q -U 'jax[tpu]' ~/$wheel"
fi
setup="set -e; python3 -m venv jtl-venv; $install; jtl-venv/bin/jtl data fetch $data"
command="JTL_DISTRIBUTED=1 jtl-venv/bin/jtl $jtl_args"

provision() {
  run gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$type" \
    --version="$version"
  if [[ -z "$repo" ]]; then
    run gcloud compute tpus tpu-vm scp "$wheels/$wheel" "$name:~/" --zone="$zone" --worker=all
  fi
  run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$setup"
}

provision
status=0
for ((attempt = 0; attempt <= retries; attempt++)); do
  status=0
  run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$command" \
    || status=$?
  if [[ $status -ne 75 && $status -ne 255 ]]; then break; fi
  echo "launch/tpu_vm.sh: preempted (exit $status); resuming, retry $((attempt + 1)) of $retries" >&2
  state=$(gcloud compute tpus tpu-vm describe "$name" --zone="$zone" --format='value(state)' \
    2>/dev/null || echo GONE)
  if [[ "$state" != "READY" ]]; then
    gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet 2>/dev/null || true
    provision
  fi
done
if [[ $delete -eq 1 ]]; then
  run gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet
fi
exit "$status"
