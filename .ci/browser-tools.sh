#!/usr/bin/env bash
# Install what the console's browser test needs (tests/console/test_browser.py): Debian's
# chromium, which Playwright drives through its executable path (never `playwright install`,
# which downloads browsers from outside the distribution).
#
# Idempotent: when chromium is already on PATH it installs nothing, runs no `apt-get update`
# and exits 0 at once. Output is quiet unless something fails.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
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
       $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "browser-tools: installing chromium failed" >&2
    exit 1
fi
echo "browser-tools: installed chromium"
