#!/usr/bin/env python3
"""Where the audit writer's time goes, from a daemon log written with
PLAYBOOKD_LOG=info,perf=debug (one `batch` line per audit batch, at its COMMIT).

    benches/perf_log.py LOG                 one line per second: batches, paths, requests a
                                            batch, effects time and queue wait (medians)
    benches/perf_log.py LOG FROM TO         and, for the seconds FROM..TO (HH:MM:SS, UTC), the
                                            writer's duty cycle: the share of the time a
                                            batch's effects were running, effects time a
                                            request, and the gap from a batch's effects to the
                                            next batch's start

`playbookd bench` writes the daemon's log into its scratch directory and removes it at the end:
copy it while the bench runs (`tail -F -n +1 /tmp/pbd-bench-*/playbookd.log > LOG`).
Effects of one batch run one after another on one backend, so 1 / (effects a request ×
requests a run) bounds the requests (and runs) a second while the duty cycle is near 100 %.
"""
import re
import statistics
import sys
from collections import defaultdict
from datetime import datetime

FIELD = re.compile(r'(\w+)="?([\w.]+)"?')


def batches(path):
    with open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            if "DEBUG batch" not in line:
                continue
            at = datetime.strptime(line[:26], "%Y-%m-%dT%H:%M:%S.%f")
            yield at, dict(FIELD.findall(line))


def us(batch, key):
    return int(batch[key])


def quantile(values, q):
    values = sorted(values)
    return values[int(q * (len(values) - 1))]


def per_second(rows):
    by_second = defaultdict(list)
    for at, batch in rows:
        by_second[at.strftime("%H:%M:%S")].append(batch)
    for second, group in sorted(by_second.items()):
        paths = defaultdict(int)
        for batch in group:
            paths[batch.get("path", "?")] += 1
        requests = statistics.mean(us(b, "requests") for b in group)
        effects = statistics.median(us(b, "effects_us") - us(b, "begin_us") for b in group)
        queue = statistics.median(us(b, "queue_us") for b in group)
        print(f"{second} batches {len(group):4} requests/batch {requests:5.1f} "
              f"effects p50 {effects:6} us queue p50 {queue:6} us {dict(paths)}")


def duty(rows, start, end):
    window = [(at, b) for at, b in rows if start <= at.strftime("%H:%M:%S") <= end]
    if len(window) < 2:
        sys.exit(f"fewer than two batches between {start} and {end}")
    seconds = (window[-1][0] - window[0][0]).total_seconds()
    effects = sum(us(b, "effects_us") - us(b, "begin_us") for _, b in window) / 1e6
    requests = sum(us(b, "requests") for _, b in window)
    # A batch's start: its log line is written at its COMMIT, commit_us after its start.
    spans = sorted((at.timestamp() - us(b, "commit_us") / 1e6, us(b, "effects_us") / 1e6)
                   for at, b in window)
    gaps = [(later[0] - (earlier[0] + earlier[1])) * 1e6
            for earlier, later in zip(spans, spans[1:])]
    print(f"{start}..{end}: {seconds:.2f} s, {len(window)} batches, {requests} requests "
          f"({requests / seconds:.0f}/s); effects running {100 * effects / seconds:.0f} % of "
          f"the time, {1e6 * effects / requests:.0f} us a request; from a batch's effects to "
          f"the next batch's start p50 {quantile(gaps, .5):.0f} us "
          f"(p10 {quantile(gaps, .1):.0f}, p90 {quantile(gaps, .9):.0f})")


def main():
    if len(sys.argv) not in (2, 4):
        sys.exit(__doc__)
    rows = list(batches(sys.argv[1]))
    if not rows:
        sys.exit("no `batch` lines: was the daemon run with PLAYBOOKD_LOG=info,perf=debug?")
    per_second(rows)
    if len(sys.argv) == 4:
        duty(rows, sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    main()
