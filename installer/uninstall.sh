#!/usr/bin/env bash
# Removes playbookd: stops and disables the service, removes the binary, the unit and the samples.
# Configuration, keys, playbooks, quarantined files and the database are kept unless --purge.
#
#   installer/uninstall.sh [--dry-run] [--purge]
#   DESTDIR=/tmp/root installer/uninstall.sh ...   # remove files below this prefix
#
# --dry-run   print each step instead of running it
# --purge     also remove /etc/playbookd, /var/lib/playbookd, /var/lib/playbookd-actuator and the
#             playbookd users and groups.
#             The database is never dropped here: it holds the audit log. The SQL to drop it
#             is printed.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
readonly SHARE_DIR=/usr/share/playbookd

DRY_RUN=0
PURGE=0
DESTDIR=${DESTDIR:-}

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --purge) PURGE=1 ;;
        -h | --help) sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "uninstall.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$DRY_RUN" = 0 ] && [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    echo "uninstall.sh: run as root (or set DESTDIR, or use --dry-run)" >&2
    exit 1
fi

if [ -n "$DESTDIR" ] || { command -v systemctl >/dev/null && [ -d /run/systemd/system ]; }; then
    host systemctl disable --now "${ENABLED_UNITS[@]}"
else
    note "systemd is not running here: nothing to stop or disable"
fi

run rm -f "$DESTDIR$BIN_PATH" "${UNITS[@]/#/$DESTDIR$UNIT_DIR/}" "$DESTDIR$ACTUATOR_DROPIN"
run rm -rf "$DESTDIR$(dirname "$ACTUATOR_DROPIN")"
run rm -rf "$DESTDIR$SHARE_DIR"
if [ -n "$DESTDIR" ] || { command -v systemctl >/dev/null && [ -d /run/systemd/system ]; }; then
    host systemctl daemon-reload
fi

if [ "$PURGE" = 0 ]; then
    note "kept $CONFIG_DIR, $STATE_DIR and the database (use --purge to remove the files)"
    exit 0
fi

run rm -rf "$DESTDIR$CONFIG_DIR" "$DESTDIR$STATE_DIR" "$DESTDIR/var/lib/playbookd-actuator"
for account in user:playbookd user:playbookd-actuator user:playbookd-exec \
    group:playbookd-policy group:playbookd-approvers group:playbookd-operators group:playbookd; do
    kind=${account%%:*}
    name=${account#*:}
    if [ -n "$DESTDIR" ]; then
        host "${kind}del" "$name"
    elif getent "$([ "$kind" = user ] && echo passwd || echo group)" "$name" >/dev/null; then
        run "${kind}del" "$name"
    fi
done
note "the database was kept: it holds the audit log. To drop it, as a PostgreSQL superuser:"
note "  DROP DATABASE playbookd;"
note "  DROP ROLE playbookd;"
note "  DROP ROLE playbookd_owner;"
