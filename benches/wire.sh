#!/usr/bin/env bash
# Where a decision's time goes, read off the wire (issue 16): runs `playbookd bench --quick`
# while tcpdump captures the daemon's PostgreSQL traffic on loopback, then splits the open
# loop's lone runs into the server's time (each flight of the audit writer, first packet out to
# first packet back) and the daemon's (between an answer and the next flight, and outside the
# writer's flights), and the 1-connection phase into the server's time a decision (benches/wire.py
# says how).
#
#   benches/wire.sh [PLAYBOOKD]     (default target/release/playbookd; root, for tcpdump)
#
# The server must be on this machine's loopback (PGPORT, default 5432; the bench's own
# --database-url default). Installs tcpdump if it is missing. Captures only packet headers
# (128 bytes a packet), into a private temporary directory removed at the end.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/playbookd}
port=${PGPORT:-5432}
command -v tcpdump >/dev/null || apt-get install -y -qq tcpdump >/dev/null
dir=$(mktemp -d)
trap 'kill "$capture" 2>/dev/null || true; rm -rf "$dir"' EXIT
tcpdump -i lo -n -s 128 -B 65536 -w "$dir/lo.pcap" "tcp port $port" 2>"$dir/tcpdump.log" &
capture=$!
sleep 1
"$bin" bench --quick --concurrency 64 --parked 100 >"$dir/bench.txt" \
    2> >(while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done >"$dir/phases")
kill "$capture"
wait "$capture" || true
grep -q "^0 packets dropped by kernel" "$dir/tcpdump.log" ||
    echo "wire.sh: tcpdump dropped packets: $(grep dropped "$dir/tcpdump.log")" >&2
PGPORT=$port python3 "$here/wire.py" "$dir/lo.pcap" "$dir/phases" "$dir/bench.txt"
