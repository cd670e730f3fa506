#!/usr/bin/env bash
# Makes sure a container engine is there for `make images` and the `images` tests: nothing to do when docker or
# podman works; on Debian/Ubuntu as root (CI machines) installs podman with runc, and debootstrap for the
# stand-in base image (images/build.sh). Elsewhere it says what to install.
set -euo pipefail
if "$(dirname "$0")/engine.sh" --name >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "install-engine.sh: installing podman, buildah, runc and debootstrap" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null
else
  echo "install-engine.sh: the images tests and \`make images\` need podman or a running Docker daemon;" \
       "install podman (e.g. apt-get install podman buildah runc debootstrap) or start Docker" >&2
  exit 1
fi
