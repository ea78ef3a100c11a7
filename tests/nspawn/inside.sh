#!/bin/bash
# Runs inside the container booted by tests/nspawn/run, as root, under systemd (PID 1).
# Installs playbookd with its installer and drives it as a host would. Ends the container with
# `systemctl exit STATUS`, so the status reaches the host.
set -euo pipefail
exec >/work/inside.log 2>&1
finish() {
    local status=$?
    echo "=== scenario exit status $status"
    systemctl exit "$status" || systemctl poweroff
}
trap finish EXIT
step() { printf '\n=== %s\n' "$*"; }
fail() { echo "FAIL: $*"; exit 1; }
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
BIN=/work/playbookd
SRC=/src

psql_db() { runuser -u postgres -- psql -XAtq -d playbookd -c "$1"; }
# Sends one line to a Unix socket and prints the reply line (minbase has perl, not python).
send_line() {
    perl -MIO::Socket::UNIX -e '
        my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect $ARGV[0]: $!\n";
        print $s "$ARGV[1]\n"; my $reply = <$s>; print $reply;' "$1" "$2"
}
decision() { # POLICY OUTCOME SUBJECT_JSON
    printf '{"decision_id":"d-%s","nonce":"%s","issued_at":"%s","policy":"%s","outcome":"%s","org_id":"acme","severity":"high","subject":%s}' \
        "$RANDOM$RANDOM" "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" "$3"
}
execution_of() { sed -n 's/.*"execution_id":"\([^"]*\)".*/\1/p' <<<"$1"; }
wait_state() { # EXECUTION STATE
    local state
    for _ in $(seq 1 300); do
        state=$(psql_db "SELECT state FROM playbook_executions WHERE execution_id = '$1'")
        [ "$state" = "$2" ] && return 0
        sleep 0.1
    done
    fail "execution $1 is $state, not $2"
}

step "PostgreSQL"
for _ in $(seq 1 120); do
    runuser -u postgres -- psql -XAtqc 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.5
done

step "installer"
"$SRC/installer/install.sh" --binary "$BIN"
for unit in playbookd.socket playbookd-control.socket playbookd-status.socket \
    playbookd-actuator.socket playbookd-exec.socket playbookd-actuator.service playbookd.service; do
    [ "$(systemctl is-enabled "$unit")" = enabled ] || fail "$unit not enabled"
done

step "database roles: the daemon's role owns nothing and cannot erase the evidence"
[ "$(psql_db "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'playbookd'")" = playbookd_owner ] \
    || fail "the database does not belong to playbookd_owner"
[ "$(psql_db "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'playbookd_owner'")" = 0 ] \
    || fail "a table does not belong to playbookd_owner"
for sql in "DELETE FROM playbook_audit_log" "TRUNCATE audit_checkpoints" \
    "ALTER TABLE playbook_audit_log DISABLE TRIGGER ALL"; do
    # As the daemon's own OS user, through peer authentication: exactly the daemon's role.
    if out=$(runuser -u playbookd -- psql -XAtq -v ON_ERROR_STOP=1 -d playbookd -c "$sql" 2>&1); then
        fail "the daemon's role was allowed: $sql"
    fi
    grep -Eq "permission denied|must be owner" <<<"$out" || fail "$sql: $out"
done

step "users: a policy engine and an approver, each only in its group"
useradd --create-home engine
usermod -aG playbookd-policy engine
useradd --create-home alice
usermod -aG playbookd-approvers alice
ENGINE_UID=$(id -u engine)

step "keys, signed playbooks and bindings"
keys=$(mktemp -d)
playbookd keygen --algorithm ed25519 --out "$keys/a" >/dev/null
playbookd keygen --algorithm ed25519 --out "$keys/b" >/dev/null
install -m 0644 "$keys/a.pub" "$keys/b.pub" /etc/playbookd/trusted-keys/
cat >"$keys/nspawn-contain.yaml" <<'YAML'
id: nspawn-contain
version: 1
name: Kill a process, block an address, then an approved exec (nspawn scenario)
owners: {technical: a@example.org, operational: b@example.org}
inputs:
  pid: {type: integer}
  start_time: {type: integer}
  address: {type: ip}
steps:
  - id: kill
    action: process.kill
    with: {pid: "{{ subject.pid }}", start_time: "{{ subject.start_time }}", signal: KILL}
    risk: low
    rollback: none
  - id: block
    action: net.block_ip
    with: {address: "{{ subject.address }}", timeout: 10m}
    risk: low
    rollback: {action: net.unblock_ip, with: {address: "{{ subject.address }}"}}
  - id: whoami
    action: exec
    with: {command: /usr/bin/id}
    risk: high
    rollback: none
YAML
# Every sample as shipped, plus this scenario's playbook; the samples' bindings plus two more.
SAMPLES=(contain-ransomware credential-stuffing impossible-travel wipe-and-reimage noop-3)
for sample in "${SAMPLES[@]}"; do cp "$SRC/playbooks/$sample.yaml" "$keys/"; done
{
    cat "$SRC/playbooks/bindings.yaml"
    echo "  - {policy: nspawn.contain, outcome: run, playbook: nspawn-contain}"
    echo "  - {policy: nspawn.noop, outcome: run, playbook: noop-3}"
} >"$keys/bindings.yaml"
for file in nspawn-contain "${SAMPLES[@]}" bindings; do
    playbookd sign --key "$keys/a.key" "$keys/$file.yaml" >/dev/null
    playbookd sign --key "$keys/b.key" --second "$keys/$file.yaml" >/dev/null
done
for file in nspawn-contain "${SAMPLES[@]}"; do
    install -m 0644 -g playbookd "$keys/$file".yaml* /var/lib/playbookd/playbooks/
done
install -m 0640 -g playbookd "$keys"/bindings.yaml* /etc/playbookd/
# The site's reimage tool that wipe-and-reimage runs (here a stand-in that says what it would do).
printf '#!/bin/sh\necho "reimage requested: $*"\n' >/usr/local/sbin/reimage-host
chmod 0755 /usr/local/sbin/reimage-host
sed -i "s|^allowed_uids = \[\]|allowed_uids = [$ENGINE_UID]|; s|^allowed_commands = \[\]|allowed_commands = [\"/usr/bin/id\", \"/usr/local/sbin/reimage-host\"]|" \
    /etc/playbookd/playbookd.toml
# A file root for file.quarantine, granted as README "Deploy on a host" says: the drop-in and
# actions.file.roots.
mkdir -p /srv/incoming
chown engine: /srv/incoming
sed -i 's|^#\[Service\]|[Service]|; s|^#ReadWritePaths=/srv/www|ReadWritePaths=/srv/incoming|' \
    /etc/systemd/system/playbookd-actuator.service.d/file-roots.conf
sed -i 's|^roots = \[\]|roots = ["/srv/incoming"]|' /etc/playbookd/playbookd.toml
systemctl daemon-reload
grep -q "allowed_uids = \[$ENGINE_UID\]" /etc/playbookd/playbookd.toml || fail "config not edited"

step "start the sockets, the actuator and the daemon"
systemctl start playbookd.socket playbookd-control.socket playbookd-status.socket \
    playbookd-actuator.socket playbookd-exec.socket
systemctl start playbookd-actuator.service playbookd.service
systemctl is-active playbookd.service playbookd-actuator.service
ls -l /run/playbookd/
[ "$(stat -c '%G %a' /run/playbookd/decisions.sock)" = "playbookd-policy 660" ] || fail "decisions.sock group/mode"
[ "$(stat -c '%G %a' /run/playbookd/control.sock)" = "playbookd-approvers 660" ] || fail "control.sock group/mode"
grep -E '^Cap(Eff|Bnd|Amb)' "/proc/$(systemctl show -P MainPID playbookd)/status"
grep -q '^CapBnd:	0000000000000000' "/proc/$(systemctl show -P MainPID playbookd)/status" \
    || fail "the daemon holds a capability"

step "a decision from the policy engine (its own user) through the socket-activated decisions.sock"
runuser -u engine -- sleep 300 &
victim=$!
sleep 0.2
victim_pid=$(pgrep -u engine -x sleep)
start_time=$(awk '{print $22}' "/proc/$victim_pid/stat")
reply=$(runuser -u engine -- bash -c "$(declare -f send_line); send_line /run/playbookd/decisions.sock '$(decision nspawn.contain run "{\"pid\": $victim_pid, \"start_time\": $start_time, \"address\": \"203.0.113.7\"}")'")
echo "$reply"
grep -q '"accepted"' <<<"$reply" || fail "decision not accepted: $reply"
execution=$(execution_of "$reply")

step "someone outside playbookd-policy cannot even connect"
useradd --create-home mallory
if runuser -u mallory -- bash -c "$(declare -f send_line); send_line /run/playbookd/decisions.sock x" 2>&1; then
    fail "mallory reached decisions.sock"
fi

step "the approver (only in playbookd-approvers) approves the exec step"
wait_state "$execution" awaiting_approval
runuser -u alice -- playbookd ctl --socket /run/playbookd/control.sock pending
runuser -u alice -- playbookd ctl --socket /run/playbookd/control.sock approve "$execution" whoami --reason "nspawn scenario"
wait_state "$execution" completed
wait "$victim" 2>/dev/null && fail "the victim was not killed" || true
nft list table inet playbookd | grep -q 203.0.113.7 || fail "address not blocked"
psql_db "SELECT output->'stdout'->>'text' FROM playbook_step_runs WHERE execution_id = '$execution' AND step_id = 'whoami'" \
    | tee /dev/stderr | grep -q 'uid=[0-9]*(playbookd-exec)' || fail "the exec child did not run as playbookd-exec"

step "every sample as shipped, under the shipped units"
useradd --create-home bob
usermod -aG playbookd-approvers bob
send_as_engine() {
    runuser -u engine -- bash -c "$(declare -f send_line); send_line /run/playbookd/decisions.sock '$1'"
}
approve() { # USER EXECUTION STEP
    wait_state "$2" awaiting_approval
    runuser -u "$1" -- playbookd ctl --socket /run/playbookd/control.sock approve "$2" "$3" --reason "sample run"
}
runuser -u engine -- sleep 300 &
victim=$!
sleep 0.2
victim_pid=$(pgrep -u engine -n -x sleep)
start_time=$(awk '{print $22}' "/proc/$victim_pid/stat")
echo "encrypted" >/srv/incoming/locked.bin
chown engine: /srv/incoming/locked.bin
reply=$(send_as_engine "$(decision ransomware.encryption_burst contain "{\"host\": \"web-1\", \"pid\": $victim_pid, \"start_time\": $start_time, \"path\": \"/srv/incoming/locked.bin\", \"c2_address\": \"198.51.100.9\"}")")
echo "$reply"
ransomware=$(execution_of "$reply")
approve alice "$ransomware" kill-process
approve alice "$ransomware" block-c2
wait_state "$ransomware" completed
wait "$victim" 2>/dev/null || true
! kill -0 "$victim_pid" 2>/dev/null || fail "the encrypting process survived"
[ ! -e /srv/incoming/locked.bin ] || fail "locked.bin not quarantined"
ls -l /var/lib/playbookd-actuator/quarantine/
reply=$(send_as_engine "$(decision auth.credential_stuffing block '{"source_ip": "198.51.100.20", "accounts": 50}')")
stuffing=$(execution_of "$reply")
approve alice "$stuffing" block-source
wait_state "$stuffing" completed
reply=$(send_as_engine "$(decision identity.impossible_travel lock '{"user": "carol", "source_ip": "198.51.100.30", "country": "XX"}')")
travel=$(execution_of "$reply")
approve alice "$travel" block-source
wait_state "$travel" completed
reply=$(send_as_engine "$(decision host.compromised reimage '{"host": "web-2"}')")
reimage=$(execution_of "$reply")
approve alice "$reimage" wipe
runuser -u bob -- playbookd ctl --socket /run/playbookd/control.sock approve "$reimage" wipe --reason "second approver"
wait_state "$reimage" completed
psql_db "SELECT output->'stdout'->>'text' FROM playbook_step_runs WHERE execution_id = '$reimage' AND step_id = 'wipe'" \
    | grep -q 'reimage requested: --host web-2' || fail "reimage-host did not run"
reply=$(send_as_engine "$(decision bench.noop run '{}')")
wait_state "$(execution_of "$reply")" completed
nft list table inet playbookd | grep -E '198\.51\.100\.(9|20|30)' | head -3
for address in 198.51.100.9 198.51.100.20 198.51.100.30; do
    nft list table inet playbookd | grep -q "$address" || fail "$address not blocked"
done

step "journald fields of the run"
journalctl --no-pager -o verbose "EXECUTION_ID=$execution" | tee /tmp/run.journal | grep -E '^ *(PLAYBOOK_ID|STEP_ID)=' | sort -u
grep -q 'PLAYBOOK_ID=nspawn-contain' /tmp/run.journal || fail "no journald entry with the run's fields"

step "SIGKILL: systemd restarts the daemon, the sockets stay, a decision sent meanwhile is answered"
inode=$(stat -c %i /run/playbookd/decisions.sock)
old_pid=$(systemctl show -P MainPID playbookd)
systemctl kill -s KILL playbookd.service
reply=$(runuser -u engine -- bash -c "$(declare -f send_line); send_line /run/playbookd/decisions.sock '$(decision nspawn.noop run '{}')'")
echo "$reply"
grep -q '"accepted"' <<<"$reply" || fail "decision during the restart not accepted: $reply"
new_pid=$(systemctl show -P MainPID playbookd)
[ "$new_pid" != "$old_pid" ] && [ "$new_pid" != 0 ] || fail "not restarted ($old_pid -> $new_pid)"
[ "$(stat -c %i /run/playbookd/decisions.sock)" = "$inode" ] || fail "decisions.sock was re-created"
systemctl show -P NRestarts playbookd

step "reload"
systemctl reload playbookd.service
for _ in $(seq 1 50); do
    journalctl --no-pager -u playbookd -g 'registry reloaded' -q >/dev/null && break
    sleep 0.1
done
journalctl --no-pager -u playbookd -g 'registry reloaded' -q | tail -1 | grep -q reloaded || fail "no reload"

step "stop"
systemctl stop playbookd.service
[ "$(systemctl show -P ExecMainStatus playbookd)" = 0 ] || fail "exit status $(systemctl show -P ExecMainStatus playbookd)"
[ -S /run/playbookd/decisions.sock ] || fail "decisions.sock gone with the service"
echo "all good"
