#!/usr/bin/env bash
# The cost of the transition guard and the state CHECKs in the audit writer's backend (issue 16):
# the writer's statements of a noop-3 run (noop3_writer.pgbench) against a scratch PostgreSQL
# cluster migrated to V$BEFORE (default 10) and to the newest migration, in alternating rounds.
#
#   benches/sql/guard.sh [ROUNDS]        (default 3; needs initdb, postgres, psql, valgrind)
#   PGBENCH_SECONDS=10 benches/sql/guard.sh   also times pgbench -M prepared -c 1 (runs/s)
#   BEFORE=12 BEFORE_SCRIPT=old.pgbench benches/sql/guard.sh   the statements of an earlier
#       version of the daemon (e.g. `git show REV:benches/sql/noop3_writer.pgbench`) as "before"
#
# Instructions: a single-user backend (no client, no network) under valgrind --tool=callgrind
# runs the statements, PREPAREd once and EXECUTEd per run as the writer does, for 10 and for 50
# runs, each on a fresh copy of the database; (I(50) - I(10)) / 40 is one run without start-up
# and warm-up. Counts repeat to 0.1 % whatever the machine's load; wall-clock figures on a shared
# machine do not, so the pgbench rounds alternate and the medians are compared.
# Run as root, it runs PostgreSQL as the `postgres` user. It never touches another cluster.
set -euo pipefail

rounds=${1:-3}
before=${BEFORE:-10}
pgbench_seconds=${PGBENCH_SECONDS:-0}
here=$(cd "$(dirname "$0")" && pwd)
migrations=$(cd "$here/../../migrations" && pwd)
script=$here/noop3_writer.pgbench
before_script=$(realpath "${BEFORE_SCRIPT:-$script}")
. "$here/scratch.sh" guard 54329

server_start() {
    as_pg pg_ctl -D "$data" -l "$work/server.log" -w \
        -o "-p $port -k $work -c listen_addresses= -c autovacuum=off -c fsync=off" start >/dev/null
}
server_stop() { as_pg pg_ctl -D "$data" stop -m fast >/dev/null; }

# The pgbench script as plain SQL for a single-user backend: each statement that uses :id
# PREPAREd once, then N runs of EXECUTEs with distinct ids (SALT keeps rounds apart).
single_user_sql() {
    local n=$1 salt=$2 script=$3
    grep -v -e '\\gset' -e '^--' "$script" | awk -v n="$n" -v salt="$salt" '
        { lines[NR] = $0 }
        END {
            for (l = 1; l <= NR; l++) if (lines[l] ~ /:id/) {
                s = lines[l]; sub(/;$/, "", s); gsub(/:id/, "$1", s)
                printf "PREPARE s%d(text) AS %s;\n", l, s
            }
            for (i = 1; i <= n; i++) {
                id = sprintf("%08x-0000-4000-8000-%012x", salt, i)
                for (l = 1; l <= NR; l++)
                    if (lines[l] ~ /:id/) printf "EXECUTE s%d(\x27%s\x27);\n", l, id
                    else print lines[l]
            }
        }'
}

# One statement in a single-user backend on database postgres (the server is stopped).
single_user() {
    echo "$1" | as_pg postgres --single -D "$data" -c fsync=off postgres >/dev/null 2>&1
}

# Instructions of a single-user backend running $2 runs on a fresh copy of database $1, so
# that every round starts from the same tables.
instructions() {
    local db=$1 n=$2 salt=$3
    local input=$work/input.$db.$n.$salt.sql out=$work/callgrind.$db.$n.$salt
    single_user_sql "$n" "$salt" "$(script_of "$db")" >"$input"
    chmod a+r "$input"
    single_user "CREATE DATABASE measured TEMPLATE $db"
    as_pg valgrind --tool=callgrind --callgrind-out-file="$out" \
        postgres --single -D "$data" -c autovacuum=off -c fsync=off measured <"$input" >"$out.log" 2>&1
    single_user "DROP DATABASE measured"
    if grep -q 'ERROR' "$out.log"; then
        grep -m3 'ERROR' "$out.log" >&2
        exit 1
    fi
    grep -E '^(summary|totals):' "$out" | head -1 | awk '{ print $2 }'
}

# The statements run against database $1.
script_of() { if [ "$1" = before ]; then echo "$before_script"; else echo "$script"; fi; }

as_pg initdb -D "$data" -A trust -U postgres --no-sync >/dev/null
server_start
newest=$(migration_files | tail -1 | sed 's/^V\([0-9]*\)__.*/\1/')
bench_database before "$before"
bench_database after "$newest"
echo "before: V$before with $before_script, after: V$newest with $script; $rounds rounds, alternating"

server_stop

salt=0
for round in $(seq "$rounds"); do
    for db in before after; do
        salt=$((salt + 1)); small=$(instructions $db 10 $salt)
        salt=$((salt + 1)); large=$(instructions $db 50 $salt)
        per_run=$(((large - small) / 40))
        echo "$per_run" >>"$work/ir.$db"
        echo "round $round $db: $per_run instructions per run"
    done
done

# pgbench adds thousands of runs: it comes last, and each round starts from a vacuumed table.
if [ "$pgbench_seconds" -gt 0 ]; then
    server_start
    for round in $(seq "$rounds"); do
        for db in before after; do
            sql -d $db -c VACUUM
            tps=$(pgbench -n -M prepared -c 1 -T "$pgbench_seconds" -h "$work" -p "$port" -U postgres \
                -f "$(script_of $db)" $db 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
            echo "$tps" >>"$work/tps.$db"
            echo "round $round $db: $tps runs/s"
        done
    done
    server_stop
fi

ir_before=$(median <"$work/ir.before")
ir_after=$(median <"$work/ir.after")
awk -v b="$ir_before" -v a="$ir_after" 'BEGIN {
    printf "instructions per run (median): before %.2fM, after %.2fM, after/before %.3f (%+.1f %%)\n",
        b / 1e6, a / 1e6, a / b, (a / b - 1) * 100 }'
if [ "$pgbench_seconds" -gt 0 ]; then
    awk -v b="$(median <"$work/tps.before")" -v a="$(median <"$work/tps.after")" 'BEGIN {
        printf "runs/s (median): before %.0f, after %.0f, after/before %.3f\n", b, a, a / b }'
fi
