#!/usr/bin/env bash
# CFFS beside etcd, in one run on this machine: builds the release binaries, installs Debian's
# etcd-server when etcd is missing, starts a three-member etcd cluster (fsync on, as etcd
# always does) and a CFFS dev cluster on loopback, both with data under one scratch directory
# on the same disk, then runs `cffs bench --peer etcd` (creates and read-modify-writes at 1,
# 16, 64 and 256 clients; extra arguments go to cffs bench, e.g. --clients 16 --duration 10).
# Both clusters are stopped and their data removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/setup.sh
source ops/scripts/env.sh

if ! command -v etcd >/dev/null; then
  echo "bench-peer: installing etcd-server (Debian) ..." >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y -q etcd-server >/dev/null || {
    $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q etcd-server >/dev/null
  }
  # The package starts a single-member etcd of its own on the default ports; this run uses
  # other ports and leaves that service alone.
fi

echo "bench-peer: building cffs-server and cffs (release) ..." >&2
cargo build --release --locked -p cffs-server -p cffs-fuse --bins
bin="$CARGO_TARGET_DIR/release"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/cffs-bench-peer.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT

cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for n in 1 2 3; do
  etcd --name "e$n" --data-dir "$scratch/etcd-$n" \
    --listen-client-urls "http://127.0.0.1:2379$n" --advertise-client-urls "http://127.0.0.1:2379$n" \
    --listen-peer-urls "http://127.0.0.1:2380$n" --initial-advertise-peer-urls "http://127.0.0.1:2380$n" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token cffs-bench-peer \
    --log-level warn >"$scratch/etcd-$n.log" 2>&1 &
  pids+=($!)
done

"$bin/cffs-server" dev --data-dir "$scratch/cffs" >"$scratch/cffs.log" 2>&1 &
pids+=($!)

export CFFS_ENDPOINTS="${CFFS_ENDPOINTS:-127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103}"
echo "bench-peer: waiting for both clusters ..." >&2
# The dev cluster prints its banner once it has a leader and its block groups; cffs bench
# waits for etcd's leader itself.
for _ in $(seq 1 300); do
  if grep -q "CFFS dev cluster" "$scratch/cffs.log"; then break; fi
  sleep 0.2
done
grep -q "CFFS dev cluster" "$scratch/cffs.log" || {
  echo "bench-peer: the CFFS dev cluster did not start within 60 s; its log:" >&2
  tail -20 "$scratch/cffs.log" >&2
  exit 1
}

"$bin/cffs" bench --peer etcd --clients 1,16,64,256 "$@"
