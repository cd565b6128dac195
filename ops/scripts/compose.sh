#!/usr/bin/env bash
# The docker-compose cluster (ops/docker-compose.yml) from one command:
#   ops/scripts/compose.sh up        build the binaries and the image (if changed), start the
#                                    cluster, wait until every node is healthy, print how to use it
#                                    (up --no-build ARGS: docker-compose's own up, image as it is)
#   ops/scripts/compose.sh down      stop and remove the containers; the data volumes stay
#   ops/scripts/compose.sh destroy   the same, and delete the data volumes
#   ops/scripts/compose.sh wait [SECS [SERVICE...]]  wait until every node (or those) is healthy
#   ops/scripts/compose.sh ARGS...   any other docker-compose command, on this project
#                                    (ps, logs -f cffs2, exec client cffs ls /, kill cffs1, ...)
# Works with Debian's docker-compose (v1) and with the `docker compose` plugin. The project
# name is CFFS_COMPOSE_PROJECT (default cffs); the image is CFFS_IMAGE (default cffs:latest),
# built from release binaries (CFFS_IMAGE_PROFILE=debug for a debug build).
set -euo pipefail
cd "$(dirname "$0")/../.."
project="${CFFS_COMPOSE_PROJECT:-cffs}"
export CFFS_IMAGE="${CFFS_IMAGE:-cffs:latest}"
file=ops/docker-compose.yml
services=(cffs1 cffs2 cffs3 cffs4 cffs5 cffs6 client)

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -p "$project" -f "$file")
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose -p "$project" -f "$file")
else
  echo "compose.sh: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi

# Waits until every service's container (or those named after the limit) reports healthy;
# prints the time it took.
wait_healthy() {
  local limit="${1:-180}"
  shift || true
  local deadline=$((SECONDS + limit)) started=$SECONDS
  local wanted=("${services[@]}")
  [ $# -gt 0 ] && wanted=("$@")
  while :; do
    local pending=()
    for service in "${wanted[@]}"; do
      local id health
      id=$("${compose[@]}" ps -q "$service" 2>/dev/null || true)
      health=$( [ -n "$id" ] && docker inspect --format '{{ if .State.Health }}{{ .State.Health.Status }}{{ else }}{{ .State.Status }}{{ end }}' "$id" 2>/dev/null || echo missing)
      [ "$health" = healthy ] || pending+=("$service:$health")
    done
    if [ ${#pending[@]} -eq 0 ]; then
      echo "compose.sh: every node is healthy ($((SECONDS - started)) s)" >&2
      return 0
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "compose.sh: not healthy after $limit s: ${pending[*]}" >&2
      "${compose[@]}" ps >&2 || true
      return 1
    fi
    sleep 1
  done
}

case "${1:-}" in
  up)
    shift
    if [[ " $* " == *" --no-build "* ]]; then
      # A service (re)created from the image as it is: no build, no wait, no banner.
      exec "${compose[@]}" up "$@"
    fi
    ops/scripts/image.sh --profile "${CFFS_IMAGE_PROFILE:-release}" --tag "$CFFS_IMAGE" >/dev/null
    "${compose[@]}" up -d "$@"
    wait_healthy 180
    "${compose[@]}" exec -T client cffs cluster status || true
    map=""
    grpc="${CFFS_GRPC_PORT_PREFIX:-710}"
    cffs_bin="$(source ops/scripts/env.sh && echo "$CARGO_TARGET_DIR")/${CFFS_IMAGE_PROFILE:-release}/cffs"
    for i in 1 2 3 4 5 6; do map="${map:+$map,}cffs$i:7100=127.0.0.1:$grpc$i"; done
    cat <<EOT

CFFS cluster up (compose project '$project'). Inside the network:
  ops/scripts/compose.sh exec client cffs mkdir /hello
  ops/scripts/compose.sh exec client cffs ls -l /
From this host, through the published ports (cffs is at $cffs_bin):
  export CFFS_ENDPOINTS=127.0.0.1:${grpc}1,127.0.0.1:${grpc}2,127.0.0.1:${grpc}3
  export CFFS_ADDRESS_MAP=$map
  cffs ls -l /
Metrics and health: http://127.0.0.1:${CFFS_HTTP_PORT_PREFIX:-910}1/metrics ... 6, and /health
Stop: ops/scripts/compose.sh down (data kept) or destroy (data deleted).
EOT
    ;;
  down) shift; "${compose[@]}" down "$@" ;;
  destroy) shift; "${compose[@]}" down -v "$@" ;;
  wait) shift; wait_healthy "$@" ;;
  # Without a terminal on stdin (a script, a pipe, CI), no TTY is asked for.
  exec) shift; if [ -t 0 ]; then "${compose[@]}" exec "$@"; else "${compose[@]}" exec -T "$@"; fi ;;
  ""|-h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) "${compose[@]}" "$@" ;;
esac
