#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml and build.in: every package pinned, with the
# hashes of all its published files, for every platform and Python >= 3.11 (--universal).
#
#   bash requirements/lock.sh                 # add what changed, keep the other pins
#   bash requirements/lock.sh --upgrade       # move every pin to the newest allowed version
#   bash requirements/lock.sh -P starlette    # move one package (uv's --upgrade-package)
#
# Needs uv (https://docs.astral.sh/uv/; `pipx install uv` or `pip install uv`).
#   runtime.txt  what the image installs (pyproject's dependencies)
#   build.txt    what the image build runs and never ships (build.in)
#   test.txt     what .ci/run installs: the test extra and the build tools, at the same
#                versions as runtime.txt and build.txt
set -euo pipefail
cd "$(dirname "$0")/.."

uv=${UV:-$(command -v uv || true)}
if [ -z "$uv" ]; then
    echo "lock.sh: uv is not installed; install it (pipx install uv) or set UV=/path/to/uv" >&2
    exit 1
fi
# The command the files' headers name as the way to regenerate them.
export UV_CUSTOM_COMPILE_COMMAND="bash requirements/lock.sh"
# Some networks intercept TLS: trust the system's certificates as well as uv's own.
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}"
options=(--quiet --generate-hashes --universal --python-version 3.11 "$@")

"$uv" pip compile "${options[@]}" pyproject.toml -o requirements/runtime.txt
"$uv" pip compile "${options[@]}" requirements/build.in -o requirements/build.txt
"$uv" pip compile "${options[@]}" pyproject.toml requirements/build.in --extra test \
    -c requirements/runtime.txt -c requirements/build.txt -o requirements/test.txt
