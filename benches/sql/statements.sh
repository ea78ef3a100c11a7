#!/usr/bin/env bash
# What each of the daemon's statements costs the server while `playbookd bench` drives it
# (issue 16): a scratch PostgreSQL cluster on this machine's disk (fsync on) with
# pg_stat_statements loaded, one `playbookd bench --quick --concurrency 64` against it, then the
# statements by server time (execution + planning), with calls, µs a call and plans.
# The single-user callgrind count of benches/sql/guard.sh is repeatable but models one backend
# running the statements alone, with their values written in; this sees them as the daemon
# sends them (parameters, two writer connections, pipelined batches). Compare two builds by
# running it once with each, alternately.
#
#   benches/sql/statements.sh [PLAYBOOKD]   (default target/release/playbookd; needs initdb,
#                                            pg_ctl, psql and PostgreSQL's pg_stat_statements)
# Run as root, it runs PostgreSQL as the `postgres` user. It never touches another cluster.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
daemon=$(realpath "${1:-$here/../../target/release/playbookd}")
migrations=$(cd "$here/../../migrations" && pwd)
. "$here/scratch.sh" statements 54327

as_pg initdb -D "$data" -A trust -U postgres >/dev/null
as_pg pg_ctl -D "$data" -l "$work/server.log" -w -o "-p $port -k $work \
    -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements \
    -c pg_stat_statements.track_planning=on -c pg_stat_statements.max=1000" start >/dev/null
sql -d postgres -c "CREATE EXTENSION pg_stat_statements"
"$daemon" bench --quick --concurrency 64 \
    --database-url "postgres://postgres@127.0.0.1:$port/postgres" >"$work/bench.txt" 2>&1 ||
    { cat "$work/bench.txt" >&2; exit 1; }
grep -E 'completed runs/s|audit appends/s during' "$work/bench.txt"
sql -d postgres -P pager=off -c "
    SELECT calls, round((total_exec_time + total_plan_time)::numeric) AS server_ms,
           round((total_exec_time / calls * 1000)::numeric, 1) AS exec_us,
           round((total_plan_time / greatest(plans, 1) * 1000)::numeric, 1) AS plan_us, plans,
           left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS statement
    FROM pg_stat_statements
    WHERE calls >= 100 AND query NOT LIKE '%pg_stat_statements%'
    ORDER BY total_exec_time + total_plan_time DESC LIMIT 20"
