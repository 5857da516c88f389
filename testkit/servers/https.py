"""The test HTTP/1.1 server (httpd.py's routes) over TLS, through Python's ssl (OpenSSL).

Usage: https.py HOST PORT CERT KEY
"""
import os
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpd  # noqa: E402

if __name__ == "__main__":
    host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = httpd.Server(host, port, False)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()
