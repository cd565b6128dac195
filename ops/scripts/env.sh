# Sourced by the scripts: where builds go. CFFS_TARGET_DIR (default ~/.cache/cffs/target)
# sits outside the clone so that a fresh clone reuses an earlier build; the simulated
# (madsim) build has its own directory beside it, since its flags differ.
CFFS_TARGET_DIR="${CFFS_TARGET_DIR:-${HOME:-/tmp}/.cache/cffs/target}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CFFS_TARGET_DIR}"
CFFS_SIM_TARGET_DIR="${CFFS_SIM_TARGET_DIR:-$CARGO_TARGET_DIR/sim}"
mkdir -p "$CARGO_TARGET_DIR" "$CFFS_SIM_TARGET_DIR"
