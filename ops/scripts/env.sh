# Sourced by the scripts: where builds go. CFFS_TARGET_DIR (default ~/.cache/cffs/target)
# sits outside the clone so that a fresh clone reuses an earlier build; the simulated
# (madsim) build has its own directory beside it, since its flags differ.
CFFS_TARGET_DIR="${CFFS_TARGET_DIR:-${HOME:-/tmp}/.cache/cffs/target}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CFFS_TARGET_DIR}"
CFFS_SIM_TARGET_DIR="${CFFS_SIM_TARGET_DIR:-$CARGO_TARGET_DIR/sim}"
mkdir -p "$CARGO_TARGET_DIR" "$CFFS_SIM_TARGET_DIR"
# Non-incremental: the test builds gain little from it, and rustc 1.95's incremental cache
# has crashed here on an edit (an ICE in evaluate_obligation, cured only by a clean); a warm
# cache must never fail a run that a cold one passes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
