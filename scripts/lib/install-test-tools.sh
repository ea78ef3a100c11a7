#!/usr/bin/env bash
# Command-line tools the tests drive for real (interop and checks), installed when missing.
set -euo pipefail
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# promtool checks the /metrics exposition format (tests/it/status.rs).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# net.block_ip tests: nft inside a network namespace (ip netns, veth), ping to show the drop.
[ -x /usr/sbin/nft ] || missing+=(nftables)
[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
# The console's browser test (tests/it/console.rs, tests/browser/): Debian's Chromium.
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests need: ${missing[*]} (install them, or run as root to install automatically)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Playwright for Python drives that Chromium. Never `playwright install`: it would download a
# browser of its own; the test launches /usr/bin/chromium.
if ! python3 -c "import playwright.sync_api" >/dev/null 2>&1; then
    python3 -m pip install --quiet playwright ||
        python3 -m pip install --quiet --break-system-packages playwright
fi
