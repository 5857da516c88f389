//! Real TLS peers for the TLS tests (issue 14): a self-signed certificate made by the test
//! with the `openssl` CLI, nginx with `ssl`, the Python test server over `ssl`, curl as a
//! client, and a Go HTTPS server (Go's own TLS, which Kite reports as unsupported).

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::{Nginx, Place, Proc, command, dir, run_ok, spawn, unique, wait_for_port};

/// A directory with a fresh self-signed certificate (`cert.pem`, `key.pem`) for `localhost`
/// and 127.0.0.1; removed on drop.
pub struct Certs {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("kite-tls"));
        fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        run_ok(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]));
        Self { dir, cert, key }
    }
}

impl Default for Certs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// nginx with `ssl` on 127.0.0.1:`port`, the plain test config's routes (`/`, `/d/<ms>`
/// delayed by the echo module, `/status/<code>`).
pub fn nginx_tls(place: Place<'_>, port: u16, certs: &Certs) -> Nginx {
    nginx_tls_with(place, port, certs, "")
}

/// [`nginx_tls`] with more server-level directives (`extra`, whole lines), e.g.
/// `lingering_close always;` (after a `Connection: close` response nginx frees the `SSL*`,
/// half-closes the socket and keeps it open until the client closes its side).
pub fn nginx_tls_with(place: Place<'_>, port: u16, certs: &Certs, extra: &str) -> Nginx {
    let head = format!(
        "        listen 127.0.0.1:{port} ssl;\n        ssl_certificate {};\n        \
         ssl_certificate_key {};\n{extra}",
        certs.cert.display(),
        certs.key.display(),
    );
    crate::servers::nginx_with(place, port, "kite-nginx-tls", &head)
}

/// nginx with `ssl` and HTTP/2 (ALPN `h2`) on 127.0.0.1:`port`, the plain test config's routes.
pub fn nginx_tls_h2(place: Place<'_>, port: u16, certs: &Certs) -> Nginx {
    nginx_tls_h2_with(place, port, certs, "")
}

/// [`nginx_tls_h2`] with more server-level directives (`extra`, whole lines), e.g. a
/// `location` with `grpc_pass` (nginx terminating gRPC over TLS for a cleartext backend).
pub fn nginx_tls_h2_with(place: Place<'_>, port: u16, certs: &Certs, extra: &str) -> Nginx {
    let head = format!(
        "        listen 127.0.0.1:{port} ssl http2;\n        ssl_certificate {};\n        \
         ssl_certificate_key {};\n{extra}",
        certs.cert.display(),
        certs.key.display(),
    );
    crate::servers::nginx_with(place, port, "kite-nginx-tls-h2", &head)
}

/// Size of [`big_location`]'s body.
pub const BIG_BODY: usize = 100_000;

/// An nginx `location` (for [`nginx_tls_with`]) answering `/big` with [`BIG_BODY`] bytes
/// (a file written into `certs`' directory, so it goes when the test ends).
pub fn big_location(certs: &Certs) -> String {
    let file = certs.dir.join("big");
    fs::write(&file, "x".repeat(BIG_BODY)).unwrap();
    format!(
        "        location = /big {{ default_type text/plain; alias {}; }}\n",
        file.display()
    )
}

/// A Python `ssl` client (certificate not checked) for OpenSSL's reuse of an `SSL*`: `conns`
/// times, it asks `/big` ([`big_location`]) with `Connection: close` on a connection whose
/// receive buffer is tiny and does not read the answer yet, so the server writes it into its
/// socket, frees the `SSL*` and closes — but the socket stays open in the kernel, its data
/// and FIN waiting for the client's window. Then it opens a second connection (the server's
/// allocator hands it the freed `SSL*`), makes one request, reads the first connection to its
/// end (the server's old socket now closes), and makes `per_conn - 1` more requests on the
/// second. The statuses it read, in order (the `/big` answer's first).
pub fn tls_overlapping_client(place: Place<'_>, port: u16, conns: u32, per_conn: u32) -> Vec<u16> {
    const SCRIPT: &str = r#"
import socket, ssl, sys, time
port, conns, per, big = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def send(s, path, close):
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: kite-test\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")
def response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise SystemExit("end of stream inside a response head")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    n = 0
    for l in lines[1:]:
        k, v = l.split(":", 1)
        if k.strip().lower() == "content-length":
            n = int(v)
    while len(rest) < n:
        d = s.recv(65536)
        if not d:
            raise SystemExit("end of stream inside a body")
        rest += d
    return int(lines[0].split()[1]), len(rest)
for i in range(conns):
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    a = ctx.wrap_socket(raw)
    send(a, b"/big", True)
    time.sleep(0.1)
    b = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    send(b, b"/", False)
    first = response(b)[0]
    status, n = response(a)
    if n != big:
        raise SystemExit("/big: %d bytes" % n)
    try:
        while a.recv(65536):
            pass
    except (ssl.SSLError, OSError):
        pass
    a.close()
    print(status, flush=True)
    print(first, flush=True)
    for j in range(per - 1):
        send(b, b"/", False)
        print(response(b)[0], flush=True)
    b.close()
"#;
    let (p, c, n) = (port.to_string(), conns.to_string(), per_conn.to_string());
    let big = BIG_BODY.to_string();
    let out = command(place, &["python3", "-c", SCRIPT, &p, &c, &n, &big])
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the TLS client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("a status line"))
        .collect()
}

/// The Python test server (`servers/httpd.py`'s routes) over TLS on 127.0.0.1:`port`.
pub fn python_https(place: Place<'_>, port: u16, certs: &Certs) -> Proc {
    let script = dir().join("https.py");
    let port_s = port.to_string();
    let p = spawn(
        place,
        &[
            "python3",
            script.to_str().unwrap(),
            "127.0.0.1",
            &port_s,
            certs.cert.to_str().unwrap(),
            certs.key.to_str().unwrap(),
        ],
    );
    wait_for_port(&format!("127.0.0.1:{port}"), place.netns);
    p
}

/// curl fetching `urls` in order over one kept-alive connection (certificate not checked):
/// the status curl saw for each.
pub fn curl_statuses(place: Place<'_>, urls: &[String]) -> Vec<u16> {
    let mut args = vec!["curl", "-sk", "--http1.1"];
    for u in urls {
        args.extend(["-o", "/dev/null", "-w", "%{http_code}\\n", u.as_str()]);
    }
    let out = command(place, &args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("curl's status line"))
        .collect()
}

/// A Go HTTPS server (`servers/https_go.go`, Go's own crypto/tls) built by the test in GOPATH
/// mode (standard library only, offline) and started on 127.0.0.1:`port`; the build
/// directory is removed on drop.
pub struct GoHttps {
    pub proc: Proc,
    pub binary: PathBuf,
    dir: PathBuf,
}

impl Drop for GoHttps {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn go_https(place: Place<'_>, port: u16, certs: &Certs) -> GoHttps {
    let d = std::env::temp_dir().join(unique("kite-go-https"));
    fs::create_dir_all(&d).unwrap();
    fs::copy(dir().join("https_go.go"), d.join("main.go")).unwrap();
    let binary = d.join("https_go");
    run_ok(
        Command::new("go")
            .args(["build", "-o", binary.to_str().unwrap(), "main.go"])
            .current_dir(&d)
            .env("GO111MODULE", "off")
            .env("GOPATH", d.join("gopath"))
            .env("GOCACHE", d.join("cache"))
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0"),
    );
    let port_s = port.to_string();
    let proc = spawn(
        place,
        &[
            binary.to_str().unwrap(),
            &port_s,
            certs.cert.to_str().unwrap(),
            certs.key.to_str().unwrap(),
        ],
    );
    wait_for_port(&format!("127.0.0.1:{port}"), place.netns);
    GoHttps {
        proc,
        binary,
        dir: d,
    }
}

/// A client in Python calling OpenSSL itself (ctypes on `libssl.so.3`) that reuses one `SSL*`
/// for `conns` connections, the way `SSL_clear(3)` documents: `SSL_shutdown`, `SSL_clear`,
/// `SSL_set_fd` on the next socket, `SSL_connect`. Connection `i` goes to 127.0.0.1:`ports[i %
/// 2]` and asks `paths[i % 2]`, `per_conn` times (`SSL_write`/`SSL_read`); its socket is
/// closed only after the next connection's first response. The statuses it read, in order.
pub fn ssl_clear_client(
    place: Place<'_>,
    ports: [u16; 2],
    paths: [&str; 2],
    conns: u32,
    per_conn: u32,
) -> Vec<u16> {
    const SCRIPT: &str = r#"
import ctypes, socket, struct, sys
ports, conns, per = [int(p) for p in sys.argv[1].split(",")], int(sys.argv[2]), int(sys.argv[3])
paths = [p.encode() for p in sys.argv[4].split(",")]
L = ctypes.CDLL("libssl.so.3")
P = ctypes.c_void_p
L.TLS_client_method.restype = P
L.SSL_CTX_new.restype = P
L.SSL_CTX_new.argtypes = [P]
L.SSL_new.restype = P
L.SSL_new.argtypes = [P]
for f in ("SSL_connect", "SSL_shutdown", "SSL_clear"):
    getattr(L, f).argtypes = [P]
L.SSL_set_fd.argtypes = [P, ctypes.c_int]
L.SSL_write.argtypes = [P, ctypes.c_char_p, ctypes.c_int]
L.SSL_read.argtypes = [P, ctypes.c_char_p, ctypes.c_int]
ctx = L.SSL_CTX_new(L.TLS_client_method())
ssl = L.SSL_new(ctx)
buf = ctypes.create_string_buffer(65536)
def request(path, close):
    req = b"GET " + path + b" HTTP/1.1\r\nHost: kite-test\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n"
    if L.SSL_write(ssl, req, len(req)) != len(req):
        raise SystemExit("SSL_write failed")
    data = b""
    while True:
        if b"\r\n\r\n" in data:
            head, rest = data.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            n = 0
            for l in lines[1:]:
                k, v = l.split(":", 1)
                if k.strip().lower() == "content-length":
                    n = int(v)
            if len(rest) >= n:
                return int(lines[0].split()[1])
        r = L.SSL_read(ssl, buf, 65536)
        if r <= 0:
            raise SystemExit("SSL_read failed")
        data += buf.raw[:r]
prev = None
for i in range(conns):
    s = socket.create_connection(("127.0.0.1", ports[i % 2]), timeout=10)
    # Blocking for OpenSSL (a Python timeout makes the descriptor non-blocking), bounded.
    s.settimeout(None)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    if i > 0:
        L.SSL_clear(ssl)
    L.SSL_set_fd(ssl, s.fileno())
    if L.SSL_connect(ssl) != 1:
        raise SystemExit("SSL_connect failed")
    for j in range(per):
        print(request(paths[i % 2], False), flush=True)
        if j == 0 and prev is not None:
            prev.close()
            prev = None
    L.SSL_shutdown(ssl)
    prev = s
if prev is not None:
    prev.close()
"#;
    let p = format!("{},{}", ports[0], ports[1]);
    let (c, n) = (conns.to_string(), per_conn.to_string());
    let paths = paths.join(",");
    let out = command(place, &["python3", "-c", SCRIPT, &p, &c, &n, &paths])
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the SSL_clear client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("a status line"))
        .collect()
}

/// `nghttpd` (nghttp2's HTTP/2 server, dynamically linked to libssl) over TLS with `certs` on
/// 127.0.0.1:`port` (ALPN `h2`), serving `index.html` (a few bytes) from `certs`' directory
/// (removed with it). Ready when this returns.
pub fn nghttpd_tls(place: Place<'_>, port: u16, certs: &Certs) -> Proc {
    let docroot = certs.dir.join("nghttpd");
    fs::create_dir_all(&docroot).expect("nghttpd docroot");
    fs::write(docroot.join("index.html"), "hello from nghttpd\n").expect("index.html");
    let port_s = port.to_string();
    let proc = spawn(
        place,
        &[
            "nghttpd",
            "-a",
            "127.0.0.1",
            "-d",
            docroot.to_str().unwrap(),
            &port_s,
            certs.key.to_str().unwrap(),
            certs.cert.to_str().unwrap(),
        ],
    );
    wait_for_port(&format!("127.0.0.1:{port}"), place.netns);
    proc
}
