#!/usr/bin/env bash
# Prints, every INTERVAL seconds until stopped, the time and the resident memory (MiB) of
# every process named NAME, summed per name and for the largest one, from /proc. For
# watching memory through a long benchmark, e.g. beside `ops/scripts/bench-peer.sh`:
#
#   ops/scripts/rss-sample.sh 30 cffs-server etcd > rss.tsv &
#
# Output: one tab-separated line per sample and name: seconds since start, name, processes,
# total MiB, largest MiB.
set -euo pipefail
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -eq 0 ]; then
  echo "usage: $0 INTERVAL_SECONDS NAME [NAME ...]" >&2
  exit 2
fi
interval=$1
shift
start=$(date +%s)
printf 'seconds\tname\tprocesses\ttotal_mib\tlargest_mib\n'
while true; do
  now=$(( $(date +%s) - start ))
  for name in "$@"; do
    count=0 total=0 largest=0
    for dir in /proc/[0-9]*; do
      [ "$(cat "$dir/comm" 2>/dev/null)" = "$name" ] || continue
      kib=$(awk '/^VmRSS:/ { print $2 }' "$dir/status" 2>/dev/null || true)
      [ -n "$kib" ] || continue
      count=$((count + 1))
      total=$((total + kib))
      [ "$kib" -gt "$largest" ] && largest=$kib
    done
    printf '%s\t%s\t%s\t%s\t%s\n' "$now" "$name" "$count" $((total / 1024)) $((largest / 1024))
  done
  sleep "$interval"
done
