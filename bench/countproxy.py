#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that counts the bytes of each HTTP/1.x request.

usage: countproxy.py TARGET_HOST TARGET_PORT PORT_FILE [MAX_SECONDS]

Listens on two fresh loopback ports: one forwards every connection to
TARGET_HOST:TARGET_PORT unchanged, the other takes control commands. Writes
"DATA_PORT CONTROL_PORT" to PORT_FILE once both listen. Exits by itself after
MAX_SECONDS (default 14400).

Bytes are TCP payload (HTTP headers and bodies, no TCP/IP overhead). On each
connection, a chunk from the client that starts with an HTTP request line
begins a new request; every byte either way until the next one is counted
against it (HTTP/1.1 without pipelining, which is what Ferry's client does).

Control (connect, send one line, read the answer until EOF):
  reset   forget every record; requests still open restart from zero bytes
          (they keep their request line, with "cont": true)  -> "ok"
  dump    the records since the last reset, as a JSON array of
          {"conn", "t" (start, epoch ms), "req", "up", "down", "cont"}
  totals  {"up", "down", "connections"} since the proxy started
"""

import asyncio
import json
import os
import re
import sys
import time

REQUEST_LINE = re.compile(rb"^(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) (\S+) HTTP/1\.[01]\r\n")


class Records:
    def __init__(self):
        self.closed = []
        self.current = {}  # conn id -> open record
        self.total_up = 0
        self.total_down = 0
        self.connections = 0

    def new_request(self, conn, line):
        old = self.current.get(conn)
        if old is not None:
            self.closed.append(old)
        rec = {"conn": conn, "t": time.time() * 1000.0, "req": line, "up": 0, "down": 0, "cont": False}
        self.current[conn] = rec
        return rec

    def up(self, conn, data):
        self.total_up += len(data)
        m = REQUEST_LINE.match(data)
        if m:
            rec = self.new_request(conn, (m.group(1) + b" " + m.group(2)).decode("latin-1"))
        else:
            rec = self.current.get(conn) or self.new_request(conn, "?")
        rec["up"] += len(data)

    def down(self, conn, data):
        self.total_down += len(data)
        rec = self.current.get(conn) or self.new_request(conn, "?")
        rec["down"] += len(data)

    def end(self, conn):
        rec = self.current.pop(conn, None)
        if rec is not None:
            self.closed.append(rec)

    def reset(self):
        self.closed = []
        for conn, rec in list(self.current.items()):
            self.current[conn] = dict(rec, up=0, down=0, cont=True)

    def dump(self):
        return sorted(self.closed + list(self.current.values()), key=lambda r: r["t"])


async def pump(reader, writer, count):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            count(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    target_host, target_port, port_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    max_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 14400.0
    recs = Records()
    next_id = [0]

    async def handle(client_r, client_w):
        next_id[0] += 1
        conn = next_id[0]
        recs.connections += 1
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(target_host, target_port), 10)
        except (OSError, asyncio.TimeoutError):
            client_w.close()
            return
        a = asyncio.ensure_future(pump(client_r, up_w, lambda d: recs.up(conn, d)))
        b = asyncio.ensure_future(pump(up_r, client_w, lambda d: recs.down(conn, d)))
        await asyncio.wait([a, b], return_when=asyncio.FIRST_COMPLETED)
        for w in (up_w, client_w):
            try:
                w.close()
            except OSError:
                pass
        await asyncio.gather(a, b, return_exceptions=True)
        recs.end(conn)

    async def control(r, w):
        try:
            line = (await asyncio.wait_for(r.readline(), 10)).decode().strip()
            if line == "reset":
                recs.reset()
                out = "ok\n"
            elif line == "dump":
                out = json.dumps(recs.dump()) + "\n"
            elif line == "totals":
                out = json.dumps({"up": recs.total_up, "down": recs.total_down, "connections": recs.connections}) + "\n"
            else:
                out = "unknown command\n"
            w.write(out.encode())
            await w.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            w.close()

    async def run():
        data = await asyncio.start_server(handle, "127.0.0.1", 0)
        ctl = await asyncio.start_server(control, "127.0.0.1", 0)
        ports = (data.sockets[0].getsockname()[1], ctl.sockets[0].getsockname()[1])
        with open(port_file + ".tmp", "w") as f:
            f.write(f"{ports[0]} {ports[1]}\n")
        os.replace(port_file + ".tmp", port_file)
        await asyncio.sleep(max_seconds)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
