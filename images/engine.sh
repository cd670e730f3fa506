#!/usr/bin/env bash
# Runs one container-engine command with the project's engine: $ENGINE if set, else docker when a Docker daemon
# answers, else podman. Podman gets images/podman/containers.conf unless CONTAINERS_CONF is already set.
#   images/engine.sh build ... | run ... | image inspect ...    images/engine.sh --name prints the engine
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if [[ -z "${ENGINE:-}" ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null; then
    ENGINE=podman
  else
    echo "images/engine.sh: no container engine: install podman (Debian/Ubuntu: apt-get install podman" \
         "buildah runc) or start Docker" >&2
    exit 127
  fi
fi
if [[ "$ENGINE" == podman ]]; then
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/podman/containers.conf}"
fi
if [[ "${1:-}" == --name ]]; then
  echo "$ENGINE"
  exit 0
fi
exec "$ENGINE" "$@"
