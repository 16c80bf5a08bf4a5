#!/usr/bin/env bash
# Build the router's image with its labels filled in: the version from pyproject.toml, the git
# revision (with "-dirty" when the work tree has changes), and the source repository.
#
#   bash deploy/build.sh                                   # tags actito-router:<version>
#   IMAGE=registry.example.com/actito-router:0.1.0 bash deploy/build.sh
#   IMAGE_SOURCE=https://git.example.com/ops/actito-router bash deploy/build.sh
#
# Options are passed to `docker build` (or `podman build`, which gets --format docker so the
# HEALTHCHECK is kept). The source is IMAGE_SOURCE, else the `origin` remote with any
# credentials removed. CONTAINER_ENGINE picks the engine (default: docker, else podman).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    revision="$revision-dirty"
fi
source=${IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || true)}
# A remote may carry a login (https://user:token@host/...): it must never reach a label.
source=$(printf '%s' "$source" | sed -E 's#^(https?://)[^/@]*@#\1#')
# An SSH remote (git@host:org/repo.git) as the web address it stands for.
source=$(printf '%s' "$source" | sed -E 's#^[^/@:]+@([^:/]+):#https://\1/#; s#\.git$##')

engine=${CONTAINER_ENGINE:-$(command -v docker || command -v podman || true)}
if [ -z "$engine" ]; then
    echo "build.sh: neither docker nor podman is installed; set CONTAINER_ENGINE" >&2
    exit 1
fi
format=()
if [ "$(basename "$engine")" = podman ]; then
    format=(--format docker)
fi

exec "$engine" build "${format[@]}" -f deploy/Dockerfile -t "${IMAGE:-actito-router:$version}" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    --build-arg "SOURCE=$source" "$@" .
