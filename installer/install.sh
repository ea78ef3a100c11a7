#!/usr/bin/env bash
# Installs playbookd as a systemd service. Safe to run again: every step checks before it acts,
# and an existing configuration is never overwritten.
#
#   installer/install.sh [--dry-run] [--no-enable] [--binary PATH]
#   DESTDIR=/tmp/root installer/install.sh ...   # install the files under a root prefix
#
# --dry-run     print each step instead of running it
# --no-enable   leave the unit disabled (still installed, and systemd reloaded)
# --binary PATH the playbookd binary to install (default: target/release/playbookd)
# DESTDIR       install files below this prefix; the steps that change the host itself
#               (users, ownership, database, migrate, systemctl) are printed, not run
set -euo pipefail

SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly SOURCE
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$SOURCE/installer/lib.sh"

readonly USER_NAME=playbookd
readonly GROUP_NAME=playbookd
readonly DB_NAME=playbookd
# Two roles (README "Database roles"): the daemon connects as DB_ROLE, which owns nothing and
# may only read and append the evidence; the schema belongs to DB_OWNER, a NOLOGIN role that
# `playbookd migrate` (run here as the postgres superuser) acts as.
readonly DB_ROLE=playbookd
readonly DB_OWNER=playbookd_owner

readonly CONFIG_PATH=$CONFIG_DIR/playbookd.toml
readonly KEYS_DIR=$CONFIG_DIR/trusted-keys
readonly PLAYBOOKS_DIR=$STATE_DIR/playbooks
readonly ACTUATOR_STATE_DIR=/var/lib/playbookd-actuator
readonly QUARANTINE_DIR=$ACTUATOR_STATE_DIR/quarantine
readonly SAMPLES_DIR=/usr/share/playbookd/samples

DRY_RUN=0
ENABLE=1
BINARY=$SOURCE/target/release/playbookd
DESTDIR=${DESTDIR:-}

usage() {
    sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --no-enable) ENABLE=0 ;;
        --binary)
            [ $# -ge 2 ] || { echo "install.sh: --binary needs a path" >&2; exit 2; }
            BINARY=$2
            shift
            ;;
        --binary=*) BINARY=${1#--binary=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done


die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

# dir MODE OWNER:GROUP PATH
dir() {
    run install -d -m "$1" "$DESTDIR$3"
    host chown "$2" "$DESTDIR$3"
}

check_inputs() {
    if [ "$DRY_RUN" = 0 ] && [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
        die "run as root (or set DESTDIR, or use --dry-run)"
    fi
    if [ ! -x "$BINARY" ]; then
        if [ "$DRY_RUN" = 1 ]; then
            note "warning: $BINARY is missing or not executable (build with: cargo build --release)"
        else
            die "$BINARY is missing or not executable (build with: cargo build --release, or pass --binary PATH)"
        fi
    fi
    for file in "${UNITS[@]/#/systemd/}" config/playbookd.toml; do
        [ -f "$SOURCE/$file" ] || die "$SOURCE/$file is missing: run the installer from a playbookd source tree"
    done
}

create_accounts() {
    if getent group "$GROUP_NAME" >/dev/null && [ -z "$DESTDIR" ]; then
        note "group $GROUP_NAME exists"
    else
        host groupadd --system "$GROUP_NAME"
    fi
    if getent passwd "$USER_NAME" >/dev/null && [ -z "$DESTDIR" ]; then
        note "user $USER_NAME exists"
    else
        host useradd --system --gid "$GROUP_NAME" --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "playbookd daemon" "$USER_NAME"
    fi
    # The actuator (privileged helper) and exec children each have a user of their own, so
    # neither shares the daemon's uid (its key, its files, its database role).
    local user
    for user in playbookd-actuator playbookd-exec; do
        if getent passwd "$user" >/dev/null && [ -z "$DESTDIR" ]; then
            note "user $user exists"
        else
            host useradd --system --user-group --home-dir / --no-create-home \
                --shell /usr/sbin/nologin --comment "playbookd ${user#playbookd-}" "$user"
        fi
    done
    # Who reaches which socket: playbookd-policy -> decisions.sock (policy engines),
    # playbookd-approvers -> control.sock; playbookd-operators is a role in [roles].
    local group
    for group in "${SOCKET_GROUPS[@]}"; do
        if getent group "$group" >/dev/null && [ -z "$DESTDIR" ]; then
            note "group $group exists"
        else
            host groupadd --system "$group"
        fi
    done
}

install_files() {
    # Config and keys: root writes, the daemon's group reads, nobody else looks.
    dir 0750 "root:$GROUP_NAME" "$CONFIG_DIR"
    dir 0750 "root:$GROUP_NAME" "$KEYS_DIR"
    # The state dir belongs to the daemon (systemd's StateDirectory= expects that, and re-owns
    # the whole tree recursively if the top is owned by someone else).
    dir 0750 "$USER_NAME:$GROUP_NAME" "$STATE_DIR"
    # Playbooks are written by root (admins), only read by the daemon: a compromised daemon
    # cannot plant or swap its own playbooks.
    dir 0750 "root:$GROUP_NAME" "$PLAYBOOKS_DIR"
    # The quarantine belongs to the actuator: neither the daemon nor an exec child can read it.
    dir 0700 "playbookd-actuator:playbookd-actuator" "$ACTUATOR_STATE_DIR"
    dir 0700 "playbookd-actuator:playbookd-actuator" "$QUARANTINE_DIR"

    run install -d -m 0755 "$DESTDIR$(dirname "$BIN_PATH")"
    run install -m 0755 "$BINARY" "$DESTDIR$BIN_PATH"
    host chown root:root "$DESTDIR$BIN_PATH"

    run install -d -m 0755 "$DESTDIR$UNIT_DIR"
    local unit
    for unit in "${UNITS[@]}"; do
        run install -m 0644 "$SOURCE/systemd/$unit" "$DESTDIR$UNIT_DIR/$unit"
    done
    # The commented drop-in that says how to grant a file root; an edited one is kept.
    run install -d -m 0755 "$DESTDIR$(dirname "$ACTUATOR_DROPIN")"
    if [ -e "$DESTDIR$ACTUATOR_DROPIN" ]; then
        note "keeping the existing $ACTUATOR_DROPIN"
    else
        run install -m 0644 "$SOURCE/systemd/playbookd-actuator.service.d/file-roots.conf" \
            "$DESTDIR$ACTUATOR_DROPIN"
    fi

    if [ -e "$DESTDIR$CONFIG_PATH" ]; then
        note "keeping the existing $CONFIG_PATH (the shipped default is $SOURCE/config/playbookd.toml)"
    else
        run install -m 0640 "$SOURCE/config/playbookd.toml" "$DESTDIR$CONFIG_PATH"
        host chown "root:$GROUP_NAME" "$DESTDIR$CONFIG_PATH"
    fi

    install_samples
}

# Samples go to /usr/share, never to the active playbook directory: they are unsigned, and an
# admin must review, sign and copy one before it can run.
install_samples() {
    run install -d -m 0755 "$DESTDIR$SAMPLES_DIR"
    local readme="$DESTDIR$SAMPLES_DIR/README"
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ write %s\n' "$readme"
    else
        cat >"$readme" <<EOF
These sample playbooks are NOT active: they are unsigned, and playbookd only loads playbooks
from $PLAYBOOKS_DIR that carry a signature from a key in $KEYS_DIR.

To use one: review it, adapt it, sign it and install it beside its signature, for example
    playbookd sign --key /path/to/signing.key contain-host.yaml
    install -m 0644 -o root -g $GROUP_NAME contain-host.yaml contain-host.yaml.sig $PLAYBOOKS_DIR/
    systemctl reload playbookd
EOF
        chmod 0644 "$readme"
    fi
    local found=0 sample
    if [ -d "$SOURCE/playbooks" ]; then
        for sample in "$SOURCE"/playbooks/*.yaml "$SOURCE"/playbooks/*.yml; do
            [ -f "$sample" ] || continue
            found=1
            run install -m 0644 "$sample" "$DESTDIR$SAMPLES_DIR/$(basename "$sample")"
        done
    fi
    [ "$found" = 1 ] || note "no sample playbooks in $SOURCE/playbooks; only the README was installed"
}

# Prints the SQL that creates the roles and database (for a remote or unreachable PostgreSQL).
database_sql() {
    cat <<EOF
CREATE ROLE $DB_OWNER NOLOGIN;
CREATE ROLE $DB_ROLE LOGIN;
CREATE DATABASE $DB_NAME OWNER $DB_OWNER;
EOF
}

# The command that migrates as the owner and grants the daemon's role its privileges.
migrate_command() {
    printf '%s\n' "runuser -u postgres -- env PLAYBOOKD_OWNER_DATABASE_URL='postgres://postgres@/$DB_NAME?host=/run/postgresql' $BIN_PATH migrate --owner-role $DB_OWNER --runtime-role $DB_ROLE"
}

# Creates the roles and database in the local PostgreSQL if it answers; returns 1 otherwise.
setup_database() {
    if [ -n "$DESTDIR" ]; then
        note "skipped (DESTDIR set): create the database; the SQL is:"
        database_sql
        return 1
    fi
    if ! command -v psql >/dev/null || ! command -v runuser >/dev/null \
        || ! getent passwd postgres >/dev/null \
        || ! runuser -u postgres -- psql -XAtqc 'SELECT 1' >/dev/null 2>&1; then
        note "no local PostgreSQL answered as the postgres user; run this SQL as a superuser:"
        database_sql
        note "then, as a superuser: $(migrate_command)"
        return 1
    fi
    local psql=(runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -Atq)
    local role login
    for role in "$DB_OWNER" "$DB_ROLE"; do
        login=LOGIN
        [ "$role" = "$DB_OWNER" ] && login=NOLOGIN
        if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" = 1 ]; then
            note "database role $role exists"
        else
            run "${psql[@]}" -c "CREATE ROLE $role $login"
        fi
    done
    local owner
    owner=$("${psql[@]}" -c "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$DB_NAME'")
    if [ -z "$owner" ]; then
        run "${psql[@]}" -c "CREATE DATABASE $DB_NAME OWNER $DB_OWNER"
    elif [ "$owner" = "$DB_ROLE" ]; then
        # An install from before the two roles: the daemon's role owns everything, so it could
        # grant itself DELETE on its own evidence. Hand the database and all it holds to the owner.
        note "database $DB_NAME belongs to the daemon's role $DB_ROLE: moving it to $DB_OWNER"
        run "${psql[@]}" -d "$DB_NAME" -c "REASSIGN OWNED BY $DB_ROLE TO $DB_OWNER"
    else
        note "database $DB_NAME exists (owner $owner)"
    fi
}

migrate() {
    # As the postgres superuser (peer authentication), acting as the owner role; the daemon's
    # role is granted exactly what it needs, and nothing else it held on the schema survives.
    host runuser -u postgres -- env \
        "PLAYBOOKD_OWNER_DATABASE_URL=postgres://postgres@/$DB_NAME?host=/run/postgresql" \
        "$BIN_PATH" migrate --owner-role "$DB_OWNER" --runtime-role "$DB_ROLE"
}

enable_unit() {
    if [ -n "$DESTDIR" ]; then
        host systemctl daemon-reload
        [ "$ENABLE" = 1 ] && host systemctl enable "${ENABLED_UNITS[@]}"
        return 0
    fi
    if ! command -v systemctl >/dev/null; then
        note "systemctl not found: the unit is installed at $UNIT_PATH but not enabled"
        return 0
    fi
    if [ ! -d /run/systemd/system ]; then
        note "systemd is not running on this host: the unit is installed at $UNIT_PATH but not enabled"
        return 0
    fi
    run systemctl daemon-reload
    if [ "$ENABLE" = 1 ]; then
        run systemctl enable "${ENABLED_UNITS[@]}"
        note "enabled; start it with: systemctl start playbookd.socket playbookd-actuator playbookd"
    else
        note "left disabled (--no-enable); enable it with: systemctl enable --now ${ENABLED_UNITS[*]}"
    fi
}

main() {
    check_inputs
    create_accounts
    install_files
    if setup_database; then
        migrate
    elif [ -z "$DESTDIR" ]; then
        note "skipping migrate until the database exists"
    else
        migrate
    fi
    enable_unit
    note "playbookd installed${DESTDIR:+ under $DESTDIR}."
    note "Next: put trusted public keys in $KEYS_DIR and signed playbooks in $PLAYBOOKS_DIR."
}

main
