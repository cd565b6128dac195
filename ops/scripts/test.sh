#!/usr/bin/env bash
# The test command (README, CI): formatting, unit and integration tests on the real build
# (RocksDB, real processes on loopback), then the deterministic simulations under madsim,
# including a same-seed determinism check. Progress goes to stderr; exit status 0 = all pass.
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/setup.sh
source ops/scripts/env.sh

# Fixed seeds: CI is reproducible; set MADSIM_TEST_SEED / CFFS_CHAOS_START to explore others.
export MADSIM_TEST_SEED="${MADSIM_TEST_SEED:-1}"
SIM_SEEDS="${CFFS_SIM_SEEDS:-20}"
CHAOS_SEEDS="${CFFS_CHAOS_SEEDS:-200}"
step() { printf '\n==> %s (%s)\n' "$1" "$(date +%T)" >&2; }

step "format check"
cargo fmt --all -- --check

step "tidy: every Rust file opens with a //! comment saying what it owns"
missing=$(git ls-files '*.rs' | while read -r file; do
  awk '!/^#!\[/ { print; exit }' "$file" | grep -q '^//!' || echo "$file"
done)
if [ -n "$missing" ]; then
  echo "these files do not open with //!:" >&2
  echo "$missing" >&2
  exit 1
fi

step "build and test (real build: RocksDB, loopback clusters)"
cargo test --workspace --locked

step "simulation: scenario tests, $SIM_SEEDS seeds each; chaos: $CHAOS_SEEDS seeds; planted bugs (madsim)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CFFS_SIM_TARGET_DIR" MADSIM_TEST_NUM="$SIM_SEEDS" \
  CFFS_CHAOS_SEEDS="$CHAOS_SEEDS" \
  cargo test --locked -p cffs-sim-tests -p cffs-server --lib --tests -- --nocapture 2>&1 \
  | grep -vE '^failover: |^killed leader '

step "simulation: determinism check (same seed twice)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CFFS_SIM_TARGET_DIR" MADSIM_TEST_CHECK_DETERMINISM=1 MADSIM_TEST_NUM=2 \
  cargo test --locked -p cffs-sim-tests --test counters --test snapshot --test membership --test leases

step "all tests passed"
