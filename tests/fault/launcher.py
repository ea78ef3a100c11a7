#!/usr/bin/env python3
"""Holds the daemon's listening sockets across kills and restarts, as systemd's socket units do
(playbookd.socket, playbookd-control.socket, playbookd-status.socket), and starts the daemon with
them whenever asked: fds 3, 4, 5 and LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES as systemd sets them.

usage: launcher.py FIFO PIDFILE EXITS STATUS_PORT DECISIONS_SOCK CONTROL_SOCK -- CMD...

Each line "start" written to FIFO starts CMD and writes its pid to PIDFILE; each child that exits
is reaped and recorded in EXITS as "PID STATUS" (the exit code, or 128+signal).
"""
import os
import signal
import socket
import sys

fifo, pidfile, exits, port, decisions, control = sys.argv[1:7]
assert sys.argv[7] == "--"
cmd = sys.argv[8:]

socks = []
for path in (decisions, control):
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o660)
    s.listen(128)
    socks.append(s)
status = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
status.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
status.bind(("127.0.0.1", int(port)))
status.listen(128)
socks.append(status)


def reap(*_):
    while True:
        try:
            pid, raw = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(raw)
        with open(exits, "a") as f:
            f.write(f"{pid} {code if code >= 0 else 128 - code}\n")


signal.signal(signal.SIGCHLD, reap)


def start():
    pid = os.fork()
    if pid == 0:
        for i, s in enumerate(socks):
            os.dup2(s.fileno(), 100 + i)
        for i in range(3):
            os.dup2(100 + i, 3 + i)
            os.close(100 + i)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "3"
        os.environ["LISTEN_FDNAMES"] = "decisions:control:status"
        os.execvp(cmd[0], cmd)
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.rename(tmp, pidfile)


with open(pidfile + ".ready", "w") as f:
    f.write("ready\n")
while True:
    with open(fifo) as commands:
        for line in commands:
            if line.strip() == "start":
                start()
            elif line.strip() == "quit":
                sys.exit(0)
