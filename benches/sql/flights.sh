#!/usr/bin/env bash
# What bounds a lone run's latency (issue 16): the round trips ("flights") the audit writer
# waits for per COMMIT, measured with the writer's own statements (noop3_writer.pgbench) sent
# three ways by pgbench -M prepared -c 1, against a scratch PostgreSQL cluster on this machine's
# disk (fsync on, as a production server):
#   statements  every statement its own round trip (pgbench's default);
#   writer      as store::audit sends a batch today: BEGIN with the effects in one flight, then
#               the audit INSERT with the COMMIT in a second (prepare_pipelined, then commit);
#   one-flight  BEGIN, the effects, the INSERT and the COMMIT in one flight under one Sync (as
#               pgbench's pipeline sends them; tokio-postgres cannot): the floor for a writer
#               that knew a batch's records before its effects ran;
#   one-statement  each transaction as one statement, its changes the WITH list of the audit
#               INSERT, outside a transaction block (one_statement.py): as the writer sends a
#               lone request since stop 38.
# Each is reported beside a single-row INSERT+COMMIT on the same cluster (the bench's baseline).
#
#   benches/sql/flights.sh [ROUNDS]      (default 3; needs initdb, pg_ctl, psql, pgbench)
#   PGBENCH_SECONDS=10 benches/sql/flights.sh   seconds per measurement (default 5)
#
# Last, where a lone run's time goes: pgbench -r's latency of each statement (statements shape),
# summed by kind.
#
# The shapes alternate within each round and the medians are compared: a shared disk is noisy.
# Run as root, it runs PostgreSQL as the `postgres` user. It never touches another cluster.
set -euo pipefail

rounds=${1:-3}
seconds=${PGBENCH_SECONDS:-5}
here=$(cd "$(dirname "$0")" && pwd)
migrations=$(cd "$here/../../migrations" && pwd)
script=$here/noop3_writer.pgbench
. "$here/scratch.sh" flights 54328

# The writer's script in each shape: pipeline markers around what goes out in one flight.
shape() {
    case $1 in
    statements) cat "$script" ;;
    writer) sed -e 's/^BEGIN;$/\\startpipeline\nBEGIN;/' \
        -e 's/^INSERT INTO playbook_audit_log /\\endpipeline\n\\startpipeline\n&/' \
        -e 's/^COMMIT;$/COMMIT;\n\\endpipeline/' "$script" ;;
    one-flight) sed -e 's/^BEGIN;$/\\startpipeline\nBEGIN;/' \
        -e 's/^COMMIT;$/COMMIT;\n\\endpipeline/' "$script" ;;
    one-statement) python3 "$here/one_statement.py" "$script" ;;
    baseline) echo 'INSERT INTO baseline (at) VALUES (now());' ;;
    esac
}

as_pg initdb -D "$data" -A trust -U postgres >/dev/null
as_pg pg_ctl -D "$data" -l "$work/server.log" -w \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c autovacuum=off" start >/dev/null
bench_database flights
sql -d flights -c "CREATE TABLE baseline (id bigserial PRIMARY KEY, at timestamptz NOT NULL)"
shapes="baseline statements writer one-flight one-statement"
for name in $shapes; do shape "$name" >"$work/$name.pgbench"; done
chmod a+r "$work"/*.pgbench
echo "noop-3 as the writer sends it, 1 client over TCP to 127.0.0.1, ${seconds} s each, $rounds rounds"

for round in $(seq "$rounds"); do
    for name in $shapes; do
        sql -d flights -c VACUUM
        latency=$(pgbench -n -M prepared -c 1 -T "$seconds" -h 127.0.0.1 -p "$port" -U postgres \
            -f "$work/$name.pgbench" flights 2>&1 | sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p')
        [ -n "$latency" ] || { echo "pgbench failed for $name" >&2; exit 1; }
        echo "$latency" >>"$work/latency.$name"
        echo "round $round $name: $latency ms"
    done
done

# Per-statement latencies of one more run of the statements shape, by kind of statement.
sql -d flights -c VACUUM
pgbench -n -M prepared -c 1 -T "$seconds" -r -h 127.0.0.1 -p "$port" -U postgres \
    -f "$work/statements.pgbench" flights 2>&1 |
    awk '/^ +[0-9.]+ +[0-9]+ +/ {
        ms = $1; text = $0; sub(/^ +[0-9.]+ +[0-9]+ +/, "", text)
        if (text ~ /^BEGIN/) kind = "BEGIN"
        else if (text ~ /^COMMIT/) kind = "COMMIT (WAL flush)"
        else if (text ~ /^INSERT INTO playbook_audit_log/) kind = "audit INSERT"
        else if (text ~ /^WITH used AS/) kind = "admission (nonce, run, first step)"
        else if (text ~ /^WITH run AS/) kind = "run + step start"
        else if (text ~ /^UPDATE playbook_step_runs/) kind = "step end"
        else if (text ~ /^UPDATE playbook_executions/) kind = "run completion"
        else kind = "other"
        sum[kind] += ms; total += ms
    }
    END {
        printf "where a lone run goes (statements shape, pgbench -r), %.3f ms in all:\n", total
        fflush()
        for (k in sum) printf "  %7.3f ms %5.1f %%  %s\n", sum[k], 100 * sum[k] / total, k | "sort -rn"
        close("sort -rn")
    }'

base=$(median <"$work/latency.baseline")
printf '%-13s %9s %11s\n' shape "ms/run" "÷ baseline"
printf '%-13s %9.3f %11s\n' baseline "$base" "(1 row)"
for name in statements writer one-flight one-statement; do
    awk -v n="$name" -v l="$(median <"$work/latency.$name")" -v b="$base" \
        'BEGIN { printf "%-13s %9.3f %10.1fx\n", n, l, l / b }'
done
