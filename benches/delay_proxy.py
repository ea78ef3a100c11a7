#!/usr/bin/env python3
"""A TCP proxy that delays every chunk by a fixed time in each direction: a database on
another host, for the benches (issue 16's one-flight writes pay one round trip a transaction
where the ordinary way pays two; on loopback a round trip costs almost nothing).

    benches/delay_proxy.py LISTEN_PORT TARGET_PORT ONE_WAY_US

e.g. `benches/delay_proxy.py 6543 5432 250 &` gives a 0.5 ms round trip to the PostgreSQL on
127.0.0.1:5432; then `PLAYBOOKD_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:6543/postgres
cargo bench --bench audit`, or `playbookd bench --database-url …:6543/…`. Each chunk leaves
ONE_WAY_US after it arrived, whatever came before it (a reader and a sender thread per
direction), so a flight of several answers is delayed once, not once per answer. Loopback only.
"""
import queue
import socket
import sys
import threading
import time


def pump(source, target, delay):
    chunks = queue.Queue()

    def read():
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + delay, data))
            if not data:
                return

    def send():
        while True:
            due, data = chunks.get()
            while (left := due - time.monotonic()) > 0:
                time.sleep(left)
            try:
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(data)
            except OSError:
                return

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=send, daemon=True).start()


def main():
    listen, upstream, one_way_us = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen))
    server.listen(64)
    while True:
        client, _ = server.accept()
        database = socket.create_connection(("127.0.0.1", upstream))
        for end in (client, database):
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pump(client, database, one_way_us / 1e6)
        pump(database, client, one_way_us / 1e6)


if __name__ == "__main__":
    main()
