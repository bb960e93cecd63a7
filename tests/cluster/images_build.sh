#!/usr/bin/env bash
# Build the operator and filter images from images/ with podman, without a registry.
#
# Why this exists: no base image can be pulled here, so the Dockerfiles' FROM image
# (python:3.11.14-slim-bookworm) is made locally: a Debian bookworm minbase rootfs with
# Debian's Python 3.11 (and python-is-python3, venv), imported under the FROM name. Then the
# project images are built from the repository root with runc and the overlay driver (crun
# does not work on this machine) and saved as OCI archives, which a later run (or
# `ctr images import`) loads instead of rebuilding. Caches, keyed by content hash:
#   ~/.cache/palimpsest/images-base-<hash of this script's base section>/base.tar
#   ~/.cache/palimpsest/images-<hash of the image inputs>/<image>.tar
# Build times go to ~/.cache/palimpsest/build-times.log.
#
# The rewrite image's CPU flavour, `rewrite-cpu` (tests only: there is no GPU here), is
# images/rewrite/Dockerfile built on a local base holding the CPU build of vLLM
# (tests/cluster/vllm-cpu-base.Containerfile, from tests/vllm/build_env.sh's env) instead of
# vllm/vllm-openai. That base is ~6 GB, so it stays in podman's store, tagged with the hash
# of its inputs, and is made once; only older archives of the flavour are removed.
#
# Usage: tests/cluster/images_build.sh [image ...]   (default: operator filter)
#        tests/cluster/images_build.sh --print-podman   (the podman command line it uses)
# Environment: PALIMPSEST_CACHE (default ~/.cache/palimpsest), DEBIAN_MIRROR, HOST_CA_BUNDLE
# (the CA bundle pip trusts during builds; default the host's).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${PALIMPSEST_CACHE:-$HOME/.cache/palimpsest}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_CA="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
BASE_NAME="docker.io/library/python:3.11.14-slim-bookworm"
VLLM_CPU_BASE="localhost/palimpsest/vllm-cpu-base"
BASE_PACKAGES="python3,python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,python-is-python3,ca-certificates"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1)"
# A storage of the project's own: the machine's default one may use another driver.
PODMAN=(podman --runtime /usr/sbin/runc --storage-driver overlay
  --root "$CACHE/podman/storage" --runroot "$CACHE/podman/run")
if [ "${1:-}" = --print-podman ]; then printf '%s\n' "${PODMAN[@]}"; exit 0; fi
IMAGES=("$@")
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(operator filter)

log_time() { echo "$(date -u +%FT%TZ) image $1 $2 ${3}s" >> "$CACHE/build-times.log"; }

base_image() {
  local key dir start
  key="$(printf '%s %s %s' "$BASE_NAME" "$BASE_PACKAGES" bookworm | sha256sum | cut -c1-12)"
  dir="$CACHE/images-base-$key"
  if [ ! -f "$dir/base.tar" ]; then
    start=$SECONDS
    rm -rf "$dir" && mkdir -p "$dir"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$dir/rootfs" "$MIRROR" \
      > "$dir/debootstrap.log" 2>&1
    rm -rf "$dir/rootfs/var/cache/apt/archives/"*.deb "$dir/rootfs/var/lib/apt/lists/"*
    tar -C "$dir/rootfs" --numeric-owner -cf "$dir/base.tar" .
    rm -rf "$dir/rootfs"
    log_time base debootstrap $((SECONDS - start))
  fi
  if ! "${PODMAN[@]}" image exists "$BASE_NAME"; then
    "${PODMAN[@]}" import --change 'CMD ["python3"]' "$dir/base.tar" "$BASE_NAME" > /dev/null
  fi
}

# The base of the rewrite-cpu flavour (built once per vLLM env and Containerfile); its tag.
vllm_cpu_base() {
  local env key tag start containerfile="$REPO/tests/cluster/vllm-cpu-base.Containerfile"
  env="$(bash "$REPO/tests/vllm/build_env.sh" 2> "$CACHE/vllm-env.log" | tail -n 1)"
  key="$(cat "$containerfile" "$env/.palimpsest-built" | sha256sum | cut -c1-12)"
  tag="$VLLM_CPU_BASE:$key"
  if ! "${PODMAN[@]}" image exists "$tag"; then
    base_image
    start=$SECONDS
    "${PODMAN[@]}" build --pull=never --network host -f "$containerfile" \
      -v "$env/lib/python3.11/site-packages:/vllm-site:ro" -t "$tag" "$REPO/tests/cluster" \
      > "$CACHE/vllm-cpu-base.build.log" 2>&1
    log_time vllm-cpu-base build $((SECONDS - start))
    # Older bases (several GB each) go; their layers with the last image built on them.
    "${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}' | grep "^$VLLM_CPU_BASE:" \
      | grep -v ":$key\$" | xargs -r "${PODMAN[@]}" rmi > /dev/null || true
  fi
  echo "$tag"
}

inputs_hash() {
  (cd "$REPO" && git ls-files -s -- pyproject.toml README.md pipeline operator prompts "images/$1" \
    && git diff HEAD -- pyproject.toml README.md pipeline operator prompts "images/$1") \
    | sha256sum | cut -c1-12
}

build_image() {
  local image="$1" tag dir start dockerfile base_args=()
  tag="ghcr.io/palimpsest-dev/palimpsest-$image:$VERSION"
  dockerfile="$REPO/images/$image/Dockerfile"
  if [ "$image" = rewrite-cpu ]; then
    local base
    base="$(vllm_cpu_base)"
    tag="ghcr.io/palimpsest-dev/palimpsest-rewrite:$VERSION-cpu"
    dockerfile="$REPO/images/rewrite/Dockerfile"
    base_args=(--build-arg "BASE_IMAGE=$base")
    dir="$CACHE/images-$( (inputs_hash rewrite; echo "$base") | sha256sum | cut -c1-12)"
  else
    dir="$CACHE/images-$(inputs_hash "$image")"
  fi
  mkdir -p "$dir"
  if [ -f "$dir/$image.tar" ]; then
    # rewrite-cpu is only ever imported into the node: several GB not worth loading here.
    [ "$image" = rewrite-cpu ] || "${PODMAN[@]}" load -q -i "$dir/$image.tar" > /dev/null
  else
    base_image
    start=$SECONDS
    # The host's CA bundle (this network's TLS proxy) for pip, mounted for RUN steps only:
    # nothing of it stays in the image.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$dir/pip.conf"
    "${PODMAN[@]}" build --pull=never --network host -f "$dockerfile" "${base_args[@]}" \
      -v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro" -v "$dir/pip.conf:/etc/pip.conf:ro" \
      -t "$tag" "$REPO" > "$dir/$image.build.log" 2>&1
    log_time "$image" build $((SECONDS - start))
    "${PODMAN[@]}" save --format oci-archive -o "$dir/$image.tar.part" "$tag"
    mv "$dir/$image.tar.part" "$dir/$image.tar"
    if [ "$image" = rewrite-cpu ]; then  # several GB each: keep only the newest
      find "$CACHE" -maxdepth 2 -path "$CACHE/images-*/$image.tar" ! -path "$dir/*" -delete
    fi
    "${PODMAN[@]}" image prune -f > /dev/null  # the build stage's dangling image
  fi
  echo "$tag $dir/$image.tar"
}

for image in "${IMAGES[@]}"; do
  build_image "$image"
done
