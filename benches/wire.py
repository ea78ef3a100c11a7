#!/usr/bin/env python3
"""Where a decision's time goes, read off the wire (issue 16): the server's share against the
daemon's, from a capture of the daemon's PostgreSQL traffic during `playbookd bench`.

    benches/wire.py CAPTURE PHASES BENCH_OUTPUT

CAPTURE is a pcap of the loopback interface (tcpdump -i lo -s 128 'tcp port PORT'), PHASES the
bench's stderr with each line prefixed by the epoch time it was printed (the phase names),
BENCH_OUTPUT its table. `benches/wire.sh` makes all three and calls this.

A *flight* is what the client sends before the server answers: from its first packet to the
server's last packet before the client sends again. Its time is the server's (parse, execution, WAL flush, the loopback
hop); the time from an answer to the client's next flight on the same connection is the
daemon's (the writer answering the run, the run's next step, the writer building the next
statement). Reported:

- open loop (lone runs, 100 offered/s): the audit writer's connection is the client port with
  the most flights; its flights come in runs (a gap of more than 2 ms between two flights ends
  a run); for runs of the usual number of flights: the server's time for each flight, the
  daemon's gaps between them, the span from the first flight to the last answer, and what the
  bench's decision-to-completed p50 adds to that span (the decision's way in through the
  daemon's socket before the first flight, and the bench's own wake-ups; the completion's
  NOTIFY to the bench after the last). The way in is the bench's p50 less the other parts'
  medians: a median of a sum is not the sum of the medians, so read it as approximate;
- 1 connection (closed loop): the server's time a decision on the writer's two connections (its
  admission and the later records of its run, which share the writer with the next decisions),
  against the bench's reply p50.
"""
import bisect
import os
import re
import statistics
import struct
import sys
from collections import Counter, defaultdict

GAP_ENDS_RUN_S = 0.002


def packets(path, port):
    """(time, client port, from client, payload length) of each TCP packet with a payload."""
    with open(path, "rb") as capture:
        header = capture.read(24)
        magic = struct.unpack("<I", header[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            sys.exit(f"{path}: not a little-endian pcap file")
        scale = 1e-6 if magic == 0xA1B2C3D4 else 1e-9
        if struct.unpack("<I", header[20:24])[0] != 1:
            sys.exit(f"{path}: expected an Ethernet-framed capture (tcpdump -i lo)")
        while True:
            record = capture.read(16)
            if len(record) < 16:
                return
            seconds, fraction, included, _ = struct.unpack("<IIII", record)
            frame = capture.read(included)
            ip = frame[14:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            ip_header = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ip_header:]
            source, destination = struct.unpack(">HH", tcp[:4])
            payload = total - ip_header - (tcp[12] >> 4) * 4
            if payload <= 0:
                continue
            at = seconds + fraction * scale
            if destination == port:
                yield at, source, True, payload
            elif source == port:
                yield at, destination, False, payload


def flights(stream):
    """Per client port: (sent, answered) of each flight, in order. A flight ends at the server's
    last packet before the client sends again: the writer awaits a flight's answers before its
    next flight, and the server answers a flight of several statements in several packets."""
    by_port = defaultdict(list)
    open_flights = {}
    for at, client, from_client, _ in stream:
        flight = open_flights.get(client)
        if from_client:
            if flight is None or flight[1] is None:
                open_flights[client] = (flight[0] if flight else at, None)
            else:
                by_port[client].append(flight)
                open_flights[client] = (at, None)
        elif flight is not None:
            open_flights[client] = (flight[0], at)
    for client, flight in open_flights.items():
        if flight[1] is not None:
            by_port[client].append(flight)
    return by_port


def phases(path):
    """Phase name -> (start, end) epoch seconds, from the timestamped bench stderr."""
    marks = []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            at, _, text = line.partition(" ")
            if text.startswith("bench: "):
                marks.append((float(at), text[len("bench: "):].strip()))
    spans = {}
    for (start, name), (end, _) in zip(marks, marks[1:]):
        spans[name] = (start, end)
    return spans


def table(path):
    values = {}
    with open(path, encoding="utf-8") as bench:
        for line in bench:
            seconds = re.search(r"([0-9.]+) s per phase", line)
            if seconds:
                values["phase seconds"] = float(seconds.group(1))
            cells = [cell.strip() for cell in line.split("|")]
            if len(cells) > 3:
                values[cells[1]] = cells[2]
    return values


def ms(value):
    return f"{value * 1000:.3f} ms"


def median(values):
    return statistics.median(values) if values else float("nan")


def window(by_port, start, end):
    return {
        port: [(sent, answered) for sent, answered in trips if start <= sent and answered <= end]
        for port, trips in by_port.items()
    }


def pushes(stream, start, end):
    """Times of the server's packets to connections that sent nothing in [start, end]: the
    bench's LISTEN connection, to which the completion's NOTIFY goes."""
    sent, pushed = set(), defaultdict(list)
    for at, client, from_client, _ in stream:
        if start <= at <= end:
            if from_client:
                sent.add(client)
            else:
                pushed[client].append(at)
    return sorted(at for client, times in pushed.items() if client not in sent for at in times)


def open_loop(trips, notified, reported_p50):
    if not any(trips.values()):
        sys.exit("wire.py: no flight of the writer in the open loop's window")
    writer, own = max(trips.items(), key=lambda item: len(item[1]))
    runs, run = [], []
    for trip in own:
        if run and trip[0] - run[-1][1] > GAP_ENDS_RUN_S:
            runs.append(run)
            run = []
        run.append(trip)
    if run:
        runs.append(run)
    usual, _ = Counter(len(r) for r in runs).most_common(1)[0]
    runs = [r for r in runs if len(r) == usual]
    print(f"open loop: writer's connection (client port {writer}): {len(own)} flights; "
          f"{len(runs)} runs of {usual} flights, the usual number, used below")
    server = [median([r[i][1] - r[i][0] for r in runs]) for i in range(usual)]
    gaps = [median([r[i + 1][0] - r[i][1] for r in runs]) for i in range(usual - 1)]
    span = median([r[-1][1] - r[0][0] for r in runs])
    served = sum(server)
    print("  server, each flight p50:  " + " + ".join(ms(s) for s in server) + f" = {ms(served)}")
    print("  daemon between flights p50: " + " + ".join(ms(g) for g in gaps)
          + f" = {ms(sum(gaps))}")
    print(f"  first flight to last answer p50: {ms(span)}")
    delays = []
    for r in runs:
        at = bisect.bisect_left(notified, r[-1][1])
        if at < len(notified) and notified[at] - r[-1][1] < GAP_ENDS_RUN_S:
            delays.append(notified[at] - r[-1][1])
    notify = median(delays)
    print(f"  last answer to the completion's NOTIFY on the bench's connection p50: {ms(notify)} "
          f"({len(delays)} runs)")
    if reported_p50 is not None:
        way_in = reported_p50 / 1000 - span - notify
        print(f"  bench decision-to-completed p50 {reported_p50:.2f} ms = the decision's way in to "
              f"the first flight {ms(way_in)} (the rest) + the flights' span + the NOTIFY; the "
              f"server's flights are {served / (reported_p50 / 1000):.0%} of it, the daemon's "
              f"gaps and way in {(sum(gaps) + way_in) / (reported_p50 / 1000):.0%}")


def one_connection(trips, start, end, rate, reply_p50):
    busiest = sorted(trips.items(), key=lambda item: -len(item[1]))[:2]
    length = end - start
    print("1 connection (closed loop): the writer's connections, by flights:")
    for port, own in busiest:
        busy = sum(answered - sent for sent, answered in own)
        print(f"  client port {port}: {len(own)} flights, the server busy {busy / length:.0%} "
              f"of the phase")
    if rate:
        decisions = rate * length
        server = sum(answered - sent for _, own in busiest for sent, answered in own)
        count = sum(len(own) for _, own in busiest)
        print(f"  a decision with its run: {count / decisions:.1f} flights, {ms(server / decisions)} "
              f"of the server's time; a decision every {ms(1 / rate)}; bench reply p50 "
              f"{reply_p50} ms")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    capture, phase_log, bench_output = sys.argv[1:]
    spans = phases(phase_log)
    values = table(bench_output)
    baseline = values.get("INSERT+COMMIT latency p50, 1 connection")
    print(f"bench: INSERT+COMMIT p50 {baseline} ms (1 connection, the baseline)")
    port = int(os.environ.get("PGPORT", "5432"))
    captured = list(packets(capture, port))
    by_port = flights(captured)
    if not by_port:
        sys.exit(f"wire.py: {capture} holds no PostgreSQL flight on port {port}: is the server on "
                 f"this machine's loopback, at that port (PGPORT)?")
    if "phase seconds" not in values:
        sys.exit(f"wire.py: {bench_output} is not a `playbookd bench` table (no 's per phase')")
    margin = 0.3
    phase = values["phase seconds"]
    for name, (start, end) in spans.items():
        end = min(end, start + phase)
        if name.startswith("open loop"):
            p50 = values.get("open loop decision-to-completed p50")
            open_loop(window(by_port, start + margin, end - margin),
                      pushes(captured, start + margin, end - margin),
                      float(p50) if p50 else None)
        elif name == "intake, 1 connection":
            rate = values.get("accepted decisions/s, 1 connection")
            one_connection(window(by_port, start + margin, end - margin), start + margin,
                           end - margin, float(rate) if rate else None,
                           values.get("reply latency p50, 1 connection"))


if __name__ == "__main__":
    main()
