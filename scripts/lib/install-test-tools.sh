#!/usr/bin/env bash
# Command-line tools the tests drive for real (interop and checks), installed when missing.
# Prints nothing on success. schemathesis is linked as
# ${XDG_CACHE_HOME:-~/.cache}/playbookd-test-tools/bin/schemathesis, where the test looks for it
# (or set PLAYBOOKD_SCHEMATHESIS to another one).
set -euo pipefail
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# promtool checks the /metrics exposition format (tests/it/status.rs).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# net.block_ip tests: nft inside a network namespace (ip netns, veth), ping to show the drop.
[ -x /usr/sbin/nft ] || missing+=(nftables)
[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
# The status API's property-based conformance test (tests/it/api_conformance.rs) runs
# schemathesis, from PyPI, in a virtualenv of its own.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
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

# Pinned, so a new release cannot change what the conformance test finds.
SCHEMATHESIS_VERSION=4.32.5
tools="${XDG_CACHE_HOME:-$HOME/.cache}/playbookd-test-tools"
venv="$tools/schemathesis-$SCHEMATHESIS_VERSION"
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
mkdir -p "$tools/bin"
ln -sfn "$venv/bin/schemathesis" "$tools/bin/schemathesis"
"$tools/bin/schemathesis" --version >/dev/null
# Playwright for Python drives that Chromium. Never `playwright install`: it would download a
# browser of its own; the test launches /usr/bin/chromium.
if ! python3 -c "import playwright.sync_api" >/dev/null 2>&1; then
    python3 -m pip install --quiet playwright ||
        python3 -m pip install --quiet --break-system-packages playwright
fi
