#!/usr/bin/env python3
"""Load for the fault campaign: a policy engine that keeps sending decisions on decisions.sock.

    client.py SOCKET OUTDIR CLASS KIND STOPFILE [WORKERS]

KIND `counted`: subject {class, effects, fail}; about one decision in five asks step three to
fail (the run must then roll back). KIND `quarantine`: each decision first creates a victim
file and names it in the subject.

Like a real engine, a decision whose reply was lost (daemon killed, connection cut, no reply
in time) is sent again with the SAME nonce until it gets an answer, so a decision accepted
twice would show up as two executions with one decision_id. Writes, in OUTDIR:
  accepted.CLASS    one line per accepted decision: execution_id decision_id
  victims.CLASS     (quarantine) one line per victim: path sha256
  replies.CLASS     a JSON summary on exit
Stops sending new decisions when STOPFILE exists, then retries what is unanswered for at most
RETRY_AFTER_STOP seconds.
"""

import hashlib
import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

REPLY_TIMEOUT = 15.0
RETRY_AFTER_STOP = 120.0
PAUSE = 0.03


def now_rfc3339():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def send(path, line):
    """The parsed reply, or None when the transport failed (nothing definite was heard)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(REPLY_TIMEOUT)
            s.connect(path)
            s.sendall(line)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
            return json.loads(data)
    except (OSError, ValueError):
        return None


class Client:
    def __init__(self, sock, outdir, cls, kind, stopfile):
        self.sock, self.outdir, self.cls, self.kind, self.stopfile = (
            sock,
            outdir,
            cls,
            kind,
            stopfile,
        )
        self.lock = threading.Lock()
        self.counts = {}
        self.accepted = open(os.path.join(outdir, f"accepted.{cls}"), "a")
        self.victims = open(os.path.join(outdir, f"victims.{cls}"), "a")
        self.effects = os.path.join(outdir, f"effects.{cls}")
        self.victim_dir = os.path.join(outdir, "victims")
        os.makedirs(self.victim_dir, exist_ok=True)

    def count(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def decision(self):
        subject = {"class": self.cls, "effects": self.effects, "fail": "no"}
        policy = "fault.counted"
        if self.kind == "counted":
            if random.random() < 0.2:
                subject["fail"] = "fail"
        else:
            policy = "fault.quarantine"
            path = os.path.join(self.victim_dir, uuid.uuid4().hex)
            content = os.urandom(64 * 1024)
            with open(path, "wb") as f:
                f.write(content)
            with self.lock:
                self.victims.write(f"{path} {hashlib.sha256(content).hexdigest()}\n")
                self.victims.flush()
            subject["path"] = path
        d = {
            "decision_id": f"d-{uuid.uuid4().hex}",
            "nonce": uuid.uuid4().hex,
            "issued_at": now_rfc3339(),
            "policy": policy,
            "outcome": "run",
            "org_id": "acme",
            "severity": "high",
            "subject": subject,
        }
        return d["decision_id"], (json.dumps(d) + "\n").encode()

    def worker(self):
        pending = []  # (decision_id, line): sent, never answered
        stop_at = None
        while True:
            if stop_at is None and os.path.exists(self.stopfile):
                stop_at = time.monotonic() + RETRY_AFTER_STOP
            if stop_at is not None and (not pending or time.monotonic() > stop_at):
                for _ in pending:
                    self.count("never_answered")
                return
            if pending:
                decision_id, line = pending.pop(0)
                self.count("resent")
            else:
                if stop_at is not None:
                    return
                decision_id, line = self.decision()
                self.count("sent")
            reply = send(self.sock, line)
            if reply is None:
                self.count("transport_failure")
                pending.append((decision_id, line))
                time.sleep(0.2)
                continue
            status = reply.get("status")
            self.count(status)
            if status == "accepted":
                with self.lock:
                    self.accepted.write(f"{reply['execution_id']} {decision_id}\n")
                    self.accepted.flush()
            elif status == "rejected":
                reason = reply.get("reason", "")
                self.count("rejected: " + reason.split(":")[0][:60])
            time.sleep(PAUSE)

    def summary(self):
        with open(os.path.join(self.outdir, f"replies.{self.cls}"), "w") as f:
            json.dump(self.counts, f, sort_keys=True)


def main():
    sock, outdir, cls, kind, stopfile = sys.argv[1:6]
    workers = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    client = Client(sock, outdir, cls, kind, stopfile)
    threads = [threading.Thread(target=client.worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.summary()


if __name__ == "__main__":
    main()
