#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that adds a fixed delay in both directions.

usage: latency_proxy.py --target HOST:PORT [--listen PORT] [--rtt-ms MS]
                        [--stats FILE] [--no-handshake-rtt]
                        [--max-buffer-mib N] [--max-seconds S]

Every chunk read from one side is written to the other side at its arrival
time + D, where D = rtt/2 is the one-way delay ("--rtt-ms 50": 25 ms each
way, so a request/response exchange costs 50 ms more than on loopback).
Each direction of each connection is a delay line: a reader task stamps the
chunks and queues them, a writer task sends each one when it is due, in
order. The delay therefore does not limit throughput (a 200 MiB download
runs at about the same rate as without the proxy); only the bytes in flight
of one direction are capped (--max-buffer-mib, default 64: the reader stops
reading while that much is queued, which is TCP's flow control and caps a
single stream at 64 MiB per D, e.g. 2.5 GiB/s at D = 25 ms).

A new connection also costs the round trip of TCP's handshake (a SYN and
its SYN-ACK, which the kernel completes on loopback at once): the first
client bytes are not delivered before accept + rtt + D, as they would be on
a link with that round trip. --no-handshake-rtt turns that off.

The end of one direction (FIN) is delayed like data and passed on as a
half-close; a reset or error on either side closes both.

It listens on 127.0.0.1:PORT (--listen 0, the default: a free port) and
prints the port it listens on as one line on stdout once it accepts
connections. SIGTERM or SIGINT: stops, closes every connection, writes the
stats and exits 0. SIGUSR2: cuts every open connection with a reset on both
of its sockets (what is queued or in the kernel's buffers is lost, as when a
link or a host dies) and goes on accepting new ones. It also exits by itself after --max-seconds (14400).

--stats FILE: JSON, written atomically (FILE.tmp then rename) every 0.5 s,
at once on SIGUSR1, and on exit:
  rtt_ms, one_way_ms, started_at (epoch s), written_at,
  connections (opened), open_connections,
  http_requests: HTTP/1.x request lines seen at the start of client->server
      chunks (GET|POST|PUT|DELETE|HEAD|PATCH PATH HTTP/1.x; good enough for
      clients that write each request with one write, as Ferry's does),
  http2_connections: connections that started with the HTTP/2 preface
      (their requests are not counted),
  requests_by_kind: those request lines with the query string dropped and
      every run of 16+ hex digits replaced by "*" ({"GET /x/*/y": count}),
  bytes_up (client->server), bytes_down (server->client),
  turns: the sum over connections of client->server bursts that start after
      server->client data was delivered on that connection (the first burst
      of a connection counts): the request/response round trips as seen on
      each connection; pipelined or concurrent requests on one connection
      share a turn,
  per_connection: [{id, opened_at, closed_at, requests, turns, up, down,
      http2}] (the most recent 20,000).
"""

import argparse
import asyncio
import collections
import json
import os
import re
import signal
import socket
import struct
import sys
import time

REQUEST_LINE = re.compile(rb"^(GET|POST|PUT|DELETE|HEAD|PATCH) (\S+) HTTP/1\.[01]\r\n")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEX_RUN = re.compile(r"[0-9a-fA-F]{16,}")
READ_CHUNK = 256 * 1024
KEEP_CONNS = 20000


class Stats:
    def __init__(self, rtt_ms):
        self.rtt_ms = rtt_ms
        self.started_at = time.time()
        self.connections = 0
        self.open = {}  # id -> Conn
        self.closed = collections.deque(maxlen=KEEP_CONNS)
        self.http_requests = 0
        self.http2_connections = 0
        self.by_kind = collections.Counter()
        self.bytes_up = 0
        self.bytes_down = 0
        self.turns = 0

    def snapshot(self):
        conns = [c.record() for c in self.closed] + [c.record() for c in self.open.values()]
        conns.sort(key=lambda r: r["id"])
        return {
            "rtt_ms": self.rtt_ms,
            "one_way_ms": self.rtt_ms / 2.0,
            "started_at": self.started_at,
            "written_at": time.time(),
            "connections": self.connections,
            "open_connections": len(self.open),
            "http_requests": self.http_requests,
            "http2_connections": self.http2_connections,
            "requests_by_kind": dict(self.by_kind.most_common()),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "turns": self.turns,
            "per_connection": conns[-KEEP_CONNS:],
        }


class Conn:
    def __init__(self, cid, stats):
        self.id = cid
        self.stats = stats
        self.opened_at = time.time()
        self.closed_at = None
        self.requests = 0
        self.turns = 0
        self.up = 0
        self.down = 0
        self.http2 = False
        self.first_up = True
        self.down_delivered = False  # server->client bytes delivered since the last client burst began

    def on_up(self, buf, n):
        st = self.stats
        data = bytes(memoryview(buf)[: min(n, 512)])
        self.up += n
        st.bytes_up += n
        if self.first_up:
            self.first_up = False
            if data.startswith(H2_PREFACE[: len(data)]) and len(data) >= 3:
                self.http2 = True
                st.http2_connections += 1
            self.turns += 1
            st.turns += 1
            self.down_delivered = False
        elif self.down_delivered:
            self.turns += 1
            st.turns += 1
            self.down_delivered = False
        if not self.http2:
            m = REQUEST_LINE.match(data)
            if m:
                self.requests += 1
                st.http_requests += 1
                path = m.group(2).decode("latin-1").split("?", 1)[0]
                st.by_kind[m.group(1).decode() + " " + HEX_RUN.sub("*", path)] += 1

    def on_down(self, buf, n):
        self.down += n
        self.stats.bytes_down += n

    def on_down_delivered(self):
        self.down_delivered = True

    def record(self):
        return {
            "id": self.id,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "requests": self.requests,
            "turns": self.turns,
            "up": self.up,
            "down": self.down,
            "http2": self.http2,
        }


class Pipe:
    """One direction of one connection, a delay line: each chunk read from
    src is queued with its due time (arrival + D, and for client->server not
    before the handshake's round trip) and written to dst when due, in
    order, by a timer (no task per chunk, no sleep in the read path). Flow
    control: src stops being read while more than `cap` bytes are queued or
    while dst's write buffer is full."""

    def __init__(self, loop, delay, not_before, cap, on_read, on_written):
        self.loop = loop
        self.delay = delay
        self.not_before = not_before
        self.cap = cap
        self.on_read = on_read
        self.on_written = on_written
        self.src = None
        self.dst = None
        self.queue = collections.deque()  # (due, bytes | EOF | CLOSE)
        self.queued = 0
        self.timer = None
        self.dst_full = False
        self.done = False  # EOF or close delivered
        self.on_done = None

    def data(self, buf, n):
        self.on_read(buf, n)
        due = max(self.loop.time() + self.delay, self.not_before)
        self.queue.append((due, (buf, n)))
        self.queued += n
        if self.queued >= self.cap:
            self.src.pause_reading()
        self._schedule()

    def end(self, what):
        due = max(self.loop.time() + self.delay, self.not_before)
        self.queue.append((due, what))
        self._schedule()

    def drop(self):
        self.queue.clear()
        self.queued = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _schedule(self):
        if self.timer is None and self.queue and self.dst is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self):
        self.timer = None
        now = self.loop.time()
        end = None
        wrote = False
        while self.queue and self.queue[0][0] <= now:
            _, item = self.queue.popleft()
            if item is EOF or item is CLOSE:
                end = item
                break
            buf, n = item
            self.dst.write(memoryview(buf)[:n])
            self.queued -= n
            wrote = True
            # the transport copies what it could not send at once (3.11) or
            # keeps a view of it (3.12+): reuse the buffer only if all went
            if self.dst.get_write_buffer_size() == 0 and len(POOL) < POOL_MAX:
                POOL.append(buf)
        if wrote:
            self.on_written()
            self._maybe_resume()
        if end is EOF:
            self.done = True
            if self.dst.can_write_eof():
                self.dst.write_eof()
            if self.on_done:
                self.on_done()
            return
        if end is CLOSE:
            self.done = True
            self.dst.close()
            return
        self._schedule()

    def _maybe_resume(self):
        if self.src is not None and not self.dst_full and self.queued < self.cap:
            try:
                self.src.resume_reading()
            except (RuntimeError, AttributeError):
                pass

    def dst_pause(self):
        self.dst_full = True
        if self.src is not None:
            self.src.pause_reading()

    def dst_resume(self):
        self.dst_full = False
        self._maybe_resume()


EOF = object()
CLOSE = object()
POOL = []  # receive buffers (READ_CHUNK bytes) for reuse: no allocation per chunk
POOL_MAX = 512


class Side(asyncio.BufferedProtocol):
    """The protocol of one of the two sockets of a relayed connection."""

    def __init__(self, relay, outgoing, incoming):
        self.relay = relay
        self.outgoing = outgoing  # the pipe this side's bytes go into
        self.incoming = incoming  # the pipe that writes to this side
        self.transport = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=4 << 20)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def get_buffer(self, sizehint):
        self.buf = POOL.pop() if POOL else bytearray(READ_CHUNK)
        return self.buf

    def buffer_updated(self, nbytes):
        self.outgoing.data(self.buf, nbytes)
        self.buf = None

    def eof_received(self):
        self.outgoing.end(EOF)
        return True  # keep the socket for the other direction (half-close)

    def pause_writing(self):
        self.incoming.dst_pause()

    def resume_writing(self):
        self.incoming.dst_resume()

    def connection_lost(self, exc):
        self.closed = True
        self.incoming.drop()
        if not self.outgoing.done:
            self.outgoing.end(CLOSE)  # the other side is closed once what came before is delivered
        self.relay.side_lost()


class Relay:
    def __init__(self, loop, target, args, stats, relays):
        self.loop = loop
        self.target = target
        self.stats = stats
        self.relays = relays
        stats.connections += 1
        self.conn = Conn(stats.connections, stats)
        stats.open[self.conn.id] = self.conn
        one_way = args.rtt_ms / 2000.0
        handshake = 0.0 if args.no_handshake_rtt else args.rtt_ms / 1000.0
        cap = args.max_buffer_mib << 20
        accepted = loop.time()
        self.up = Pipe(loop, one_way, accepted + handshake + one_way, cap, self.conn.on_up, lambda: None)
        self.down = Pipe(loop, one_way, 0.0, cap, self.conn.on_down, self.conn.on_down_delivered)
        self.up.on_done = self.down.on_done = self._half_done
        self.client = ClientSide(self, self.up, self.down)
        self.server = None
        self.finished = False
        relays.add(self)

    def client_made(self):
        ct = self.client.transport
        ct.pause_reading()
        self.up.src = ct
        self.down.dst = ct
        self.loop.create_task(self._connect())

    async def _connect(self):
        try:
            _, side = await asyncio.wait_for(
                self.loop.create_connection(lambda: Side(self, self.down, self.up), self.target[0], self.target[1]),
                10,
            )
        except (OSError, asyncio.TimeoutError):
            self.abort()
            return
        if self.client.closed:
            side.transport.close()
            return
        self.server = side
        self.down.src = side.transport
        self.up.dst = side.transport
        self.client.transport.resume_reading()
        self.up._schedule()

    def _half_done(self):
        if self.up.done and self.down.done:
            self.close()

    def side_lost(self):
        if self.client.closed and (self.server is None or self.server.closed):
            self._finish()

    def close(self):
        for s in (self.client, self.server):
            if s is not None and s.transport is not None and not s.closed:
                s.transport.close()

    def abort(self):
        self.up.drop()
        self.down.drop()
        for s in (self.client, self.server):
            if s is not None and s.transport is not None and not s.closed:
                s.transport.abort()
        self._finish()

    def reset(self):
        """Aborts both sockets with SO_LINGER 0: each peer gets a reset, not
        the bytes still buffered for it."""
        for s in (self.client, self.server):
            sock = s.transport.get_extra_info("socket") if s is not None and s.transport is not None else None
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
        self.abort()

    def _finish(self):
        if self.finished:
            return
        self.finished = True
        self.conn.closed_at = time.time()
        self.stats.open.pop(self.conn.id, None)
        self.stats.closed.append(self.conn)
        self.relays.discard(self)


class ClientSide(Side):
    def connection_made(self, transport):
        super().connection_made(transport)
        self.relay.client_made()


def write_stats(path, stats):
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(stats.snapshot(), f)
    os.replace(tmp, path)


async def main_async(args):
    host, _, port = args.target.rpartition(":")
    target = (host or "127.0.0.1", int(port))
    stats = Stats(args.rtt_ms)
    relays = set()
    loop = asyncio.get_running_loop()

    def factory():
        return Relay(loop, target, args, stats, relays).client

    server = await loop.create_server(factory, "127.0.0.1", args.listen, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: write_stats(args.stats, stats))
    loop.add_signal_handler(signal.SIGUSR2, lambda: [r.reset() for r in list(relays)])

    async def periodic():
        while True:
            write_stats(args.stats, stats)
            await asyncio.sleep(0.5)

    ticker = asyncio.ensure_future(periodic()) if args.stats else None
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except asyncio.TimeoutError:
        pass
    server.close()
    if ticker:
        ticker.cancel()
    for r in list(relays):
        r.abort()
    await asyncio.sleep(0)
    write_stats(args.stats, stats)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: a free one, printed)")
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="round trip added (one-way delay = half)")
    p.add_argument("--stats", default="", help="JSON stats file (every 0.5 s, on SIGUSR1, on exit)")
    p.add_argument("--no-handshake-rtt", action="store_true", help="new connections cost no extra round trip")
    p.add_argument("--max-buffer-mib", type=int, default=64, help="bytes in flight per direction (MiB)")
    p.add_argument("--max-seconds", type=float, default=14400.0, help="exit by itself after this long")
    args = p.parse_args()
    if args.rtt_ms < 0 or args.max_buffer_mib < 1:
        p.error("--rtt-ms must be >= 0 and --max-buffer-mib >= 1")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
