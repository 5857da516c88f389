"""A timing HTTP/1.1 client for Kite's kernel tests, driven by a JSON plan.

Usage: client.py HOST PORT PLAN.json

The plan: {"parallel": P, "conns": [CONN, ...]}. Each CONN is a list of batches run on one
keep-alive connection; each batch is a list of requests written with one sendall (a batch of
more than one is pipelined), then their responses are read in order. A request is
{"m": METHOD, "p": PATH, "body": N, "fill": "x" | "lines"}: a body of N bytes (with
Content-Length), made of "x" or of repeated "GET / HTTP/1.1\\r\\n" request lines.
At most P connections run at a time.

Prints one JSON object: {"results": [[METHOD, STATUS, LATENCY_NS], ...], "errors": [...]}.
A request's latency runs from the batch's write to the read that brought the first byte of
its response.
"""
import json
import socket
import sys
import threading
import time

LINE = b"GET / HTTP/1.1\r\n"


def body_of(req):
    n = req.get("body", 0)
    if not n:
        return b""
    if req.get("fill") == "lines":
        return (LINE * (n // len(LINE) + 1))[:n]
    return b"x" * n


def encode(req):
    body = body_of(req)
    head = "%s %s HTTP/1.1\r\nHost: kite-test\r\n" % (req["m"], req["p"])
    if body:
        head += "Content-Length: %d\r\n" % len(body)
    return head.encode() + b"\r\n" + body


class Reader:
    def __init__(self, s):
        self.s = s
        self.buf = b""
        self.arrivals = []  # (end offset in the stream, monotonic ns)
        self.base = 0  # stream offset of buf[0]

    def fill(self):
        d = self.s.recv(1 << 16)
        if not d:
            raise EOFError("connection closed early")
        self.buf += d
        self.arrivals.append((self.base + len(self.buf), time.monotonic_ns()))

    def first_byte_time(self):
        while not self.buf:
            self.fill()
        for end, t in self.arrivals:
            if end > self.base:
                return t
        raise AssertionError("no arrival")

    def take(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        self.base += n
        self.arrivals = [a for a in self.arrivals if a[0] > self.base] or self.arrivals[-1:]
        return out

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self.take(i + 2)[:-2].decode("latin-1")
            self.fill()

    def response(self, head):
        t = self.first_byte_time()
        status_line = self.line()
        status = int(status_line.split(" ")[1])
        length, chunked = None, False
        while True:
            l = self.line()
            if not l:
                break
            k, _, v = l.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v.strip())
            elif k == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if head or status in (204, 304) or 100 <= status < 200:
            return status, t
        if chunked:
            while True:
                size = int(self.line().split(";")[0].strip(), 16)
                if size == 0:
                    while self.line():
                        pass
                    break
                self.take(size + 2)
        elif length is not None:
            self.take(length)
        else:
            raise AssertionError("response without a length")
        return status, t


def run_conn(host, port, batches, results, errors, lock):
    try:
        s = socket.create_connection((host, port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = Reader(s)
        for batch in batches:
            data = b"".join(encode(q) for q in batch)
            sent = time.monotonic_ns()
            s.sendall(data)
            for q in batch:
                status, t = r.response(q["m"] == "HEAD")
                with lock:
                    results.append([q["m"], status, t - sent])
        s.close()
    except Exception as e:  # reported, the test fails on it
        with lock:
            errors.append(repr(e))


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    with open(sys.argv[3]) as f:
        plan = json.load(f)
    results, errors, lock = [], [], threading.Lock()
    conns = list(plan["conns"])
    sem = threading.Semaphore(plan.get("parallel", 1))
    threads = []
    for batches in conns:
        sem.acquire()

        def job(b=batches):
            try:
                run_conn(host, port, b, results, errors, lock)
            finally:
                sem.release()

        t = threading.Thread(target=job)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    json.dump({"results": results, "errors": errors}, sys.stdout)


if __name__ == "__main__":
    main()
