#!/usr/bin/env python3
"""A TCP proxy between playbookd and PostgreSQL that the fault campaign can block.

    proxy.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT PIDFILE

Signals:
  SIGUSR1  block: stop relaying bytes in both directions on every connection, and hold new
           connections without connecting them (the daemon sees a database that hangs,
           not one that refuses);
  SIGUSR2  unblock: relay what was held and go on.
A connection closed by either side is closed on the other side too.
"""

import asyncio
import os
import signal
import sys

CHUNK = 64 * 1024


class Proxy:
    def __init__(self, upstream_host, upstream_port):
        self.upstream = (upstream_host, upstream_port)
        self.open = asyncio.Event()
        self.open.set()

    async def pipe(self, reader, writer):
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self.open.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except (ConnectionError, OSError):
                pass

    async def handle(self, client_reader, client_writer):
        await self.open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self.pipe(client_reader, up_writer), self.pipe(up_reader, client_writer)
        )


async def main():
    listen_port, host, port, pidfile = (
        int(sys.argv[1]),
        sys.argv[2],
        int(sys.argv[3]),
        sys.argv[4],
    )
    proxy = Proxy(host, port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.open.clear)
    loop.add_signal_handler(signal.SIGUSR2, proxy.open.set)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", listen_port)
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
