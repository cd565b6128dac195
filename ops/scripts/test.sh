#!/usr/bin/env bash
# The test command (README, CI): formatting, clippy, unit and integration tests on the real build
# (RocksDB, real processes on loopback), then the deterministic simulations under madsim,
# including a same-seed determinism check. Progress goes to stderr; exit status 0 = all pass.
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/setup.sh
source ops/scripts/env.sh

# Fixed seeds: CI is reproducible; set MADSIM_TEST_SEED / CFFS_CHAOS_START to explore others.
export MADSIM_TEST_SEED="${MADSIM_TEST_SEED:-1}"
SIM_SEEDS="${CFFS_SIM_SEEDS:-20}"
CHAOS_SEEDS="${CFFS_CHAOS_SEEDS:-2000}"
DETERMINISM_SEEDS="${CFFS_DETERMINISM_SEEDS:-4}"
step() { printf '\n==> %s (%s)\n' "$1" "$(date +%T)" >&2; }

# The mount tests run real programs on a FUSE mount: what they need, from Debian's packages.
# (They say "skipped" where the machine cannot mount: no /dev/fuse, or not root.)
tools=()
for tool in sqlite3 git tar diff unshare; do
  command -v "$tool" >/dev/null 2>&1 || tools+=("$tool")
done
if [ ${#tools[@]} -gt 0 ]; then
  packages=()
  for tool in "${tools[@]}"; do
    case "$tool" in diff) packages+=(diffutils) ;; unshare) packages+=(util-linux) ;; *) packages+=("$tool") ;; esac
  done
  ops/scripts/apt-install.sh "${packages[@]}"
fi

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

step "clippy (warnings are errors; clippy.toml bans what madsim cannot replace)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build and test (real build: RocksDB, loopback clusters)"
cargo test --workspace --locked

step "containers: the compose cluster under chaos (ops/scripts/chaos.sh; skipped without a Docker engine)"
# The image is built from the debug binaries the tests just built: no second (release) build
# of RocksDB. Its timings are the debug build's.
CFFS_IMAGE_PROFILE="${CFFS_IMAGE_PROFILE:-debug}" CFFS_IMAGE="${CFFS_IMAGE:-cffs:test}" ops/scripts/chaos.sh

step "simulation: the chaos runner, release build (madsim; seeds run several times faster than in debug)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CFFS_SIM_TARGET_DIR" \
  cargo build --release --locked -p cffs-sim-tests --bin cffs-sim
# The chaos and planted-bug tests launch their seeds with this binary.
export CFFS_SIM_EXE="$CFFS_SIM_TARGET_DIR/release/cffs-sim"

step "simulation: scenario tests, $SIM_SEEDS seeds each; chaos regression seeds; planted bugs, 50 seeds each (madsim)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CFFS_SIM_TARGET_DIR" MADSIM_TEST_NUM="$SIM_SEEDS" \
  CFFS_CHAOS_SEEDS=20 \
  cargo test --locked -p cffs-sim-tests -p cffs-server --lib --tests -- --nocapture 2>&1 \
  | grep -vE '^failover: |^killed leader '

step "simulation: $CHAOS_SEEDS chaos seeds (every seed in a process of its own; fails on any checker)"
"$CFFS_SIM_EXE" --seeds "$CHAOS_SEEDS" --start 1

step "simulation: determinism of $DETERMINISM_SEEDS chaos seeds, on a digest of the whole event trace"
# 4494: a regression seed; 30002: skewed replica clocks, replacements and client faults at once.
for seed in $(seq 1 "$DETERMINISM_SEEDS") 4494 30002; do
  "$CFFS_SIM_EXE" --seed "$seed" --check-determinism
done

step "simulation: determinism of the scenario tests (the same seeds twice, in separate processes; outputs must match)"
# Two runs in one process do not replay the same (openraft's unbiased select! draws from
# tokio's thread RNG, seeded from a process-wide counter), so MADSIM_TEST_CHECK_DETERMINISM
# cannot be used; each run here is a process of its own, as a replay is. The chaos test checks
# its seeds the same way (cffs-sim --check-determinism).
sim_run() {
  RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CFFS_SIM_TARGET_DIR" MADSIM_TEST_NUM=3 \
    cargo test --locked -q -p cffs-sim-tests --test counters --test snapshot --test membership \
      --test leases -- --nocapture --test-threads 1 2>&1 | grep -vE 'finished in|^\s*Running|^$'
}
first=$(sim_run)
second=$(sim_run)
if [ "$first" != "$second" ]; then
  echo "the same seeds gave different outputs:" >&2
  diff <(echo "$first") <(echo "$second") >&2 || true
  exit 1
fi
echo "$(echo "$first" | grep -c .) lines of output identical across two runs" >&2

step "all tests passed"
