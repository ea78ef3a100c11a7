#!/usr/bin/env python3
"""Rewrites noop3_writer.pgbench as the audit writer sends a lone request since stop 38
(store::audit::one_statement): each BEGIN … COMMIT becomes one statement, its changes the WITH
list of the audit INSERT, sent outside a transaction block (its own transaction). Used by
flights.sh for its `one-statement` shape.

    benches/sql/one_statement.py noop3_writer.pgbench > one_statement.pgbench
"""
import re
import sys


def with_list(statement):
    """A `WITH a AS (…), b AS (…) MAIN` statement's (name, body) pairs and its MAIN."""
    items, at = [], len("WITH ")
    while True:
        match = re.match(r"\s*(\w+) AS \(", statement[at:])
        if not match:
            break
        start = at = at + match.end()
        depth, quoted = 1, False
        while depth:
            c = statement[at]
            if c == "'":
                quoted = not quoted
            elif not quoted and c in "()":
                depth += 1 if c == "(" else -1
            at += 1
        items.append((match.group(1), statement[start:at - 1]))
        comma = re.match(r"\s*,", statement[at:])
        if not comma:
            break
        at += comma.end()
    return items, statement[at:].strip()


def rewrite(lines):
    out, block, changes = [], None, 0
    for line in lines:
        if line == "BEGIN;":
            block = []
        elif line == "COMMIT;":
            *statements, insert = [s.rstrip(";") for s in block]
            assert insert.startswith("INSERT INTO playbook_audit_log"), insert
            items = []
            for statement in statements:
                if statement.startswith("WITH "):
                    named, statement = with_list(statement)
                    items += named
                changes += 1
                items.append((f"change{changes}", statement))
            out.append("WITH " + ", ".join(f"{n} AS ({b})" for n, b in items) + " " + insert + ";")
            block = None
        elif block is not None:
            block.append(line)
        elif not line.startswith("--"):
            out.append(line)
    return out


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as script:
        print("\n".join(rewrite(script.read().splitlines())))
