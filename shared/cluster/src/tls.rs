//! A certificate authority of the deployment's own, and the NATS servers'
//! and PostgreSQL's certificates it signs: what `./faultline certs` writes
//! for compose and Kubernetes, and what a test cluster with
//! [`ClusterSpec::nats_tls`] or a [`PrivatePostgres`] with TLS uses.
//!
//! [`PrivatePostgres`]: crate::postgres::PrivatePostgres
//!
//! Why its own CA: the services must check that the NATS server they reach
//! is the deployment's (else a password goes to whoever answers on the
//! address), and the NATS nodes must check each other on their routes. A
//! public CA cannot sign names like `nats-1`; a private one can, and only
//! its certificate needs distributing. Its key is not written anywhere:
//! once the certificates are signed, nothing more can be, and renewing
//! means running the command again (cert-manager does this for you in a
//! real cluster).
//!
//! [`ClusterSpec::nats_tls`]: crate::ClusterSpec::nats_tls

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The CA certificate, which every client trusts.
pub const CA_FILE: &str = "ca.pem";
/// The NATS servers' certificate, for clients and for the routes
/// between nodes.
pub const NATS_CERT_FILE: &str = "nats.pem";
/// Its private key, readable only by its owner.
pub const NATS_KEY_FILE: &str = "nats-key.pem";
/// PostgreSQL's certificate.
pub const POSTGRES_CERT_FILE: &str = "postgres.pem";
/// Its private key.
pub const POSTGRES_KEY_FILE: &str = "postgres-key.pem";

/// The names a NATS node answers to: compose's nodes, Kubernetes' client
/// Service and each StatefulSet pod under the headless Service, and
/// loopback for a test cluster or a port-forward.
pub const NATS_NAMES: &[&str] = &[
    "nats-1",
    "nats-2",
    "nats-3",
    "nats",
    "nats.faultline.svc",
    "nats.faultline.svc.cluster.local",
    "*.nats-headless",
    "*.nats-headless.faultline.svc",
    "*.nats-headless.faultline.svc.cluster.local",
    "localhost",
    "127.0.0.1",
];

/// The names PostgreSQL answers to: compose's service, Kubernetes'
/// Service, and loopback.
pub const POSTGRES_NAMES: &[&str] = &[
    "postgres",
    "postgres.faultline.svc",
    "postgres.faultline.svc.cluster.local",
    "localhost",
    "127.0.0.1",
];

/// Writes a new CA certificate, and the NATS and PostgreSQL certificates
/// it signs, into `dir`, which is created if missing.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate().context("a CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca.distinguished_name
        .push(DnType::CommonName, "Faultline deployment CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;
    let issuer = Issuer::new(ca, ca_key);
    write(dir, CA_FILE, &ca_cert.pem(), 0o644)?;
    for (common_name, names, cert_file, key_file) in [
        ("nats", NATS_NAMES, NATS_CERT_FILE, NATS_KEY_FILE),
        (
            "postgres",
            POSTGRES_NAMES,
            POSTGRES_CERT_FILE,
            POSTGRES_KEY_FILE,
        ),
    ] {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let key = KeyPair::generate().context("a server key")?;
        let mut server = CertificateParams::new(names).context("server names")?;
        server
            .distinguished_name
            .push(DnType::CommonName, common_name);
        // NATS routes are mutual TLS with the same certificate: each node
        // is a server to some and a client to others.
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = server
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing {common_name}'s certificate"))?;
        write(dir, cert_file, &cert.pem(), 0o644)?;
        write(dir, key_file, &key.serialize_pem(), 0o600)?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {}", path.display()))
}
