# shellcheck shell=bash
# Shared by scripts/test and scripts/demo: find a PostgreSQL to use, or start a throwaway one.
#
#   pg_use_or_start_throwaway   sets PG_ADMIN_URL (a superuser URL on database `postgres`)
#   pg_start_throwaway          always starts a throwaway cluster and sets PG_ADMIN_URL
#   pg_stop_throwaway           stops and deletes the throwaway cluster, if any (safe to call twice)
#   pg_url USER DB              a URL for USER on DB, on the server of PG_ADMIN_URL
#   pg_create_database_with_roles DB OWNER RUNTIME
#                               the two roles of an install (README "Database roles") and DB
#   pg_migrate BIN DB OWNER RUNTIME
#                               `playbookd migrate` as OWNER, granting RUNTIME the daemon's privileges

PG_THROWAWAY_DIR=""
PG_THROWAWAY_BIN=""

pg_log() { printf 'postgres: %s\n' "$*" >&2; }

# True when a PostgreSQL with trust auth for `postgres` answers at host/port.
pg_answers() {
    local host=$1 port=$2
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null || return 1
    if command -v psql >/dev/null 2>&1; then
        PGCONNECT_TIMEOUT=3 psql -X -q -w -h "$host" -p "$port" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1
    fi
}

pg_find_bindir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then PG_THROWAWAY_BIN=$dir; fi
    done
    [ -n "$PG_THROWAWAY_BIN" ]
}

pg_install_server() {
    pg_log "server binaries missing; installing the Debian package"
    if [ "$(id -u)" -ne 0 ]; then
        pg_log "need root to apt-get install postgresql; install it or set PLAYBOOKD_TEST_DATABASE_URL"
        return 1
    fi
    # The package's own cluster may start on 5432; we do not depend on it either way.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

pg_free_port() {
    local port
    for port in $(seq 55432 55632); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
    done
    return 1
}

# initdb refuses to run as root: run the cluster as an unprivileged user.
pg_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u nobody -- "$@"
    else
        "$@"
    fi
}

pg_start_throwaway() {
    pg_find_bindir || { pg_install_server && pg_find_bindir; } || { pg_log "no initdb found"; return 1; }
    local port
    port=$(pg_free_port) || { pg_log "no free port in 55432-55632"; return 1; }
    PG_THROWAWAY_DIR=$(mktemp -d /tmp/playbookd-pg.XXXXXX)
    chmod 0755 "$PG_THROWAWAY_DIR"
    [ "$(id -u)" -eq 0 ] && chown nobody "$PG_THROWAWAY_DIR"
    pg_as_owner "$PG_THROWAWAY_BIN/initdb" -D "$PG_THROWAWAY_DIR/data" -U postgres -A trust -E UTF8 >/dev/null
    pg_as_owner "$PG_THROWAWAY_BIN/pg_ctl" -D "$PG_THROWAWAY_DIR/data" -l "$PG_THROWAWAY_DIR/server.log" -w \
        -o "-p $port -k $PG_THROWAWAY_DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" start >/dev/null
    PG_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
    pg_log "throwaway cluster on 127.0.0.1:$port ($PG_THROWAWAY_DIR)"
}

pg_stop_throwaway() {
    [ -n "$PG_THROWAWAY_DIR" ] || return 0
    pg_as_owner "$PG_THROWAWAY_BIN/pg_ctl" -D "$PG_THROWAWAY_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_THROWAWAY_DIR"
    PG_THROWAWAY_DIR=""
}

pg_use_or_start_throwaway() {
    if pg_answers 127.0.0.1 5432; then
        PG_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
        pg_log "using the server on 127.0.0.1:5432"
    else
        pg_log "nothing answers on 127.0.0.1:5432"
        pg_start_throwaway
    fi
}

pg_psql() {
    local psql=psql
    if [ -n "$PG_THROWAWAY_BIN" ] && [ -x "$PG_THROWAWAY_BIN/psql" ]; then psql=$PG_THROWAWAY_BIN/psql; fi
    "$psql" -X -q -v ON_ERROR_STOP=1 "$@"
}

pg_url() {
    local rest=${PG_ADMIN_URL#*://}
    rest=${rest#*@}
    printf 'postgres://%s@%s/%s\n' "$1" "${rest%%/*}" "$2"
}

# OWNER owns DB and the schema and is NOLOGIN: nobody connects as it, the migrator (a superuser
# here) SETs ROLE to it. RUNTIME is the daemon's LOGIN role and owns nothing. Kept if they exist.
pg_create_database_with_roles() {
    local db=$1 owner=$2 runtime=$3
    pg_psql "$PG_ADMIN_URL" <<SQL
SELECT 'CREATE ROLE $owner NOLOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$owner') \gexec
SELECT 'CREATE ROLE $runtime LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$runtime') \gexec
SELECT 'CREATE DATABASE $db OWNER $owner' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db') \gexec
SQL
}

pg_migrate() {
    local bin=$1 db=$2 owner=$3 runtime=$4
    PLAYBOOKD_OWNER_DATABASE_URL=$(pg_url postgres "$db") "$bin" migrate --owner-role "$owner" --runtime-role "$runtime"
}
