#!/usr/bin/env bash
# Start the SLHMC server and each worker as separate processes on this machine over loopback TCP,
# exactly as one would start them on separate machines (replace 127.0.0.1 with the server's host).
#
#   run_scripts/local.sh CONFIG OUT_DIR [N_DFT_WORKERS] [ADDRESS]
#
# Worker logs go to OUT_DIR/logs/; Ctrl-C stops everything (the checkpoint is current after
# every trial: continue with `slhmc server CONFIG --out OUT_DIR --resume` and the same workers).
set -euo pipefail
config=${1:?usage: $0 CONFIG OUT_DIR [N_DFT_WORKERS] [ADDRESS]}
out=${2:?usage: $0 CONFIG OUT_DIR [N_DFT_WORKERS] [ADDRESS]}
n_dft=${3:-1}
address=${4:-tcp://127.0.0.1:5555}
slhmc=${SLHMC:-slhmc}
command -v "$slhmc" >/dev/null || slhmc="$(dirname "$0")/../.venv/bin/slhmc"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out/logs"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$slhmc" server "$config" --out "$out" --bind "$address" &
server=$!
"$slhmc" worker mlmd --connect "$address" --name mlmd-0 >"$out/logs/mlmd-0.log" 2>&1 & pids+=($!)
"$slhmc" worker trainer --connect "$address" --name trainer-0 >"$out/logs/trainer-0.log" 2>&1 & pids+=($!)
for ((k = 0; k < n_dft; k++)); do
  "$slhmc" worker dft --connect "$address" --name "dft-$k" >"$out/logs/dft-$k.log" 2>&1 & pids+=($!)
done
wait "$server"
