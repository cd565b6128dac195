#!/usr/bin/env bash
# Installs what building CFFS needs beyond the Rust toolchain: libclang (bindgen, for the
# bundled RocksDB). protoc is not needed: the build uses a vendored one. Idempotent.
set -euo pipefail

need_apt=()
# bindgen needs libclang itself (libclang.so or libclang-N.so), not libclang-cpp, which
# some images carry alone.
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 \
  && ! ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so'; then
  need_apt+=(libclang-dev)
fi
if ! command -v g++ >/dev/null 2>&1; then
  need_apt+=(g++)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  "$(dirname "$0")/apt-install.sh" "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install the Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
# The test command checks formatting and runs clippy: both come with rustup's default
# profile, but not with every toolchain install.
if ! cargo fmt --version >/dev/null 2>&1; then
  echo "setup: installing rustfmt (rustup component)" >&2
  rustup component add rustfmt
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  echo "setup: installing clippy (rustup component)" >&2
  rustup component add clippy
fi
