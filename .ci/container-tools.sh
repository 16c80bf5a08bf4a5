#!/usr/bin/env bash
# Install what the container tests need (tests/test_deploy.py, marked slow): podman and buildah
# to build and run the image without a Docker engine, runc as their runtime (crun cannot set
# rlimits/cgroups on some CI hosts), and debootstrap to make a local stand-in base image when
# registry pulls are not possible.
#
# Idempotent: when every tool is already on PATH it installs nothing, runs no `apt-get update`
# and exits 0 at once. Output is quiet unless something fails.
set -euo pipefail

# tool on PATH -> Debian package that provides it
declare -A PACKAGES=(
    [podman]=podman
    [buildah]=buildah
    [runc]=runc
    [debootstrap]=debootstrap
)

missing=()
for tool in "${!PACKAGES[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        missing+=("${PACKAGES[$tool]}")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "container-tools: installing ${missing[*]} failed" >&2
    exit 1
fi
echo "container-tools: installed ${missing[*]}"
