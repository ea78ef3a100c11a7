# Sourced by guard.sh and flights.sh: a scratch PostgreSQL cluster's directory ($work, $data),
# port ($port: $PORT or the caller's default), removed with its server when the script exits,
# and the helpers both use. Run as root, the server runs as the `postgres` user.
# Usage: . scratch.sh NAME DEFAULT_PORT

work=$(mktemp -d "/tmp/pbd-$1.XXXXXX")
port=${PORT:-$2}
data=$work/data

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$work"
cleanup() {
    as_pg pg_ctl -D "$data" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# The median of the numbers on standard input, one a line.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
