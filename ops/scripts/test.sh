#!/usr/bin/env bash
# The test command (README, CI): formatting, unit and integration tests on the real build
# (RocksDB, real processes on loopback), then the deterministic simulations under madsim,
# including a same-seed determinism check. Progress goes to stderr; exit status 0 = all pass.
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/setup.sh
source ops/scripts/env.sh

SIM_SEEDS="${CFFS_SIM_SEEDS:-20}"
step() { printf '\n==> %s (%s)\n' "$1" "$(date +%T)" >&2; }

step "format check"
cargo fmt --all -- --check

step "build and test (real build: RocksDB, loopback clusters)"
cargo test --workspace --locked

step "simulation: $SIM_SEEDS seeds (madsim, target $CFFS_SIM_TARGET_DIR)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CFFS_SIM_TARGET_DIR" MADSIM_TEST_NUM="$SIM_SEEDS" \
  cargo test --locked -p cffs-sim-tests -p cffs-server --lib --tests

step "simulation: determinism check (same seed twice)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CFFS_SIM_TARGET_DIR" MADSIM_TEST_CHECK_DETERMINISM=1 MADSIM_TEST_NUM=2 \
  cargo test --locked -p cffs-sim-tests

step "all tests passed"
