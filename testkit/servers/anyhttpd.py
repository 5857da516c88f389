"""The test HTTP server (httpd.py) answering any method, as keep-alive 200s.

Usage: anyhttpd.py HOST PORT

`PURGE`, `QUERY`, `PROPFIND`, lowercase `get`, ...: every method without a handler of its own
is routed like GET (`/d/<ms>`, `/status/<code>`, ...), so a connection can carry requests that
Kite must record as `_OTHER`. POST/HEAD/GET behave as in httpd.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpd  # noqa: E402


class AnyMethod(httpd.Handler):
    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.do_POST
        raise AttributeError(name)


if __name__ == "__main__":
    httpd.Handler = AnyMethod
    host, port = sys.argv[1], int(sys.argv[2])
    httpd.Server(host, port, False).serve_forever()
