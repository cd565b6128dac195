#!/usr/bin/env bash
# The run command (README): builds cffs-server and cffs, then starts a local cluster on
# loopback (three metadata replicas that are also block group 1, three block servers as
# group 2) with data under ./cffs-data. Ctrl-C stops it; run again to restart it
# with its data. Extra arguments go to `cffs-server dev`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/setup.sh
source ops/scripts/env.sh
echo "building cffs-server and cffs (the first build compiles RocksDB: tens of minutes on 2 cores) ..." >&2
cargo build --release --locked -p cffs-server -p cffs-fuse --bins
mkdir -p bin
ln -sf "$CARGO_TARGET_DIR/release/cffs" bin/cffs
ln -sf "$CARGO_TARGET_DIR/release/cffs-server" bin/cffs-server
echo "binaries: ./bin/cffs-server and ./bin/cffs (add $(pwd)/bin to PATH)" >&2
exec "$CARGO_TARGET_DIR/release/cffs-server" dev "$@"
