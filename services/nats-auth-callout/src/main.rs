//! The NATS auth callout binary: start-up is `faultline_runtime::main`,
//! the rest is the library.

use std::path::PathBuf;

use anyhow::Context as _;
use faultline_runtime::{CommonArgs, ServiceSettings};
use nats_auth_callout::pod_identity::TokenVerifier;
use nats_auth_callout::{Authorizer, nats_jwt};

/// Settings; every flag is also an environment variable.
#[derive(Debug, clap::Parser)]
#[command(name = "nats-auth-callout", version, about)]
struct Settings {
    /// This replica's id (its NATS connection's name).
    #[arg(long, env = "CALLOUT_ID", default_value_t = format!("nats-auth-callout-{}", std::process::id()))]
    id: String,
    /// A file holding the seed of the account nkey that signs the answers
    /// (`SA...`); nats-server's `auth_callout.issuer` is its public key.
    #[arg(long, env = "CALLOUT_ISSUER_SEED_FILE")]
    issuer_seed_file: PathBuf,
    /// The cluster's service-account signing keys, as a JWKS
    /// (`kubectl get --raw /openid/v1/jwks`).
    #[arg(long, env = "CALLOUT_JWKS_FILE")]
    jwks_file: PathBuf,
    /// The `iss` of the cluster's service-account tokens
    /// (`kubectl get --raw /.well-known/openid-configuration`).
    #[arg(long, env = "CALLOUT_TOKEN_ISSUER")]
    token_issuer: String,
    /// The audience pods request their NATS tokens for.
    #[arg(long, env = "CALLOUT_TOKEN_AUDIENCE", default_value = "nats")]
    token_audience: String,
    /// The namespace Faultline's pods run in.
    #[arg(long, env = "CALLOUT_NAMESPACE")]
    namespace: String,
    /// The NATS account admitted pods are placed in.
    #[arg(long, env = "CALLOUT_ACCOUNT", default_value = nats_jwt::GLOBAL_ACCOUNT)]
    account: String,
    /// NATS (as the callout's own user, listed in `auth_users`), runtime,
    /// logs and traces.
    #[command(flatten)]
    common: CommonArgs,
}

impl ServiceSettings for Settings {
    const SERVICE: &'static str = "nats-auth-callout";

    fn id(&self) -> &str {
        &self.id
    }

    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

fn main() -> anyhow::Result<()> {
    faultline_runtime::main(|nats, settings: Settings| async move {
        let authorizer = authorizer(&settings)?;
        nats_auth_callout::serve(nats, authorizer, faultline_runtime::shutdown_signal()).await
    })
}

fn authorizer(settings: &Settings) -> anyhow::Result<Authorizer> {
    let seed = std::fs::read_to_string(&settings.issuer_seed_file)
        .with_context(|| format!("reading {}", settings.issuer_seed_file.display()))?;
    let issuer =
        nkeys::KeyPair::from_seed(seed.trim()).context("the issuer seed is not an nkey seed")?;
    anyhow::ensure!(
        issuer.key_pair_type() == nkeys::KeyPairType::Account,
        "the issuer seed must be an account's (SA...)"
    );
    let jwks = std::fs::read_to_string(&settings.jwks_file)
        .with_context(|| format!("reading {}", settings.jwks_file.display()))?;
    let keys = serde_json::from_str(&jwks).context("the JWKS file is not a JWKS")?;
    Ok(Authorizer::new(
        TokenVerifier::new(
            keys,
            &settings.token_issuer,
            &settings.token_audience,
            &settings.namespace,
        ),
        issuer,
        &settings.account,
    ))
}
