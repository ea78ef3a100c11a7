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
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests need: ${missing[*]} (install them, or run as root to install automatically)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
