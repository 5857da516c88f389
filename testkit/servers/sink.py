"""A byte sink for non-HTTP traffic in Kite's tests and benchmarks.

Usage: sink.py PORT
Accepts connections on 127.0.0.1:PORT forever; each is read to its end, then answered with
the number of bytes it carried (decimal) and closed.
"""
import socket
import sys

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        n += len(b)
    c.sendall(str(n).encode())
    c.close()
