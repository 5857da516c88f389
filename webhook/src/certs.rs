//! Certificates for clusters without cert-manager: a CA and a serving certificate for the
//! webhook Service's DNS names, plus the Secret and the caBundle patch that install them.
//!
//! ```text
//! kite-webhook certs --out-dir certs/
//! kubectl patch mutatingwebhookconfiguration kite-webhook --type=json --patch-file certs/ca-bundle-patch.json
//! kubectl apply -f certs/secret.json
//! ```
//!
//! In that order: the caBundle first trusts the new CA (and, when renewing into the same
//! directory, still the previous one), then the webhook gets the new certificate.

use std::{collections::BTreeMap, path::Path};

use base64::Engine as _;
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use time::{Duration, OffsetDateTime};

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What the certificates are for.
#[derive(Clone, Debug)]
pub struct Names {
    /// The webhook Service's name.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// The Secret holding the serving certificate.
    pub secret: String,
    /// The MutatingWebhookConfiguration to give the CA.
    pub webhook_config: String,
    /// How many webhooks that configuration lists (each gets the caBundle).
    pub webhooks: usize,
    /// Validity of the serving certificate, in days (the CA lasts ten times longer).
    pub days: i64,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            service: "kite-webhook".into(),
            namespace: "kite-system".into(),
            secret: "kite-webhook-tls".into(),
            webhook_config: "kite-webhook".into(),
            webhooks: 2,
            days: 365,
        }
    }
}

impl Names {
    /// The DNS names the API server may use for the Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (s, n) = (&self.service, &self.namespace);
        vec![
            s.clone(),
            format!("{s}.{n}"),
            format!("{s}.{n}.svc"),
            format!("{s}.{n}.svc.cluster.local"),
        ]
    }
}

/// A CA and the serving certificate it signed, in PEM.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The CA certificate (the caBundle).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
    /// The CA of the previous run in the same directory, still trusted by the caBundle so
    /// that a renewal never leaves a moment when the API server trusts neither certificate.
    pub previous_ca_pem: Option<String>,
}

/// Makes a CA and a serving certificate for `names` (plus `extra` DNS names or IP addresses).
pub fn generate(names: &Names, extra: &[String]) -> Result<Bundle, CertError> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("kite-webhook CA ({})", names.namespace),
    );
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(names.days * 10);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut all = names.dns_names();
    all.extend(extra.iter().cloned());
    let mut p = CertificateParams::new(all)?;
    p.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}.svc", names.service, names.namespace),
    );
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(names.days);
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        previous_ca_pem: None,
    })
}

impl Bundle {
    /// The `kubernetes.io/tls` Secret the webhook Deployment mounts.
    pub fn secret(&self, names: &Names) -> Secret {
        let data: BTreeMap<String, ByteString> = [
            ("tls.crt", &self.cert_pem),
            ("tls.key", &self.key_pem),
            ("ca.crt", &self.ca_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(names.secret.clone()),
                namespace: Some(names.namespace.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/name".to_string(),
                        "kite-webhook".to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Keeps trusting the CA a previous run left in `dir` (renewal), if there is one.
    pub fn keep_previous_ca(&mut self, dir: &Path) {
        self.previous_ca_pem = std::fs::read_to_string(dir.join("ca.crt"))
            .ok()
            .filter(|p| p.contains("BEGIN CERTIFICATE") && *p != self.ca_pem);
    }

    /// The caBundle: the CA, then the previous one while a renewal is under way.
    pub fn ca_bundle(&self) -> String {
        let mut b = self.ca_pem.clone();
        if let Some(old) = &self.previous_ca_pem {
            b.push_str(old);
        }
        b
    }

    /// A JSON patch setting the caBundle of every webhook of the configuration.
    pub fn ca_bundle_patch(&self, names: &Names) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.ca_bundle());
        (0..names.webhooks)
            .map(|i| json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": b64}))
            .collect()
    }

    /// Writes `ca.crt`, `tls.crt`, `tls.key` (mode 0600), `secret.json` and
    /// `ca-bundle-patch.json` into `dir`.
    pub fn write(&self, names: &Names, dir: &Path) -> Result<(), CertError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let write = |name: &str, bytes: &[u8], mode: u32| {
            let path = dir.join(name);
            let err = |source| CertError::Write {
                path: path.display().to_string(),
                source,
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .map_err(err)?;
            std::io::Write::write_all(&mut f, bytes).map_err(err)
        };
        write("ca.crt", self.ca_pem.as_bytes(), 0o644)?;
        write("tls.crt", self.cert_pem.as_bytes(), 0o644)?;
        write("tls.key", self.key_pem.as_bytes(), 0o600)?;
        write("secret.json", pretty(&self.secret(names)).as_bytes(), 0o600)?;
        write(
            "ca-bundle-patch.json",
            pretty(&self.ca_bundle_patch(names)).as_bytes(),
            0o644,
        )?;
        Ok(())
    }
}

/// A CA, the agent's gRPC serving pair and a client pair it signed, for the agent's optional
/// gRPC TLS (`kite-agent --grpc-tls-cert/--grpc-tls-key/--grpc-client-ca`, `kite-tui
/// --tls-cert/--tls-key/--ca`).
#[derive(Clone, Debug)]
pub struct GrpcBundle {
    /// The CA certificate: the agents' `--grpc-client-ca`, the clients' `--ca`.
    pub ca_pem: String,
    /// The agent's serving certificate and key.
    pub server: (String, String),
    /// A client certificate and key.
    pub client: (String, String),
}

/// Makes the gRPC CA, a serving certificate for `names` (DNS names or IP addresses) and a
/// client certificate named `client`, valid `days` (the CA ten times longer).
pub fn grpc_bundle(names: &[String], client: &str, days: i64) -> Result<GrpcBundle, CertError> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "kite gRPC CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(days * 10);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(days);
        let cert = p.signed_by(&key, &issuer)?;
        Ok::<_, CertError>((cert.pem(), key.serialize_pem()))
    };
    Ok(GrpcBundle {
        ca_pem: ca_cert.pem(),
        server: leaf(
            names.to_vec(),
            "kite-agent",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?,
        client: leaf(Vec::new(), client, ExtendedKeyUsagePurpose::ClientAuth)?,
    })
}

impl GrpcBundle {
    /// Writes `ca.crt`, `agent.crt`, `agent.key`, `client.crt`, `client.key` (keys 0600).
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        write_files(
            dir,
            &[
                ("ca.crt", &self.ca_pem, 0o644),
                ("agent.crt", &self.server.0, 0o644),
                ("agent.key", &self.server.1, 0o600),
                ("client.crt", &self.client.0, 0o644),
                ("client.key", &self.client.1, 0o600),
            ],
        )
    }
}

fn write_files(dir: &Path, files: &[(&str, &str, u32)]) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    for (name, text, mode) in files {
        let path = dir.join(name);
        let err = |source| CertError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(*mode)
            .open(&path)
            .map_err(err)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)?;
    }
    Ok(())
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_names_the_service_and_the_files_install_it() {
        let names = Names::default();
        let b = generate(&names, &["127.0.0.1".into()]).unwrap();
        assert!(b.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(b.key_pem.contains("PRIVATE KEY"));
        assert_eq!(
            names.dns_names()[2],
            "kite-webhook.kite-system.svc",
            "the name the API server calls"
        );
        let secret = b.secret(&names);
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret.data.unwrap();
        assert_eq!(data["tls.crt"].0, b.cert_pem.as_bytes());
        let patch = b.ca_bundle_patch(&names);
        assert_eq!(patch.as_array().unwrap().len(), 2);
        let ca = base64::engine::general_purpose::STANDARD
            .decode(patch[1]["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(ca, b.ca_pem.as_bytes());

        let dir = std::env::temp_dir().join(format!("kite-certs-{}", std::process::id()));
        b.write(&names, &dir).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back: Secret =
            serde_json::from_slice(&std::fs::read(dir.join("secret.json")).unwrap()).unwrap();
        assert_eq!(back.metadata.name.as_deref(), Some("kite-webhook-tls"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
