# shellcheck shell=bash
# Shared by install.sh and uninstall.sh: where playbookd lives, and how a step is run.
# The caller sets DRY_RUN (0/1) and DESTDIR before calling run/host.

# shellcheck disable=SC2034 # used by the scripts that source this file
readonly BIN_PATH=/usr/local/bin/playbookd
readonly UNIT_DIR=/etc/systemd/system
readonly UNIT_PATH=$UNIT_DIR/playbookd.service
# Every unit shipped in systemd/, installed side by side; the sockets and the actuator are enabled.
readonly UNITS=(playbookd.service playbookd.socket playbookd-control.socket playbookd-status.socket
    playbookd-actuator.service playbookd-actuator.socket playbookd-exec.socket playbookd-exec@.service)
readonly ENABLED_UNITS=(playbookd.socket playbookd-control.socket playbookd-status.socket
    playbookd-actuator.socket playbookd-exec.socket playbookd-actuator.service playbookd.service)
readonly ACTUATOR_DROPIN=$UNIT_DIR/playbookd-actuator.service.d/file-roots.conf
# Accounts: the daemon, the actuator, exec children; groups that reach the sockets.
readonly SYSTEM_USERS=(playbookd playbookd-actuator playbookd-exec)
readonly SOCKET_GROUPS=(playbookd-policy playbookd-approvers playbookd-operators)
readonly CONFIG_DIR=/etc/playbookd
readonly STATE_DIR=/var/lib/playbookd

# Print a command in a form that can be pasted back into a shell.
show() {
    local quoted
    printf -v quoted '%q ' "$@"
    printf '%s\n' "${quoted% }"
}

# Runs a step that only touches files below DESTDIR (or prints it with --dry-run).
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ '
        show "$@"
    else
        "$@"
    fi
}

# Runs a step that changes the host itself: printed instead when DESTDIR is set.
host() {
    if [ -n "$DESTDIR" ]; then
        printf 'skipped (DESTDIR set): '
        show "$@"
    else
        run "$@"
    fi
}

note() { printf '%s\n' "$*"; }
