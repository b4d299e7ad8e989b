"""A reverse proxy for the end-to-end tests: serves http://127.0.0.1:PORT/PREFIX/...
from UPSTREAM/... (the prefix stripped), as a site would put Ferry under a
path. Prints "listening PORT" once ready. Test fixture only.

usage: prefix_proxy.py UPSTREAM_HOST:PORT PREFIX [LISTEN_PORT]
"""
import http.client
import http.server
import sys

UPSTREAM, PREFIX = sys.argv[1], "/" + sys.argv[2].strip("/")
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"}


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def forward(self):
        if not (self.path == PREFIX or self.path.startswith(PREFIX + "/")):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.path[len(PREFIX):] or "/"
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn = http.client.HTTPConnection(UPSTREAM, timeout=60)
        conn.request(self.command, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward

    def log_message(self, *args):
        pass


port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Proxy)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
