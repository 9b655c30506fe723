//! A certificate authority of the deployment's own, and the NATS servers'
//! certificate it signs: what `./faultline certs` writes for compose and
//! Kubernetes, and what a test cluster with [`ClusterSpec::nats_tls`]
//! uses.
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

/// Writes a new CA certificate and a NATS certificate it signs for
/// `names` into `dir`, which is created if missing.
pub fn generate(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate().context("a CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca.distinguished_name
        .push(DnType::CommonName, "Faultline deployment CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;
    let issuer = Issuer::new(ca, ca_key);

    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let key = KeyPair::generate().context("a NATS key")?;
    let mut server = CertificateParams::new(names).context("NATS names")?;
    server.distinguished_name.push(DnType::CommonName, "nats");
    // Routes are mutual TLS with the same certificate: each node is a
    // server to some and a client to others.
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = server.signed_by(&key, &issuer).context("signing NATS")?;

    write(dir, CA_FILE, &ca_cert.pem(), 0o644)?;
    write(dir, NATS_CERT_FILE, &cert.pem(), 0o644)?;
    write(dir, NATS_KEY_FILE, &key.serialize_pem(), 0o600)
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {}", path.display()))
}
