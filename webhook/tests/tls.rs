//! The webhook binary over real TLS: certificates from `kite-webhook certs`, a client (curl)
//! that trusts only the generated CA, real AdmissionReview v1 JSON.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use kite_testkit::{free_port, promtool_check};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kite-webhook");

struct Webhook {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Webhook {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kite-webhook-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        let out = Command::new(BIN)
            .args(["certs", "--extra-name", "127.0.0.1", "--out-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = Command::new(BIN)
            .args([
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--init-image",
                "kite:test",
            ])
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let w = Self { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.get("/healthz").0 != 200 {
            assert!(Instant::now() < deadline, "the webhook did not come up");
            thread::sleep(Duration::from_millis(50));
        }
        w
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn curl(&self, ca: Option<&Path>, args: &[&str]) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"]);
        if let Some(ca) = ca {
            c.arg("--cacert").arg(ca);
        }
        let out = c.args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.curl(
            Some(&self.ca()),
            &[&format!("https://127.0.0.1:{}{path}", self.port)],
        )
    }

    fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let file = self.dir.join(format!("body-{}", free_port()));
        std::fs::File::create(&file)
            .unwrap()
            .write_all(body)
            .unwrap();
        let (code, text) = self.curl(
            Some(&self.ca()),
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &format!("@{}", file.display()),
                &format!("https://127.0.0.1:{}{path}", self.port),
            ],
        );
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Sends a review and returns the response and the pod with the patch applied.
    fn review(&self, path: &str, review: &Value) -> (Value, Value) {
        let (code, answer) = self.post(path, &serde_json::to_vec(review).unwrap());
        assert_eq!(code, 200, "{answer}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"]);
        let mut pod = review["request"]["object"].clone();
        if let Some(p) = response["patch"].as_str() {
            assert_eq!(response["patchType"], "JSONPatch");
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut pod, &patch).unwrap();
        }
        (response, pod)
    }
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn kite_inits(pod: &Value) -> usize {
    pod["spec"]["initContainers"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|c| c["name"] == "kite-init").count())
}

#[test]
fn opted_in_pods_get_exactly_one_init_container_with_env_and_volume() {
    let w = Webhook::start();
    let (resp, pod) = w.review("/mutate", &fixture("review-pod.json"));
    assert_eq!(resp["allowed"], true);
    assert_eq!(kite_inits(&pod), 1);
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["image"], "kite:test");
    let env: Vec<_> = init["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for want in ["POD_NAME", "POD_NAMESPACE", "POD_UID", "KITE_SOCKET"] {
        assert!(env.contains(&want), "{env:?}");
    }
    let mount = init["volumeMounts"][0]["name"].clone();
    let vols = pod["spec"]["volumes"].as_array().unwrap();
    let vol = vols.iter().find(|v| v["name"] == mount).unwrap();
    assert_eq!(vol["hostPath"]["path"], "/var/run/kite");
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod.clone()).unwrap();

    // The same pod sent again (a reinvocation) is left alone.
    let mut again = fixture("review-pod.json");
    again["request"]["object"] = pod.clone();
    let (resp, twice) = w.review("/mutate", &again);
    assert!(resp["patch"].is_null());
    assert_eq!(twice, pod);
    assert_eq!(kite_inits(&twice), 1);
}

#[test]
fn pods_with_init_containers_and_volumes_keep_them() {
    let w = Webhook::start();
    let mut r = fixture("review-pod.json");
    r["request"]["object"]["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "busybox", "command": ["true"]}]);
    let (_, pod) = w.review("/mutate", &r);
    let names: Vec<_> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!("kite-init"), json!("migrate")]);
    assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 2);

    // No volumes and no initContainers at all.
    let mut bare = fixture("review-pod.json");
    let spec = bare["request"]["object"]["spec"].as_object_mut().unwrap();
    spec.remove("volumes");
    spec["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("volumeMounts");
    let (_, pod) = w.review("/mutate", &bare);
    assert_eq!(kite_inits(&pod), 1);
    assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 1);
}

#[test]
fn pods_not_opted_in_and_system_namespaces_are_allowed_untouched() {
    let w = Webhook::start();
    let mut plain = fixture("review-pod.json");
    plain["request"]["object"]["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("kite.io/monitor");
    let mut system = fixture("review-pod.json");
    system["request"]["namespace"] = json!("kube-system");
    let mut own = fixture("review-pod.json");
    own["request"]["namespace"] = json!("kite-system");
    for (path, r) in [
        ("/mutate", &plain),
        ("/mutate", &system),
        ("/mutate/namespace", &system),
        ("/mutate/namespace", &own),
    ] {
        let (resp, pod) = w.review(path, r);
        assert_eq!(resp["allowed"], true);
        assert!(resp["patch"].is_null(), "{path}: {resp}");
        assert_eq!(pod, r["request"]["object"]);
    }
    // The namespace route injects pods without the label.
    let (resp, pod) = w.review("/mutate/namespace", &plain);
    assert!(resp["patch"].is_string());
    assert_eq!(kite_inits(&pod), 1);
}

#[test]
fn malformed_reviews_get_a_reason_and_the_server_keeps_serving() {
    let w = Webhook::start();
    // Not JSON, not a review: 400 with a reason.
    for (body, reason) in [
        (&b"\x00\xffgarbage"[..], "not an AdmissionReview"),
        (
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
            "no request",
        ),
    ] {
        let (code, answer) = w.post("/mutate", body);
        assert_eq!(code, 400);
        let message = answer["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains(reason), "{answer}");
        assert_eq!(answer["response"]["allowed"], false);
    }
    // A review of something else, or without an object: answered, allowed, with the reason.
    let mut no_object = fixture("review-pod.json");
    no_object["request"]
        .as_object_mut()
        .unwrap()
        .remove("object");
    for (r, reason) in [
        (fixture("review-deployment.json"), "only mutates Pods"),
        (no_object, "no object"),
    ] {
        let (resp, _) = w.review("/mutate", &r);
        assert_eq!(resp["allowed"], true);
        assert!(resp["patch"].is_null());
        let warning = resp["warnings"][0].as_str().unwrap_or_default();
        assert!(warning.contains(reason), "{resp}");
    }
    // Wrong method, unknown path.
    assert_eq!(w.get("/mutate").0, 405);
    assert_eq!(w.get("/nope").0, 404);
    // Still serving.
    assert_eq!(w.get("/healthz"), (200, "ok\n".into()));
    let (_, pod) = w.review("/mutate", &fixture("review-pod.json"));
    assert_eq!(kite_inits(&pod), 1);
}

#[test]
fn a_client_that_does_not_trust_the_ca_is_refused() {
    let w = Webhook::start();
    let (code, _) = w.curl(None, &[&format!("https://127.0.0.1:{}/healthz", w.port)]);
    assert_eq!(code, 0, "the handshake must fail without the CA");
    // And the certificate names the Service (what the API server checks).
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(w.ca())
        .args([
            "--resolve",
            &format!("kite-webhook.kite-system.svc:{}:127.0.0.1", w.port),
        ])
        .arg(format!(
            "https://kite-webhook.kite-system.svc:{}/healthz",
            w.port
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// notAfter of a PEM certificate as openssl reads it, in seconds since the epoch.
fn openssl_not_after(cert: &Path) -> i64 {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    let text = String::from_utf8(out.stdout).unwrap();
    let date = text.trim().strip_prefix("notAfter=").unwrap().to_string();
    let out = Command::new("date")
        .args(["-u", "-d", &date, "+%s"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The value of the expiry gauge in a /metrics body that promtool accepts.
fn expiry(body: &str) -> i64 {
    if let Err(report) = promtool_check(body) {
        panic!("promtool check metrics: {report}\n{body}");
    }
    let line = body
        .lines()
        .find(|l| l.starts_with("kite_webhook_certificate_expiry_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no expiry gauge in\n{body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_certificate_expiry_metric_is_its_not_after_and_follows_a_renewal() {
    let w = Webhook::start();
    let (code, body) = w.get("/metrics");
    assert_eq!(code, 200, "{body}");
    let first = openssl_not_after(&w.dir.join("tls.crt"));
    assert_eq!(expiry(&body), first);
    let year = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 365 * 86_400;
    assert!((first - year).abs() < 3_600, "a one-year certificate");

    // Renewed in place for 30 days, as deploy/README.md says: the gauge follows within the
    // reload period (10 s), so the alert clears without a restart.
    let out = Command::new(BIN)
        .args([
            "certs",
            "--days",
            "30",
            "--extra-name",
            "127.0.0.1",
            "--out-dir",
        ])
        .arg(&w.dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let renewed = openssl_not_after(&w.dir.join("tls.crt"));
    assert!(renewed < first - 300 * 86_400);
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        // Trusting the new CA only: the handshake fails until the new certificate is served.
        let (code, body) = w.get("/metrics");
        if code == 200 && expiry(&body) == renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {body} after 25 s, want {renewed}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}
