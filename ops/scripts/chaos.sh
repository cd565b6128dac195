#!/usr/bin/env bash
# Chaos on real containers: the compose cluster (its own project, cffschaos, on ports 720N and
# 920N) under a list-append workload that checks its own results (`cffs workload append`:
# every acknowledged commit recorded, every list checked at the end), through these faults:
#   1. docker kill the metadata leader        4. restart every node, one by one
#   2. cut the leader off the network         5. replace a block server with an empty one
#   3. pause the leader past its lease        6. replace a node (both roles) with an empty one
#                                             7. kill a block server during a 200 MB write
# After each: the cluster must take a commit again within RECOVERY_BOUND_SECS (the time from
# the fault to the first probe commit that succeeds is measured and printed; a probe is one
# `docker exec` of `cffs write`, and what one costs on the healthy cluster is measured and
# printed first). At the end: the workload's check
# (no acknowledged append lost), the large file's sha256 read back, and `cffs fsck` (every
# file read, every block's crc32 checked). Skips (exit 0) when no Docker engine answers.
#   ops/scripts/chaos.sh            (CFFS_IMAGE_PROFILE=debug builds the image from debug binaries)
# Logs and the summary go to CFFS_CHAOS_LOGS (default: a temporary directory, printed).
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
if ! docker info >/dev/null 2>&1; then
  echo "chaos: skipped: no Docker engine answers (docker info failed)" >&2
  exit 0
fi
# What the script itself runs beside Docker: a compose tool (compose.sh), python3 (reading
# `cffs -o json` output), busybox-static (image.sh installs it).
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  need+=(docker-compose)
fi
ops/scripts/apt-install.sh "${need[@]+"${need[@]}"}"
export CFFS_COMPOSE_PROJECT="${CFFS_CHAOS_PROJECT:-cffschaos}"
export CFFS_GRPC_PORT_PREFIX="${CFFS_CHAOS_GRPC_PORT_PREFIX:-720}" CFFS_HTTP_PORT_PREFIX="${CFFS_CHAOS_HTTP_PORT_PREFIX:-920}"
export CFFS_IMAGE="${CFFS_IMAGE:-cffs:latest}"
RECOVERY_BOUND_SECS="${RECOVERY_BOUND_SECS:-30}"
# Default leases last 250 ms: a 3 s pause outlasts a dozen of them, and the election timeout.
PAUSE_SECS=3
logs="${CFFS_CHAOS_LOGS:-$(mktemp -d /tmp/cffs-chaos.XXXXXX)}"
mkdir -p "$logs"
network="${CFFS_COMPOSE_PROJECT}_cffs"
# Step 6's new replica runs outside the compose file (it is no service of the cluster's).
extra="${CFFS_COMPOSE_PROJECT}_cffs7"
c() { ops/scripts/compose.sh "$@"; }
# Commands in the client container go through `docker exec` on its id, not `docker-compose
# exec`: compose v1 spends about a second starting up, which every probe would count.
client_id=""
in_client() { docker exec "$client_id" "$@"; }
# The same with this script's stdin passed on (a probe's bytes).
in_client_stdin() { docker exec -i "$client_id" "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
summary="$logs/summary.txt"
: > "$summary"
report() { echo "chaos: $*" | tee -a "$summary" >&2; }
fail() { report "FAILED: $*"; exit 1; }

cleanup() {
  c logs --no-color > "$logs/compose.log" 2>&1 || true
  docker logs "$extra" > "$logs/cffs7.log" 2>&1 || true
  docker rm -f "$extra" >/dev/null 2>&1 || true
  docker volume rm "$extra-data" >/dev/null 2>&1 || true
  c destroy >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'report "FAILED: line $LINENO exited with status $?: $BASH_COMMAND"' ERR

echo "chaos: logs in $logs" >&2
c destroy >/dev/null 2>&1 || true
c up > "$logs/up.log" 2>&1 || { cat "$logs/up.log" >&2; fail "the cluster did not come up"; }

# The leader's replica id, as the replicas say (`cffs cluster status`). (Not through /health
# with the image's wget: a static busybox cannot resolve names.)
leader() {
  local id
  for _ in $(seq 1 50); do
    id=$(in_client cffs -o json cluster status 2>/dev/null | python3 -c '
import json, sys
try:
    print(next(s["node_id"] for s in json.load(sys.stdin) if s.get("state") == "Leader"))
except Exception:
    pass' || true)
    if [ -n "$id" ]; then echo "$id"; return 0; fi
    sleep 0.2
  done
  fail "no replica knows a leader"
}
probe_n=0
# Seconds from $1 (a `now`) until a probe commit succeeds; fails past the bound.
recovered() {
  local started="$1" what="$2"
  while :; do
    probe_n=$((probe_n + 1))
    if echo "$probe_n" | in_client_stdin cffs write "/probe-$probe_n" >/dev/null 2>&1; then
      local took; took=$(since "$started")
      report "$what: a commit succeeded $took s after the fault"
      awk -v t="$took" -v b="$RECOVERY_BOUND_SECS" 'BEGIN { exit !(t <= b) }' \
        || fail "$what: no commit within $RECOVERY_BOUND_SECS s"
      return 0
    fi
    awk -v t="$(since "$started")" -v b="$RECOVERY_BOUND_SECS" 'BEGIN { exit !(t <= b) }' \
      || fail "$what: no commit within $RECOVERY_BOUND_SECS s"
    sleep 0.2
  done
}
container() { c ps -q "$1"; }

client_id=$(c ps -q client)
[ -n "$client_id" ] || fail "no client container"
in_client cffs mkdir -p /chaos
t=$(now)
echo 0 | in_client_stdin cffs write /probe-0 >/dev/null
report "0. a probe commit on the healthy cluster takes $(since "$t") s"
in_client sh -c 'rm -f /tmp/stop-workload'
in_client cffs workload append --clients 4 --keys 8 --duration-secs 3600 --stop-file /tmp/stop-workload \
  > "$logs/workload.log" 2>&1 &
workload=$!
sleep 3

# 1. Kill the leader.
# (Each fault acts on the container through docker itself, its id looked up first: the clock
# starts as the fault does, not a compose start-up earlier.)
l=$(leader); id=$(container "cffs$l"); t=$(now)
docker kill "$id" >/dev/null
recovered "$t" "1. leader (cffs$l) killed"
c start "cffs$l" >/dev/null 2>&1; c wait 120 >/dev/null

# 2. Cut the leader off the network, then reconnect it under its name.
l=$(leader); id=$(container "cffs$l"); t=$(now)
docker network disconnect "$network" "$id"
recovered "$t" "2. leader (cffs$l) cut off the network"
sleep 2
docker network connect --alias "cffs$l" "$network" "$id"
c wait 120 >/dev/null

# 3. Pause the leader past its leases: when it wakes, its leases and leadership are gone, and
# nothing it says may be believed.
l=$(leader); id=$(container "cffs$l"); t=$(now)
docker pause "$id" >/dev/null
recovered "$t" "3. leader (cffs$l) paused"
sleep "$PAUSE_SECS"
docker unpause "$id" >/dev/null
c wait 120 >/dev/null

# 4. Restart every node, one by one.
for i in 1 2 3 4 5 6; do
  id=$(container "cffs$i"); t=$(now)
  docker restart "$id" >/dev/null
  recovered "$t" "4. cffs$i restarted"
  c wait 120 >/dev/null
done

# 5. Replace block server cffs6 with an empty one (same id, its volume deleted): reads come
# from the other two copies; the scrubber refills it.
id=$(container cffs6); t=$(now)
docker rm -f "$id" >/dev/null
docker volume rm "${CFFS_COMPOSE_PROJECT}_cffs6-data" >/dev/null
c up --no-build -d --no-deps cffs6 >/dev/null 2>&1
recovered "$t" "5. block server cffs6 replaced by an empty one"
c wait 120 >/dev/null

# 6. Replace node cffs3 (metadata replica 3 and block server 3 of group 1) by an empty one,
# node 7 (a disk lost for good): cffs3 stops, node 7 starts empty with both roles, joins as a
# learner, catches up, and one change of voters swaps 3 for 7; then block group 1's member 3
# is swapped for 7 in the cluster map and the scrubber refills 7 from 1 and 2 (one
# `cffs cluster replace-node` does both). cffs3 then comes back with its volume wiped: in no
# group any more (it never bootstraps: it is not the lowest id).
id=$(container cffs3); t=$(now)
docker kill "$id" >/dev/null
docker run -d --name "$extra" --hostname cffs7 --network "$network" --network-alias cffs7 \
  -v "$extra-data:/data" "$CFFS_IMAGE" cffs-server meta --id 7 --listen 0.0.0.0:7100 \
  --peers 1=cffs1:7100,2=cffs2:7100,3=cffs3:7100,7=cffs7:7100 --data-dir /data/meta \
  --block-dir /data/blocks --scrub-pause-secs 60 >/dev/null
# replace-node checks that replica 7 answers before it changes anything: retried while the
# new container is still starting, and only for that.
for attempt in $(seq 1 60); do
  if in_client cffs cluster replace-node 3 7 cffs7:7100 > "$logs/replace-node.log" 2>&1; then break; fi
  if ! grep -q "does not answer" "$logs/replace-node.log" || [ "$attempt" = 60 ]; then
    cat "$logs/replace-node.log" >&2
    fail "6. replace-node 3 7 failed"
  fi
  sleep 0.5
done
report "6. metadata replica 3 replaced by an empty replica 7: voters changed $(since "$t") s after cffs3 was killed"
recovered "$t" "6. metadata replica 3 replaced by an empty one"
c rm -f -s cffs3 >/dev/null 2>&1
docker volume rm "${CFFS_COMPOSE_PROJECT}_cffs3-data" >/dev/null
c up --no-build -d --no-deps cffs3 >/dev/null 2>&1
voters=$(in_client cffs -o json cluster status | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s.get("state") == "Leader":
        print(",".join(str(m["id"]) for m in s["members"] if m["voter"]))')
[ "$voters" = "1,2,7" ] || fail "6. the voters are '$voters', not 1,2,7"
# Block group 1 is 1, 2, 7, and its refill of 7 ends (the scrubber's pass after the change).
for attempt in $(seq 1 "$RECOVERY_BOUND_SECS"); do
  group1=$(in_client cffs -o json cluster blocks | python3 -c '
import json, sys
g = json.load(sys.stdin)["groups"][0]
print(",".join(str(m["id"]) for m in g["members"]), "refilling" if g.get("refilling") else "refilled")')
  [ "$group1" = "1,2,7 refilled" ] && break
  [ "$attempt" = "$RECOVERY_BOUND_SECS" ] && fail "6. block group 1 is '$group1', not '1,2,7 refilled'"
  sleep 1
done
report "6. block group 1: server 3 replaced by 7, refilled $(since "$t") s after cffs3 was killed"

# 7. Kill a block server during a large write: two copies of each block are enough.
in_client sh -c 'head -c 200000000 /dev/urandom > /tmp/big && sha256sum < /tmp/big > /tmp/big.sha256'
in_client cffs put --quiet /tmp/big /big > "$logs/put.log" 2>&1 &
put=$!
sleep 2
id=$(container cffs5); t=$(now)
docker kill "$id" >/dev/null
wait "$put" || { cat "$logs/put.log" >&2; fail "7. the 200 MB put failed after cffs5 was killed"; }
report "7. block server cffs5 killed during a 200 MB write: the write completed $(since "$t") s after the kill"
got=$(in_client sh -c 'cffs get --quiet /big - | sha256sum')
want=$(in_client cat /tmp/big.sha256)
[ "$got" = "$want" ] || fail "7. the large file read back differs (sha256 $got, written $want)"
report "7. the 200 MB file reads back identical (sha256 ${got%% *})"
# (cffs3 is no replica now: unhealthy by design, so only cffs5 is waited for.)
c start cffs5 >/dev/null 2>&1; c wait 120 cffs5 >/dev/null

# The end: the workload's own check, then fsck.
in_client touch /tmp/stop-workload
if ! wait "$workload"; then
  tail -30 "$logs/workload.log" >&2
  fail "the workload's check failed"
fi
report "$(grep '^workload: [0-9]* acknowledged' "$logs/workload.log")"
grep -q '^workload: check passed' "$logs/workload.log" || fail "the workload did not report its check"
fsck=$(in_client cffs fsck /) || { echo "$fsck" >&2; fail "fsck found problems"; }
report "$fsck"
report "passed"
