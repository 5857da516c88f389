//! Real servers: the Python test server and Debian's nginx with a generated config.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Place, Proc, spawn, unique, wait_for_port};

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("servers")
}

/// The test HTTP server (`servers/httpd.py`).
pub fn python_httpd(place: Place<'_>, host: &str, port: u16, dualstack: bool) -> Proc {
    let script = dir().join("httpd.py");
    let port_s = port.to_string();
    let mut args = vec!["python3", script.to_str().unwrap(), host, &port_s];
    if dualstack {
        args.push("--dualstack");
    }
    let p = spawn(place, &args);
    let addr = if host.contains(':') {
        format!("[{}]:{port}", if host == "::" { "::1" } else { host })
    } else {
        format!(
            "{}:{port}",
            if host == "0.0.0.0" { "127.0.0.1" } else { host }
        )
    };
    wait_for_port(&addr, place.netns);
    p
}

/// The byte sink (`servers/sink.py`) on 127.0.0.1:`port`: each connection is read to its
/// end and answered with its byte count. Ready when this returns.
pub fn byte_sink(place: Place<'_>, port: u16) -> Proc {
    let script = dir().join("sink.py");
    let port_s = port.to_string();
    let p = spawn(place, &["python3", script.to_str().unwrap(), &port_s]);
    wait_for_port(&format!("127.0.0.1:{port}"), place.netns);
    p
}

/// Debian's nginx with a config made for the test: `/` small static answer, `/d/<ms>` delayed
/// answers (echo module, chunked), `/status/<code>`.
pub struct Nginx {
    pub proc: Proc,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn nginx(place: Place<'_>, port: u16) -> Nginx {
    nginx_on(place, port, &["127.0.0.1", "[::1]"])
}

/// nginx listening on `port` of each of `hosts` (`0.0.0.0` accepts every 127.0.0.0/8 address).
pub fn nginx_on(place: Place<'_>, port: u16, hosts: &[&str]) -> Nginx {
    nginx_listen(place, port, hosts, "")
}

/// [`nginx_on`] with more `listen` parameters, e.g. `deferred` (`TCP_DEFER_ACCEPT`).
pub fn nginx_listen(place: Place<'_>, port: u16, hosts: &[&str], params: &str) -> Nginx {
    let listens: String = hosts
        .iter()
        .map(|h| format!("        listen {h}:{port} {params};\n"))
        .collect();
    nginx_with(place, port, "kite-nginx", &listens)
}

/// nginx with the test config (`/`, `/status/<code>`, `/d/<ms>` delayed by the echo module)
/// in a fresh directory named after `prefix`; `server_head` is the server block's first lines
/// (its `listen`s, and for TLS its certificate). Ready on 127.0.0.1:`port` when this returns.
pub(crate) fn nginx_with(place: Place<'_>, port: u16, prefix: &str, server_head: &str) -> Nginx {
    let dir = std::env::temp_dir().join(unique(prefix));
    fs::create_dir_all(dir.join("logs")).unwrap();
    let echo = Path::new("/usr/lib/nginx/modules/ngx_http_echo_module.so");
    assert!(
        echo.exists(),
        "nginx echo module missing: apt-get install libnginx-mod-http-echo"
    );
    let mut delays = String::new();
    for ms in [1, 2, 5, 8, 10, 12, 14, 40, 50] {
        delays += &format!(
            "        location = /d/{ms} {{ echo_sleep {}; echo ok; }}\n",
            ms as f64 / 1000.0
        );
    }
    let mut statuses = String::new();
    for code in [200, 201, 404, 500, 503] {
        statuses += &format!(
            "        location = /status/{code} {{ default_type text/plain; return {code} \"status {code}\\n\"; }}\n"
        );
    }
    statuses += "        location = /status/302 { return 302 /moved; }\n";
    let conf = format!(
        "load_module {echo};\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
             access_log off;\n\
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
             uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             keepalive_requests 1000000;\n\
             server {{\n\
{server_head}\
                 location = / {{ default_type text/plain; return 200 \"hello from nginx\\n\"; }}\n\
{statuses}\
{delays}\
             }}\n\
         }}\n",
        echo = echo.display(),
        d = dir.display(),
    );
    let proc = start_nginx(place, &dir, &conf, port);
    Nginx { proc, dir }
}

/// Writes `conf` into `dir`, checks it with `nginx -t` (removing `dir` and failing the test with
/// nginx's words if it is refused), starts nginx in `place` and waits for 127.0.0.1:`port`.
pub(crate) fn start_nginx(place: Place<'_>, dir: &Path, conf: &str, port: u16) -> Proc {
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf).unwrap();
    let check = Command::new("nginx")
        .args([
            "-t",
            "-q",
            "-e",
            "stderr",
            "-c",
            conf_path.to_str().unwrap(),
        ])
        .output()
        .expect("nginx (apt-get install nginx-light)");
    if !check.status.success() {
        let _ = fs::remove_dir_all(dir);
        panic!("nginx config: {}", String::from_utf8_lossy(&check.stderr));
    }
    let proc = spawn(
        place,
        &["nginx", "-c", conf_path.to_str().unwrap(), "-e", "stderr"],
    );
    wait_for_port(&format!("127.0.0.1:{port}"), place.netns);
    proc
}

/// Builds `servers/<src>` offline — GOPATH mode over the Go sources Debian installs in
/// /usr/share/gocode (`packages` names the Debian packages it needs) — into `target/<out>`
/// (the temp dir outside a cargo build). Built under a name of this process, then renamed:
/// test binaries building at the same time (Go's cache makes that quick) never see a partial
/// file. Callers keep the path in a `OnceLock`, one build per process.
pub(crate) fn go_build(src: &str, out: &str, packages: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let bin = target.join(out);
    let tmp = target.join(format!("{out}.{}", std::process::id()));
    let src = dir().join(src);
    let r = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", target.join("go-cache"))
        .env("GOFLAGS", "")
        .output()
        .unwrap_or_else(|e| panic!("go build (apt-get install {packages}): {e}"));
    assert!(
        r.status.success(),
        "go build {}: {}",
        src.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    fs::rename(&tmp, &bin).expect("rename the Go binary");
    bin
}
