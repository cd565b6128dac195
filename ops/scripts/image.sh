#!/usr/bin/env bash
# Builds the CFFS image (ops/Dockerfile, FROM scratch) from this checkout's binaries:
#   ops/scripts/image.sh [--profile release|debug] [--tag NAME]
# Builds cffs-server and cffs first (cargo, in the shared target dir), stages a root
# filesystem of the binaries, the shared libraries they load and a static busybox (Debian's
# busybox-static, installed when missing), and builds the image only when that content
# changed (a digest of it is the image's label cffs.content). Prints the image's tag.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=release
tag=cffs:latest
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in release|debug) ;; *) echo "image.sh: --profile is release or debug" >&2; exit 2 ;; esac
command -v docker >/dev/null || { echo "image.sh: docker is not installed" >&2; exit 1; }

ops/scripts/setup.sh
source ops/scripts/env.sh
# The image's shell and tools: a static busybox (Debian's busybox-static owns /bin/busybox).
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  ops/scripts/apt-install.sh busybox-static
fi

cargo_flags=(--locked -p cffs-server -p cffs-fuse --bins)
[ "$profile" = release ] && cargo_flags+=(--release)
echo "image.sh: building cffs-server and cffs ($profile)" >&2
cargo build "${cargo_flags[@]}"
bin_dir="$CARGO_TARGET_DIR/$profile"

context="$CARGO_TARGET_DIR/image-$profile"
rm -rf "$context"
mkdir -p "$context/rootfs/usr/local/bin" "$context/rootfs/bin" "$context/rootfs/etc" "$context/rootfs/data"
install -d -m 1777 "$context/rootfs/tmp"
for exe in cffs-server cffs; do
  cp "$bin_dir/$exe" "$context/rootfs/usr/local/bin/$exe"
  strip "$context/rootfs/usr/local/bin/$exe" 2>/dev/null || true
  # Every library the dynamic loader resolves, and the loader itself, at its own path.
  ldd "$bin_dir/$exe" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
    mkdir -p "$context/rootfs$(dirname "$lib")"
    cp -L "$lib" "$context/rootfs$lib"
  done
done
cp /bin/busybox "$context/rootfs/bin/busybox"
for tool in sh ls cat wget sleep ps kill mkdir rm du df grep sed head tail touch sha256sum hostname nc top env date; do
  ln -s busybox "$context/rootfs/bin/$tool"
done
printf 'hosts: files dns\n' > "$context/rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/data:/bin/sh\n' > "$context/rootfs/etc/passwd"
cp ops/Dockerfile "$context/Dockerfile"

digest=$( (cd "$context" && find . -type f -o -type l | LC_ALL=C sort | xargs sha256sum 2>/dev/null; \
  find . -type l -exec readlink {} \;) | sha256sum | cut -c1-16)
current=$(docker image inspect "$tag" --format '{{ index .Config.Labels "cffs.content" }}' 2>/dev/null || true)
if [ "$current" = "$digest" ]; then
  echo "image.sh: $tag is up to date (content $digest)" >&2
else
  echo "image.sh: building $tag (content $digest)" >&2
  docker build -q --label "cffs.content=$digest" -t "$tag" "$context" >/dev/null
fi
size=$(docker image inspect "$tag" --format '{{ .Size }}')
echo "image.sh: $tag, $((size / 1024 / 1024)) MiB" >&2
echo "$tag"
