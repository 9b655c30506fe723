//! Kubernetes' way into NATS, played on one machine: a service-account
//! issuer that mints each instance a token, as the kubelet projects one
//! into a pod, and the real auth callout (`services/nats-auth-callout`)
//! that nats-server asks about every connection.
//!
//! Only the issuer is played: its key is made here instead of by a
//! cluster's API server, and its JWKS written to a file instead of served
//! at `/openid/v1/jwks`. nats-server, the callout and the services are the
//! real binaries, so a cluster started this way ([`crate::ClusterSpec`]'s
//! `nats_callout`) runs under exactly the permissions Kubernetes gives it.
//!
//! Auth callout needs nats-server 2.10 or newer; Debian's is older, so
//! [`server_path`] finds the one `./faultline test` installs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use faultline_protocol::cluster::Role;
use faultline_protocol::permissions::{self, Password};

use crate::Service;

/// The namespace the played cluster's pods run in.
pub const NAMESPACE: &str = "faultline";
/// The played cluster's service-account issuer (`iss`).
pub const TOKEN_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The audience pods request their NATS tokens for.
pub const AUDIENCE: &str = "nats";
/// The service-account key's id.
const KEY_ID: &str = "faultline-test";
/// What the callout logs once it answers requests.
const READY_LINE: &str = "Answering NATS authorization requests.";

/// The nats-server to run with auth callout: `NATS_CALLOUT_SERVER_BIN`,
/// set by `./faultline test`, which installs it.
pub fn server_path() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("NATS_CALLOUT_SERVER_BIN")
        .map(PathBuf::from)
        .context(
            "NATS_CALLOUT_SERVER_BIN is not set: auth callout needs nats-server 2.10 or newer, \
         which `./faultline test` installs and names there",
        )?;
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    Ok(path)
}

/// A cluster's service-account token issuer, played: a P-256 key
/// (Kubernetes signs with RS256 or ES256), its JWKS as the API server
/// publishes it, and tokens as the kubelet projects them for the `nats`
/// audience.
#[derive(Debug)]
pub struct ServiceAccountIssuer {
    key: rcgen::KeyPair,
    kid: String,
}

impl ServiceAccountIssuer {
    /// A new key, published under the key id `kid`.
    pub fn new(kid: &str) -> anyhow::Result<ServiceAccountIssuer> {
        Ok(ServiceAccountIssuer {
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .context("making the service-account key")?,
            kid: kid.to_owned(),
        })
    }

    /// The JWKS that publishes its key.
    pub fn jwks(&self) -> serde_json::Value {
        let point = self.key.public_key_raw();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]})
    }

    /// A token for pod `id` of `role` (service account `faultline-<role>`
    /// in [`NAMESPACE`]), valid for an hour; `adjust` may change the
    /// claims first (a test's forgeries).
    pub fn token(
        &self,
        role: Role,
        id: &str,
        adjust: impl FnOnce(&mut serde_json::Value),
    ) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let account = format!("faultline-{}", role.as_str());
        let mut claims = serde_json::json!({
            "aud": [AUDIENCE], "iss": TOKEN_ISSUER, "iat": now, "nbf": now, "exp": now + 3600,
            "sub": format!("system:serviceaccount:{NAMESPACE}:{account}"),
            "kubernetes.io": {
                "namespace": NAMESPACE,
                "pod": { "name": id, "uid": crate::process::random_secret() },
                "serviceaccount": { "name": account, "uid": "faultline" },
            },
        });
        adjust(&mut claims);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.key.serialize_der());
        jsonwebtoken::encode(&header, &claims, &key).context("signing a token")
    }
}

/// The played issuer, the callout's keys and the running callout.
#[derive(Debug)]
pub(crate) struct CalloutAdmission {
    /// The keys, the instances' tokens and the callout's log.
    dir: Arc<tempfile::TempDir>,
    /// The instances it mints tokens for.
    instances: Vec<(Role, String)>,
    service_accounts: ServiceAccountIssuer,
    issuer_public_key: String,
    password: String,
    callout: Option<Service>,
}

impl CalloutAdmission {
    /// Makes the keys and writes the callout's files, for `instances`.
    pub(crate) fn new(
        instances: impl IntoIterator<Item = (Role, String)>,
    ) -> anyhow::Result<CalloutAdmission> {
        let dir = tempfile::tempdir().context("creating the callout's directory")?;
        std::fs::create_dir(dir.path().join("tokens")).context("creating the token directory")?;
        let service_accounts = ServiceAccountIssuer::new(KEY_ID)?;
        std::fs::write(
            dir.path().join("jwks.json"),
            service_accounts.jwks().to_string(),
        )
        .context("writing the JWKS")?;
        let issuer = nkeys::KeyPair::new_account();
        let seed = issuer.seed().map_err(|error| anyhow::anyhow!("{error}"))?;
        crate::process::write_private(&dir.path().join("issuer.seed"), &seed)?;
        Ok(CalloutAdmission {
            dir: Arc::new(dir),
            instances: instances.into_iter().collect(),
            service_accounts,
            issuer_public_key: issuer.public_key(),
            password: crate::process::random_secret(),
            callout: None,
        })
    }

    /// The `authorization` block of nats-server's configuration: only the
    /// callout logs in by password, everyone else is asked about.
    pub(crate) fn authorization(&self) -> String {
        permissions::callout_authorization(
            &Password::Literal(self.password.clone()),
            &Password::Literal(self.issuer_public_key.clone()),
        )
    }

    /// Starts the callout against the server at `url`, unless it runs, and
    /// waits until it answers.
    pub(crate) fn start(&mut self, url: &str) -> anyhow::Result<()> {
        if let Some(callout) = self.callout.as_mut()
            && !callout.has_exited()
        {
            return Ok(());
        }
        let dir = self.dir.path();
        let env: Vec<(String, String)> = [
            ("NATS_SERVERS", url),
            ("NATS_USER", permissions::CALLOUT_USER),
            ("NATS_PASSWORD", &self.password),
            ("CALLOUT_ID", "nats-auth-callout-1"),
            ("CALLOUT_TOKEN_ISSUER", TOKEN_ISSUER),
            ("CALLOUT_NAMESPACE", NAMESPACE),
            ("CALLOUT_ISSUER_SEED_FILE", &path(&dir.join("issuer.seed"))),
            ("CALLOUT_JWKS_FILE", &path(&dir.join("jwks.json"))),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        let callout = self.callout.insert(Service::start(
            "nats-auth-callout",
            "nats-auth-callout",
            &[],
            &env,
            self.dir.clone(),
        )?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !callout.log().contains(READY_LINE) {
            anyhow::ensure!(
                !callout.has_exited(),
                "nats-auth-callout exited:\n{}",
                callout.log()
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "nats-auth-callout did not start answering:\n{}",
                callout.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The environment instance `id` connects with: its pod name and the
    /// file holding its token (made on first ask), as mounted in a pod;
    /// nothing for an instance it was not started for.
    pub(crate) fn credentials(&self, id: &str) -> anyhow::Result<Vec<(String, String)>> {
        let Some((role, _)) = self.instances.iter().find(|(_, instance)| instance == id) else {
            return Ok(Vec::new());
        };
        let file = self.dir.path().join("tokens").join(id);
        if !file.exists() {
            let token = self.service_accounts.token(*role, id, |_| {})?;
            crate::process::write_private(&file, &token)?;
        }
        Ok(vec![
            ("NATS_USER".to_owned(), id.to_owned()),
            ("NATS_PASSWORD_FILE".to_owned(), path(&file)),
        ])
    }

    /// The played issuer, to mint more tokens (a test's forgeries).
    pub(crate) fn service_accounts(&self) -> &ServiceAccountIssuer {
        &self.service_accounts
    }

    /// What the callout has logged.
    pub(crate) fn log(&self) -> String {
        self.callout.as_ref().map(Service::log).unwrap_or_default()
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}
