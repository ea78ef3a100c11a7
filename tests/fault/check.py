#!/usr/bin/env python3
"""The invariants checked after each fault class (talks to PostgreSQL directly, with psql).

    check.py DATABASE_URL OUTDIR CLASS WAIT_SECONDS

Waits (bounded) until every execution of CLASS is terminal, then prints one JSON object:
  executions     executions of this class in the database
  lost           accepted (per the client) but missing or not terminal, plus any execution of the
                 class still not terminal after WAIT_SECONDS
  duplicated     executions beyond the first for one decision_id, plus `KEY TAG` lines that
                 appear twice in the effects file (an effect applied twice under one key)
  unaudited      counter invocations of a step (or undo) beyond the `step.started`
                 (`rollback.step_started`) events recorded for it, plus invocations under a key
                 that no step or undo has
  inconsistent   effect keys that differ from the steps (undos) recorded as succeeded, plus runs
                 whose terminal state is not the one their subject asked for, plus (quarantine)
                 victims lost or damaged
  invocations / distinct_keys   raw counter invocations vs distinct keys (re-runs after faults)
  problems       the first few problems, spelled out
"""

import collections
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid

TERMINAL = {"completed", "rolled_back", "safe_halted", "cancelled", "timed_out", "rejected"}


def psql(url, sql):
    out = subprocess.run(
        ["psql", "-X", "-q", "-At", "-F", "\t", url, "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def read_pairs(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(line.split(" ", 1)) for line in f.read().splitlines() if line]


def undo_key(execution_id, step_id):
    digest = hashlib.sha256(uuid.UUID(execution_id).bytes + step_id.encode() + b"\0rollback")
    return digest.hexdigest()


def main():
    url, outdir, cls, wait = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    if not cls.replace("_", "").isalnum():
        sys.exit(f"bad class name {cls!r}")
    where = f"e.subject->>'class' = '{cls}'"
    problems = []

    deadline = time.monotonic() + wait
    while True:
        executions = {
            r[0]: {"state": r[1], "decision": r[2], "fail": r[3], "path": r[4]}
            for r in psql(
                url,
                "SELECT execution_id, state, policy_decision_id, subject->>'fail', "
                f"COALESCE(subject->>'path', '') FROM playbook_executions e WHERE {where}",
            )
        }
        open_runs = [i for i, e in executions.items() if e["state"] not in TERMINAL]
        if not open_runs or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    lost = 0
    for execution_id, _decision in read_pairs(os.path.join(outdir, f"accepted.{cls}")):
        if execution_id not in executions:
            lost += 1
            problems.append(f"accepted {execution_id} is not in the database")
    for execution_id in open_runs:
        lost += 1
        problems.append(f"{execution_id} still {executions[execution_id]['state']}")

    duplicated = 0
    per_decision = collections.Counter(e["decision"] for e in executions.values())
    for decision, n in per_decision.items():
        if n > 1:
            duplicated += n - 1
            problems.append(f"decision {decision} has {n} executions")
    effects = read_pairs(os.path.join(outdir, f"effects.{cls}"))
    for line, n in collections.Counter(effects).items():
        if n > 1:
            duplicated += n - 1
            problems.append(f"effect {line} applied {n} times")

    steps = psql(
        url,
        "SELECT s.execution_id, s.step_id, s.state, encode(s.idempotency_key, 'hex'), "
        "s.error IS NOT NULL, s.action FROM playbook_step_runs s "
        f"JOIN playbook_executions e USING (execution_id) WHERE {where}",
    )
    undos = psql(
        url,
        "SELECT r.execution_id, s.step_id, r.state FROM playbook_rollback_states r "
        "JOIN playbook_step_runs s USING (execution_id, step_index) "
        f"JOIN playbook_executions e ON e.execution_id = r.execution_id WHERE {where}",
    )
    started = collections.Counter()
    for execution_id, step_id, event_type, n in psql(
        url,
        "SELECT event_data->>'execution_id', event_data->>'step_id', event_type, count(*) "
        "FROM playbook_audit_log WHERE event_type IN ('step.started', 'rollback.step_started') "
        "GROUP BY 1, 2, 3",
    ):
        started[(execution_id, step_id, event_type)] = int(n)

    owner = {}
    succeeded, undone = set(), set()
    failed_with_error = set()
    for execution_id, step_id, state, key, has_error, action in steps:
        if state == "failed" and has_error == "t":
            failed_with_error.add((execution_id, step_id))
        if action != "exec":
            continue  # only exec steps run the counter
        owner[(key, "do")] = (execution_id, step_id, "step.started")
        if state in ("succeeded", "rolled_back"):
            succeeded.add(key)
    for execution_id, step_id, state in undos:
        if step_id == "quarantine":
            continue  # undone by file.restore, not the counter
        key = undo_key(execution_id, step_id)
        owner[(key, "undo")] = (execution_id, step_id, "rollback.step_started")
        if state == "succeeded":
            undone.add(key)

    unaudited = 0
    raw = collections.Counter(read_pairs(os.path.join(outdir, f"effects.{cls}.raw")))
    for (key, tag), n in raw.items():
        if (key, tag) not in owner:
            unaudited += n
            problems.append(f"counter ran under key {key} ({tag}) that no step has")
            continue
        audited = started[owner[(key, tag)]]
        if n > audited:
            unaudited += n - audited
            problems.append(f"{owner[(key, tag)]} ran {n} times after {audited} audit records")

    inconsistent = 0
    for tag, recorded in (("do", succeeded), ("undo", undone)):
        applied = {k for k, t in effects if t == tag}
        for key in applied ^ recorded:
            inconsistent += 1
            problems.append(f"{tag} key {key}: effect applied {key in applied}, recorded {key in recorded}")

    victims = dict(read_pairs(os.path.join(outdir, f"victims.{cls}")))
    for execution_id, e in executions.items():
        if e["state"] not in TERMINAL:
            continue
        if e["path"]:
            # Quarantine runs: completed or rolled back, but consistent with the files.
            if e["state"] == "completed":
                if os.path.exists(e["path"]):
                    inconsistent += 1
                    problems.append(f"{execution_id} completed but {e['path']} is still there")
            elif e["state"] == "rolled_back":
                if (execution_id, "quarantine") not in failed_with_error:
                    inconsistent += 1
                    problems.append(f"{execution_id} rolled back without a recorded quarantine failure")
                try:
                    with open(e["path"], "rb") as f:
                        intact = hashlib.sha256(f.read()).hexdigest() == victims.get(e["path"])
                except OSError:
                    intact = False
                if not intact:
                    inconsistent += 1
                    problems.append(f"{execution_id}: victim {e['path']} lost or changed")
            else:
                inconsistent += 1
                problems.append(f"{execution_id} ended {e['state']}")
        else:
            want = "rolled_back" if e["fail"] == "fail" else "completed"
            if e["state"] != want:
                inconsistent += 1
                problems.append(f"{execution_id} ended {e['state']}, expected {want}")

    # Why steps failed, by the start of the message (the fault should show here).
    failures = collections.Counter(
        r[0][:70]
        for r in psql(
            url,
            "SELECT regexp_replace(s.error, '/tmp/[^ ]*', 'PATH', 'g') FROM playbook_step_runs s "
            f"JOIN playbook_executions e USING (execution_id) WHERE {where} AND s.state = 'failed' "
            "AND s.action <> 'exec'",
        )
    )

    print(
        json.dumps(
            {
                "class": cls,
                "executions": len(executions),
                "states": dict(collections.Counter(e["state"] for e in executions.values())),
                "lost": lost,
                "duplicated": duplicated,
                "unaudited": unaudited,
                "inconsistent": inconsistent,
                "invocations": sum(raw.values()),
                "distinct_keys": len(raw),
                "step_failures": dict(failures),
                "problems": problems[:10],
            }
        )
    )


if __name__ == "__main__":
    main()
