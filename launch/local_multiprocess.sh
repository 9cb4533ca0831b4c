#!/usr/bin/env bash
# One jax.distributed job of N CPU processes on this machine.
#
#   launch/local_multiprocess.sh [--dry-run] N DEVICES_PER_PROC -- <main args>
#   launch/local_multiprocess.sh 2 2 -- --config=configs/distill.py:runlocal \
#       --workdir=/tmp/kd2x2
#
# Process i runs `$PYTHON -m w2s_jax.main <main args>` with
#   XLA_FLAGS=--xla_force_host_platform_device_count=DEVICES_PER_PROC
#   JAX_PLATFORMS=cpu
#   JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>  (process 0 hosts it)
#   JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
# so the job sees N * DEVICES_PER_PROC devices, with gloo collectives between
# processes (w2s_jax/distributed.py). This is how to test multi-host code
# paths (per-process data, process-0-only writes) on a laptop.
#
# Process 0 writes to this terminal; process i > 0 to $LOG_DIR/proc<i>.log
# (LOG_DIR defaults to a fresh temporary directory). The script waits for all
# processes; when one fails it stops the others and exits with that status.
#
# Environment: PYTHON (default: python), LOG_DIR, JAX_INITIALIZATION_TIMEOUT
# (default 60 s here: a local job starts in seconds). Needs bash >= 5.1.
set -euo pipefail

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then
  echo "error: $0 needs bash >= 5.1 (wait -n -p), this is $BASH_VERSION;" \
    "on macOS: brew install bash." >&2
  exit 2
fi

usage() {
  echo "usage: $0 [--dry-run] N DEVICES_PER_PROC -- <w2s_jax.main args>" >&2
  exit 2
}

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
[[ $# -ge 3 ]] || usage
nproc="$1"
ndev="$2"
shift 2
[[ "$1" == "--" ]] || usage
shift
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ && "$ndev" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N ($nproc) and DEVICES_PER_PROC ($ndev) must be positive" \
    "integers." >&2
  exit 2
fi

python="${PYTHON:-python}"
if [[ $dry_run -eq 1 ]]; then
  port="PORT"
else
  port="$("$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
fi
log_dir="${LOG_DIR:-}"
if [[ -z "$log_dir" && $dry_run -eq 0 ]]; then
  log_dir="$(mktemp -d -t w2s_local_mp.XXXXXX)"
fi
log_dir="${log_dir:-LOG_DIR}"

declare -A running=() # pid -> process id
# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
  # TERM first (the trainer saves on SIGTERM), KILL what is still there
  # after a grace period: a process blocked in a collective on a dead peer
  # never returns to Python to handle the signal.
  [[ ${#running[@]} -gt 0 ]] || return 0
  kill "${!running[@]}" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    sleep 0.5
    local alive=0
    for pid in "${!running[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [[ $alive -eq 0 ]] && return 0
  done
  kill -9 "${!running[@]}" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ((i = 0; i < nproc; i++)); do
  env_vars=(
    "XLA_FLAGS=--xla_force_host_platform_device_count=$ndev"
    "JAX_PLATFORMS=cpu"
    "JAX_COORDINATOR_ADDRESS=127.0.0.1:$port"
    "JAX_NUM_PROCESSES=$nproc"
    "JAX_PROCESS_ID=$i"
    "JAX_INITIALIZATION_TIMEOUT=${JAX_INITIALIZATION_TIMEOUT:-60}"
  )
  cmd=(env "${env_vars[@]}" "$python" -m w2s_jax.main "$@")
  if [[ $dry_run -eq 1 ]]; then
    out=""
    [[ $i -gt 0 ]] && out=" > $log_dir/proc$i.log 2>&1"
    echo "${cmd[*]}$out &"
    continue
  fi
  if [[ $i -eq 0 ]]; then
    "${cmd[@]}" &
  else
    "${cmd[@]}" >"$log_dir/proc$i.log" 2>&1 &
  fi
  running[$!]=$i
done
[[ $dry_run -eq 1 ]] && exit 0
[[ $nproc -gt 1 ]] && echo "processes 1..$((nproc - 1)) log to $log_dir" >&2

# Wait for every process; the first failure stops the rest.
status=0
while [[ ${#running[@]} -gt 0 ]]; do
  done_pid=""
  set +e
  wait -n -p done_pid "${!running[@]}"
  rc=$?
  set -e
  failed="${running[$done_pid]:-?}"
  unset "running[$done_pid]"
  if [[ $rc -ne 0 ]]; then
    echo "error: process $failed (pid $done_pid) exited with status $rc;" \
      "stopping the others." >&2
    if [[ "$failed" != "0" ]]; then
      tail -n 20 "$log_dir/proc$failed.log" >&2 || true
    fi
    status=$rc
    break
  fi
done
exit "$status"
