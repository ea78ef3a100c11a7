#!/usr/bin/env python3
"""Re-verify playbookd audit chains independently of playbookd (python3 stdlib + psql).

Recomputes every row hash of every chain (or one) and checks the signed checkpoints, exactly as
docs/audit-chain.md specifies; shares no code with the daemon, so a bug there cannot hide here.

    tools/verify_chain.py --dsn postgres://auditor@db/playbookd [--node host-1] \
                          [--trusted-node-key /var/lib/playbookd/node.pub ...]

Prints one line per node, like `playbookd audit verify`, and exits 0 when every chain is intact,
2 when a breach is found, 1 when verification could not run. Rows are read through
`psql --csv`; the whole chain of a node is held in memory.
"""

import argparse
import base64
import csv
import hashlib
import io
import json
import math
import subprocess
import sys

GENESIS = bytes(32)
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


# --- RFC 8785 (JCS) canonical JSON -----------------------------------------------------------

def jcs(value):
    """The RFC 8785 serialization of a parsed JSON value, as UTF-8 bytes."""
    return _jcs(value).encode("utf-8")


def _jcs(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        # JSON numbers are IEEE-754 doubles in JCS, integers included.
        return es6_number(float(value))
    if isinstance(value, str):
        return jcs_string(value)
    if isinstance(value, list):
        return "[" + ",".join(_jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        # Keys sorted by their UTF-16 code units (big-endian bytes compare the same way).
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(jcs_string(k) + ":" + _jcs(value[k]) for k in keys) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                  "\r": "\\r", "\t": "\\t"}


def jcs_string(text):
    out = ['"']
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def es6_number(x):
    """ECMAScript Number.prototype.toString for a finite double (RFC 8785 section 3.2.2.3)."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN and infinity are not JSON")
    if x == 0:
        return "0"
    if x < 0:
        return "-" + es6_number(-x)
    # repr() gives the shortest digit string that round-trips, as ECMAScript requires.
    mantissa, _, exponent = repr(x).partition("e")
    exponent = int(exponent) if exponent else 0
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    stripped = digits.rstrip("0")
    trailing = len(digits) - len(stripped)
    s, k = stripped, len(stripped)
    # x = s * 10^(n - k)
    n = k + exponent - len(fraction) + trailing
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + s
    e = n - 1
    sign = "+" if e >= 0 else "-"
    head = s if k == 1 else s[0] + "." + s[1:]
    return f"{head}e{sign}{abs(e)}"


# --- Ed25519 verification (RFC 8032 section 6 reference code) --------------------------------

_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _point_add(a, b):
    pa = (a[1] - a[0]) * (b[1] - b[0]) % _P
    pb = (a[1] + a[0]) * (b[1] + b[0]) % _P
    pc = 2 * a[3] * b[3] * _D % _P
    pd = 2 * a[2] * b[2] % _P
    e, f, g, h = pb - pa, pd - pc, pd + pc, pb + pa
    return (e * f, g * h, f * g, e * h)


def _point_mul(s, point):
    result = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            result = _point_add(result, point)
        point = _point_add(point, point)
        s >>= 1
    return result


def _point_equal(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _recover_x(y, sign):
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _decompress(raw):
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)


def ed25519_verify(public, message, signature):
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decompress(public)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _Q:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _Q
    return _point_equal(_point_mul(s, _G), _point_add(r, _point_mul(h, a)))


def spki_raw_key(der):
    """The 32-byte Ed25519 key inside a SubjectPublicKeyInfo DER, or None."""
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        return None
    return der[len(ED25519_SPKI_PREFIX):]


def pem_to_der(text):
    lines = [l.strip() for l in text.strip().splitlines()]
    if not lines or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise ValueError("not a PEM public key")
    return base64.b64decode("".join(lines[1:-1]), validate=True)


# --- The chain -------------------------------------------------------------------------------

def row_bytes(node_id, seq, event_type, event_data, created_at):
    return jcs({"created_at": created_at, "event_data": event_data, "event_type": event_type,
                "node_id": node_id, "seq": seq})


def checkpoint_bytes(node_id, seq, hash_hex):
    return jcs({"hash": hash_hex, "node_id": node_id, "seq": seq})


def verify_node(node_id, rows, checkpoints, pinned):
    """Returns (rows verified, last seq, breach or None); breach = (seq, text)."""
    found = []
    for cp in checkpoints:
        fault = checkpoint_fault(node_id, cp, pinned)
        if fault:
            found.append((cp["seq"], 1, fault))
            break
    prev = GENESIS
    hashes = {}  # seq -> true hash, for verified rows
    verified, last, bad = 0, 0, None
    for index, row in enumerate(rows):
        if row["seq"] != last + 1:
            found.append((last + 1, 0, "deleted: the row at this seq is missing"))
            bad = "gap"
            break
        digest = hashlib.sha256(prev + row_bytes(node_id, row["seq"], row["event_type"],
                                                 row["event_data"], row["created_at"])).digest()
        if row["prev_hash"] != prev or row["hash"] != digest:
            found.append(diagnose(rows, index, prev, digest))
            bad = "row"
            break
        hashes[row["seq"]] = digest
        prev, last, verified = digest, row["seq"], verified + 1
    for cp in checkpoints:
        if cp["seq"] <= last:
            if hashes.get(cp["seq"]) != cp["hash"]:
                found.append((cp["seq"], 1, "checkpoint mismatch: the signed hash differs from the chain's"))
        elif bad is None:
            found.append((last + 1, 0, f"truncated: a checkpoint covers seq {cp['seq']} "
                                       f"but the chain ends at seq {last}"))
    if not found:
        return verified, last, None
    seq, _, text = min(found)
    return verified, last, (seq, text)


def diagnose(rows, index, prev, recomputed):
    """Same rules as src/store/verify.rs: what happened at the first row that does not fit."""
    row = rows[index]
    r = row["seq"]
    by_hash = {}
    for other in rows:
        by_hash.setdefault(other["hash"], []).append(other["seq"])
    links_to_prev = row["prev_hash"] == prev
    if not links_to_prev and row["hash"] == recomputed:
        return (r, 0, "modified: the row does not match its hash")
    if not links_to_prev and any(j > r for j in by_hash.get(row["prev_hash"], [])):
        return (r, 0, "reordered: the row links to a row stored at a later seq")
    following = rows[index + 1] if index + 1 < len(rows) else None
    if following is not None and following["seq"] == r + 1 and following["prev_hash"] == prev:
        return (r, 0, "inserted: the row does not belong to the chain")
    if links_to_prev:
        return (r, 0, "modified: the row does not match its hash")
    if any(j < r for j in by_hash.get(row["hash"], []) if j != r):
        return (r, 0, "inserted: the row does not belong to the chain")
    earlier = [j for j in by_hash.get(row["prev_hash"], []) if j < r - 1]
    if earlier:
        return (min(earlier) + 1, 0, "inserted: the row does not belong to the chain")
    return (r, 0, "deleted: the row at this seq is missing")


def checkpoint_fault(node_id, cp, pinned):
    der = cp["public_key"]
    if der is None:
        return "forged checkpoint: no public key stored"
    raw = spki_raw_key(der)
    if raw is None:
        return "forged checkpoint: stored public key is not Ed25519"
    if hashlib.sha256(der).hexdigest() != cp["key_id"]:
        return "forged checkpoint: key_id is not the hash of the stored public key"
    if not ed25519_verify(raw, checkpoint_bytes(node_id, cp["seq"], cp["hash"].hex()), cp["signature"]):
        return "forged checkpoint: signature does not verify"
    if pinned is not None and cp["key_id"] not in pinned:
        return f"untrusted checkpoint key: signed by {cp['key_id']}, not a pinned node key"
    return None


# --- psql ------------------------------------------------------------------------------------

class Psql:
    def __init__(self, dsn):
        self.dsn = dsn

    def query(self, sql, **params):
        command = ["psql", "--csv", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        for name, value in params.items():
            command += ["-v", f"{name}={value}"]
        if self.dsn:
            command += ["-d", self.dsn]
        # SQL on stdin: psql interpolates :'name' variables there (quoted as literals).
        done = subprocess.run(command, input=sql, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return list(csv.DictReader(io.StringIO(done.stdout)))


def load_rows(db, node_id):
    rows = db.query(
        "SELECT seq, encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash, event_type, "
        "event_data::text AS event_data, "
        "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_at "
        "FROM playbook_audit_log WHERE node_id = :'node' ORDER BY seq;", node=node_id)
    return [{"seq": int(r["seq"]), "prev_hash": bytes.fromhex(r["prev_hash"]),
             "hash": bytes.fromhex(r["hash"]), "event_type": r["event_type"],
             "event_data": json.loads(r["event_data"]), "created_at": r["created_at"]}
            for r in rows]


def load_checkpoints(db, node_id):
    rows = db.query(
        "SELECT seq, encode(hash, 'hex') AS hash, key_id, encode(public_key, 'hex') AS public_key, "
        "encode(signature, 'hex') AS signature FROM audit_checkpoints "
        "WHERE node_id = :'node' ORDER BY seq;", node=node_id)
    return [{"seq": int(r["seq"]), "hash": bytes.fromhex(r["hash"]), "key_id": r["key_id"],
             "public_key": bytes.fromhex(r["public_key"]) if r["public_key"] else None,
             "signature": bytes.fromhex(r["signature"])} for r in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="PostgreSQL URL or conninfo (default: psql's environment)")
    parser.add_argument("--node", help="verify only this node's chain")
    parser.add_argument("--trusted-node-key", action="append", default=[], metavar="PUBFILE",
                        help="pin a node public key (SPKI PEM); repeatable")
    args = parser.parse_args()
    try:
        pinned = None
        if args.trusted_node_key:
            pinned = set()
            for path in args.trusted_node_key:
                with open(path, encoding="ascii") as file:
                    der = pem_to_der(file.read())
                if spki_raw_key(der) is None:
                    raise ValueError(f"{path} is not an Ed25519 public key")
                pinned.add(hashlib.sha256(der).hexdigest())
        db = Psql(args.dsn)
        nodes = [r["node_id"] for r in db.query(
            "SELECT node_id FROM playbook_audit_log UNION SELECT node_id FROM audit_checkpoints "
            "ORDER BY node_id;")]
        if args.node is not None:
            if args.node not in nodes:
                raise ValueError(f"node `{args.node}` has no audit chain and no checkpoint")
            nodes = [args.node]
        breaches = 0
        not_checked = 0
        for node_id in nodes:
            checkpoints = load_checkpoints(db, node_id)
            rows = load_rows(db, node_id)
            verified, last, breach = verify_node(node_id, rows, checkpoints, pinned)
            if breach is None:
                line = f"node {node_id}: {verified} rows, last seq {last}, {len(checkpoints)} checkpoints"
                if pinned is not None and not checkpoints:
                    not_checked += 1
                    print(f"{line}: rows ok; pinned node key NOT CHECKED: no checkpoint signed yet")
                else:
                    print(f"{line}: ok")
            else:
                breaches += 1
                stored_last = max((int(r["seq"]) for r in rows), default=0)
                done = f"seq 1..{last} verified" if last else "none verified"
                print(f"node {node_id}: {len(rows)} rows stored (last seq {stored_last}), {done}, "
                      f"{len(checkpoints)} checkpoints: BREACH at seq {breach[0]}: {breach[1]}")
        return 2 if breaches else 3 if not_checked else 0
    except (OSError, RuntimeError, ValueError) as error:
        print(f"verify_chain.py: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
