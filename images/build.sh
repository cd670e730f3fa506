#!/usr/bin/env bash
# Builds images/<name>/Dockerfile as catsdogs-<name>:$TAG (default latest) with podman or docker (images/engine.sh).
#   images/build.sh [components|trainer|serving ...]     (default: all three)
# The base images named by the Dockerfiles' ARG defaults are used when present or pullable. Where no registry can
# be reached (CI machines, sandboxes), local stand-ins from images/standin/ are built once and passed as build
# arguments instead, so the Dockerfiles stay the ones Cloud Build uses. Needs root and debootstrap for that.
set -euo pipefail
shopt -s inherit_errexit  # a failing stand-in build inside $(...) stops the script
cd "$(dirname "$0")/.."
engine=images/engine.sh
tag="${TAG:-latest}"
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(components trainer serving)

PYTHON_STANDIN=localhost/catsdogs-python-standin:3.11-bookworm
BEAM_STANDIN=localhost/catsdogs-beam-standin:placeholder

arg_default() {  # arg_default DOCKERFILE NAME: the default value of `ARG NAME=...`
  sed -n "s/^ARG $2=//p" "$1" | head -n 1
}

have() {
  $engine image inspect "$1" >/dev/null 2>&1
}

debian_mirror() {  # the Debian mirror apt already uses here
  grep -h -o -E 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
    | head -n 1 | tr -d ' ' || true
}

build_python_standin() {
  local dir mirror
  command -v debootstrap >/dev/null || { echo "build.sh: no registry and no debootstrap to make a base" >&2; exit 1; }
  mirror="$(debian_mirror)"
  dir="$(mktemp -d)"
  echo "build.sh: no registry; building $PYTHON_STANDIN from Debian bookworm (${mirror:-default mirror})" >&2
  debootstrap --variant=minbase bookworm "$dir/rootfs" ${mirror:+"$mirror"} >/dev/null
  tar -C "$dir/rootfs" -c . | $engine import - localhost/catsdogs-debian:bookworm >/dev/null
  cp /etc/ssl/certs/ca-certificates.crt "$dir/"
  $engine build --quiet -f images/standin/python.Dockerfile -t "$PYTHON_STANDIN" "$dir" >/dev/null
  rm -rf "$dir"
}

build_beam_standin() {
  echo "build.sh: no registry; $BEAM_STANDIN has no Beam boot program: this components image is not for Dataflow" >&2
  $engine build --quiet -f images/standin/beam.Dockerfile -t "$BEAM_STANDIN" images/standin >/dev/null
}

base_arg() {  # base_arg DOCKERFILE ARG STANDIN BUILDER: a --build-arg for the stand-in if the default is unavailable
  local image
  image="$(arg_default "$1" "$2")"
  if [[ -z "$image" ]] || have "$image"; then return; fi
  if ! have "$3" && ! $engine pull --quiet "$image" >/dev/null 2>&1; then "$4"; fi
  if ! have "$image"; then echo "--build-arg=$2=$3"; fi
}

for name in "${names[@]}"; do
  file="images/$name/Dockerfile"
  [[ -f "$file" ]] || { echo "build.sh: no $file" >&2; exit 2; }
  python_arg="$(base_arg "$file" PYTHON_IMAGE "$PYTHON_STANDIN" build_python_standin)"
  beam_arg="$(base_arg "$file" BEAM_IMAGE "$BEAM_STANDIN" build_beam_standin)"
  args=()
  for arg in "$python_arg" "$beam_arg"; do
    [[ -z "$arg" ]] || args+=("$arg")
  done
  start=$SECONDS
  $engine build "${args[@]}" -f "$file" -t "catsdogs-$name:$tag" .
  size=$($engine image inspect --format '{{.Size}}' "catsdogs-$name:$tag")
  echo "build.sh: catsdogs-$name:$tag built in $((SECONDS - start)) s, $((size / 1000000)) MB" >&2
done
