"""gRPC echo service of Kite's kernel tests, on Python's grpcio (gRPC C-core).

Usage:
  grpc_echo.py server PORT
  grpc_echo.py client TARGET CALLS CONCURRENCY SPEC [churn]
  (TARGET `tls:CA_FILE@HOST:PORT`: the client over TLS, trusting CA_FILE)

The same service and command line exist on grpc-go (grpc_echo.go) and tonic
(kite-grpc-echo), so a test can pair any client with any server.

Service `kite.test.Echo`, raw-bytes messages (no protobuf: every stack's own framing, HPACK and
status handling, none of its code generation). A request is ASCII "DELAY_MS CODE N":
  Unary, Lookup   sleep DELAY_MS, then answer the request (CODE 0) or fail with status CODE
  Stream          sleep DELAY_MS, send N messages, then end with status CODE
SPEC is a comma-separated list of METHOD:DELAY_MS:CODE[:N]; the client makes CALLS calls
cycling through it, CONCURRENCY at a time over one channel (one HTTP/2 connection), and prints
one JSON object: {"calls": [[method, code, ms_to_first_message_or_status, ms_to_end], ...],
"echoed": calls whose metadata came back}.
With `churn`, every call carries metadata `x-kite-call: <unique 57 bytes>`, which the server
sends back as `x-kite-echo`: both directions' HPACK dynamic tables fill and evict all along a
long-lived connection.
"""
import concurrent.futures
import json
import os
import sys
import threading
import time

import grpc

SERVICE = "kite.test.Echo"


def parse(req):
    parts = req.decode().split()
    delay, code = float(parts[0]), int(parts[1])
    n = int(parts[2]) if len(parts) > 2 else 1
    return delay, code, n


def fail(context, code):
    status = next(s for s in grpc.StatusCode if s.value[0] == code)
    context.abort(status, "kite test status %d" % code)


def echo_metadata(context):
    for k, v in context.invocation_metadata():
        if k == "x-kite-call":
            context.send_initial_metadata((("x-kite-echo", v),))


def unary(req, context):
    echo_metadata(context)
    delay, code, _ = parse(req)
    time.sleep(delay / 1000.0)
    if code != 0:
        fail(context, code)
    return req


def stream(req, context):
    echo_metadata(context)
    delay, code, n = parse(req)
    time.sleep(delay / 1000.0)
    for i in range(n):
        yield b"message %d" % i
    if code != 0:
        fail(context, code)


def server(port):
    s = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=128))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Lookup": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    s.add_insecure_port("127.0.0.1:%d" % port)
    s.start()
    s.wait_for_termination()


def client(target, calls, concurrency, spec, churn):
    plan = []
    for item in spec.split(","):
        f = item.split(":")
        plan.append((f[0], "%s %s %s" % (f[1], f[2], f[3] if len(f) > 3 else 1)))
    # One connection: no per-call channel, no subchannel pool.
    opts = [("grpc.use_local_subchannel_pool", 1)]
    if target.startswith("tls:"):
        # tls:CA_FILE@HOST:PORT: over TLS, trusting CA_FILE (the TLS tests' own certificate).
        ca, target = target[len("tls:"):].split("@", 1)
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        ch = grpc.secure_channel(target, creds, options=opts)
    else:
        ch = grpc.insecure_channel(target, options=opts)
    grpc.channel_ready_future(ch).result(timeout=10)
    out = [None] * calls
    nxt = [0]
    echoed = [0]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= calls:
                return
            method, req = plan[i % len(plan)]
            path = "/%s/%s" % (SERVICE, method)
            md = (("x-kite-call", "%08d-%s" % (i, os.urandom(24).hex())),) if churn else None
            t0 = time.perf_counter()
            first = None
            code = 0
            call = None
            try:
                if method == "Stream":
                    call = ch.unary_stream(path)(req.encode(), timeout=30, metadata=md)
                    for _ in call:
                        if first is None:
                            first = time.perf_counter()
                else:
                    _, call = ch.unary_unary(path).with_call(req.encode(), timeout=30, metadata=md)
            except grpc.RpcError as e:
                code = e.code().value[0]
                call = e
            if md and any(k == "x-kite-echo" and v == md[0][1] for k, v in
                          list(call.initial_metadata() or ()) + list(call.trailing_metadata() or ())):
                with lock:
                    echoed[0] += 1
            t1 = time.perf_counter()
            first = first or t1
            out[i] = [method, code, (first - t0) * 1e3, (t1 - t0) * 1e3]

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ch.close()
    json.dump({"calls": out, "echoed": echoed[0]}, sys.stdout)
    sys.stdout.write("\n")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "server":
        server(int(sys.argv[2]))
    elif len(sys.argv) in (6, 7) and sys.argv[1] == "client":
        churn = sys.argv[6:] == ["churn"]
        if len(sys.argv) == 7 and not churn:
            sys.exit(__doc__)
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], churn)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
