#!/usr/bin/env bash
# A Cloud TPU VM or pod slice for w2s_jax: create, setup, run, kill, stop,
# delete. Every command that touches the slice runs on all workers at once
# (`--worker=all`): one process per host, one jax.distributed job.
#
#   export TPU_NAME=w2s ZONE=us-central2-b PROJECT=my-project
#   export ACCELERATOR_TYPE=v4-32          # or v5litepod-8, ...
#   launch/tpu_vm.sh create
#   launch/tpu_vm.sh setup                  # copy this checkout, pip install
#   launch/tpu_vm.sh exec -- 'huggingface-cli download Qwen/Qwen2.5-0.5B \
#       --local-dir ~/ckpt/Qwen2.5-0.5B'   # any shell command, every worker
#   launch/tpu_vm.sh run -- --config=configs/distill.py \
#       --workdir=gs://my-bucket/kd --config.mesh_shape='(1,-1,1)'
#   launch/tpu_vm.sh kill                   # stop the job on every worker
#   launch/tpu_vm.sh delete
#
# --dry-run (first argument) prints the exact gcloud commands instead of
# running them. Required variables are checked before anything runs.
#
# Environment:
#   TPU_NAME, ZONE, PROJECT   always required
#   ACCELERATOR_TYPE          required by create (v5litepod-8, v4-32, ...)
#   RUNTIME_VERSION           create; default from ACCELERATOR_TYPE
#   SPOT=1                    create a spot (preemptible) slice
#   REMOTE_DIR                checkout on the workers (default: w2s_jax)
#   PYTHON                    interpreter on the workers (default: python3)
#
# `run` sets W2S_DISTRIBUTED=on, so w2s_jax/distributed.py calls
# jax.distributed.initialize(), which finds the other workers through the
# TPU metadata server; no coordinator address is needed. Write the workdir
# to a bucket (gs://...) or a path that process 0 owns: only process 0
# writes metrics and exports.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/tpu_vm.sh [--dry-run] ACTION [-- args]
  create | setup | kill | stop | delete
  run -- <w2s_jax.main args>   python -m w2s_jax.main on every worker
  exec -- '<shell command>'    one shell command on every worker
EOF
  exit 2
}

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
[[ $# -ge 1 ]] || usage
action="$1"
shift
case "$action" in
  create | setup | run | exec | kill | stop | delete) ;;
  *)
    echo "error: unknown action '$action'." >&2
    usage
    ;;
esac

require() {
  local missing=()
  for v in "$@"; do
    [[ -n "${!v:-}" ]] || missing+=("$v")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "error: '$action' needs ${missing[*]} set in the environment," \
      "e.g. export TPU_NAME=w2s ZONE=us-central2-b PROJECT=my-project" \
      "ACCELERATOR_TYPE=v4-32" >&2
    exit 2
  fi
}

require TPU_NAME ZONE PROJECT
remote_dir="${REMOTE_DIR:-w2s_jax}"
py="${PYTHON:-python3}"
tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$ZONE" "--project=$PROJECT")

# One shell word: as is when safe, else single-quoted.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints (dry run) or runs a command, quoted so it can be pasted back.
do_cmd() {
  if [[ $dry_run -eq 1 ]]; then
    local q=()
    for a in "$@"; do q+=("$(quote "$a")"); done
    echo "${q[*]}"
  else
    "$@"
  fi
}

on_all_workers() {
  do_cmd "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all \
    --command="$1"
}

case "$action" in
  create)
    require ACCELERATOR_TYPE
    case "$ACCELERATOR_TYPE" in
      v5litepod-* | v5e-*) default_rt=v2-alpha-tpuv5-lite ;;
      v5p-*) default_rt=v2-alpha-tpuv5 ;;
      v6e-*) default_rt=v2-alpha-tpuv6e ;;
      *) default_rt="tpu-ubuntu2204-base" ;;
    esac
    extra=()
    [[ "${SPOT:-0}" == "1" ]] && extra+=(--spot)
    do_cmd "${tpu[@]}" create "$TPU_NAME" "${where[@]}" \
      "--accelerator-type=$ACCELERATOR_TYPE" \
      "--version=${RUNTIME_VERSION:-$default_rt}" "${extra[@]}"
    ;;
  setup)
    # The committed tree (git archive), not the working directory: no venvs
    # or outputs get copied, and every worker gets the same files.
    archive="/tmp/w2s_jax_${TPU_NAME}.tar.gz"
    do_cmd git archive --format=tar.gz -o "$archive" HEAD
    do_cmd "${tpu[@]}" scp "$archive" "$TPU_NAME:w2s_jax.tar.gz" \
      "${where[@]}" --worker=all
    on_all_workers "mkdir -p $remote_dir && tar -xzf w2s_jax.tar.gz -C \
$remote_dir && cd $remote_dir && $py -m pip install -q -U pip && \
$py -m pip install -q -e \".[tpu]\""
    ;;
  run)
    [[ "${1:-}" == "--" ]] && shift
    if [[ $# -eq 0 ]]; then
      echo "error: run needs w2s_jax.main arguments after --, e.g. run --" \
        "--config=configs/distill.py --workdir=gs://bucket/kd" >&2
      exit 2
    fi
    args=""
    for a in "$@"; do args+=" $(quote "$a")"; done
    on_all_workers "cd $remote_dir && W2S_DISTRIBUTED=on $py -m \
w2s_jax.main$args"
    ;;
  exec)
    [[ "${1:-}" == "--" ]] && shift
    if [[ $# -ne 1 ]]; then
      echo "error: exec needs one quoted shell command after --, e.g." \
        "exec -- 'ls ~/ckpt'" >&2
      exit 2
    fi
    on_all_workers "$1"
    ;;
  kill)
    # Only the training processes started by `run` (matched by module).
    on_all_workers "pkill -f '[w]2s_jax.main' || true"
    ;;
  stop)
    # Single-host VMs only; a multi-host slice cannot be stopped: delete it.
    do_cmd "${tpu[@]}" stop "$TPU_NAME" "${where[@]}"
    ;;
  delete)
    do_cmd "${tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
    ;;
esac
