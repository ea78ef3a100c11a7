# Sourced by guard.sh and flights.sh: a scratch PostgreSQL cluster's directory ($work, $data),
# port ($port: $PORT or the caller's default), removed with its server when the script exits,
# and the helpers both use. Run as root, the server runs as the `postgres` user.
# Usage: . scratch.sh NAME DEFAULT_PORT   (the caller sets $migrations first)

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

sql() { psql -X -q -v ON_ERROR_STOP=1 -h "$work" -p "$port" -U postgres "$@"; }

# Migrations in version order, the first N of them (all without N).
migration_files() {
    ls "$migrations" | sed -n 's/^V\([0-9]*\)__.*\.sql$/\1 &/p' | sort -n |
        awk -v upto="${1:-999999}" '$1 <= upto { print $2 }'
}

# Creates database $1, migrated up to V$2 (all without it), with what noop3_writer.pgbench
# needs: the sequence standing in for the writer's seqs and the playbook version its runs name.
bench_database() {
    sql -d postgres -c "CREATE DATABASE $1"
    for file in $(migration_files "${2:-}"); do
        sql -d "$1" -1 -f "$migrations/$file" >/dev/null
    done
    sql -d "$1" -c "CREATE SEQUENCE bench_audit_seq" \
        -c "INSERT INTO playbook_versions (playbook_id, version, sha256, signer_key_ids, content, first_seen) \
            VALUES ('bench', 1, sha256('bench'), ARRAY['k'], 'bench', now())"
}

# The median of the numbers on standard input, one a line.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
