"""Test HTTP/1.1 server for Kite's kernel tests.

Usage: httpd.py HOST PORT [--dualstack]

Routes (GET and POST; POST bodies are read by Content-Length and ignored):
  /d/<ms>        sleep <ms> milliseconds (a decimal number), then 200 "ok"
  /status/<code>[/<ms>] answer <code> with a short body, after <ms> milliseconds
  /big/<n>[/<ms>] 200 with an n-byte body, after <ms> milliseconds
  /chunked/<n>   200 with an n-byte body in chunked encoding (several chunks)
  /trap          200 whose body, written separately, looks like HTTP messages
  anything else  200 "hello"
A `delay=<ms>` query parameter (any route) sleeps <ms> milliseconds first.
The handler writes headers and body with separate send() calls (Python's default), which
exercises headers/body split over segments. Nagle is off so latencies are the server's own.
"""
import http.server
import socket
import sys
import time

TRAP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _body(self, code, body, chunked=False):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = max(1, len(body) // 3)
            for i in range(0, len(body), step):
                part = body[i : i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _route(self):
        query = self.path.partition("?")[2]
        for kv in query.split("&"):
            if kv.startswith("delay="):
                time.sleep(float(kv[6:]) / 1000.0)
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "d" and len(parts) == 2:
            time.sleep(float(parts[1]) / 1000.0)
            return self._body(200, b"ok")
        if parts[0] == "status" and len(parts) in (2, 3):
            if len(parts) == 3:
                time.sleep(int(parts[2]) / 1000.0)
            return self._body(int(parts[1]), b"status %s\n" % parts[1].encode())
        if parts[0] == "big" and len(parts) in (2, 3):
            if len(parts) == 3:
                time.sleep(int(parts[2]) / 1000.0)
            return self._body(200, b"x" * int(parts[1]))
        if parts[0] == "chunked" and len(parts) == 2:
            return self._body(200, b"y" * int(parts[1]), chunked=True)
        if parts[0] == "trap":
            return self._body(200, TRAP)
        return self._body(200, b"hello\n")

    def do_GET(self):
        self._route()

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self._route()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, host, port, dualstack):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.dualstack = dualstack
        super().__init__((host, port), Handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if self.dualstack else 1)
        super().server_bind()


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    Server(host, port, "--dualstack" in sys.argv).serve_forever()
