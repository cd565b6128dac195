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

step "tidy: every Rust file opens with a //! comment saying what it owns"
missing=$(git ls-files '*.rs' | while read -r file; do
  grep -v '^#!\[' "$file" | head -1 | grep -q '^//!' || echo "$file"
done)
if [ -n "$missing" ]; then
  echo "these files do not open with //!:" >&2
  echo "$missing" >&2
  exit 1
fi

step "build and test (real build: RocksDB, loopback clusters)"
cargo test --workspace --locked

step "simulation: $SIM_SEEDS seeds (madsim, target $CFFS_SIM_TARGET_DIR)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CFFS_SIM_TARGET_DIR" MADSIM_TEST_NUM="$SIM_SEEDS" \
  cargo test --locked -p cffs-sim-tests -p cffs-server --lib --tests

step "simulation: determinism check (same seed twice)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CFFS_SIM_TARGET_DIR" MADSIM_TEST_CHECK_DETERMINISM=1 MADSIM_TEST_NUM=2 \
  cargo test --locked -p cffs-sim-tests

step "all tests passed"
