//! NATS auth callout: each Kubernetes pod connects to NATS as itself.
//!
//! Why: Faultline gives every instance a NATS user of its own, with only
//! its role's subjects plus its own heartbeat, probe, call and inbox
//! subjects (`faultline_protocol::permissions`), so that one worker cannot
//! heartbeat, answer probes or take calls for another. `./faultline run`,
//! the tests and compose list their instances ahead of time and write a
//! user for each. A Deployment's pods have random names, so Kubernetes
//! cannot: there, nats-server hands every connection to this service
//! (`auth_callout` in its configuration), which checks the pod's
//! service-account token ([`pod_identity`]) and answers with a user JWT
//! carrying that pod's own permissions ([`nats_jwt`]), the same ones a
//! listed user would have.
//!
//! What it trusts: the cluster's service-account signing keys (its JWKS),
//! and an account nkey of its own whose public half nats-server is told to
//! accept answers from. It holds no password of any service.
//!
//! [`Authorizer::decide`] is the whole decision, without I/O; [`serve`]
//! only moves requests and answers.

pub mod nats_jwt;
pub mod pod_identity;

use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use nkeys::KeyPair;

use faultline_protocol::permissions;
use pod_identity::{PodIdentity, TokenVerifier};

/// The queue group every replica of the callout answers in: each request
/// is answered once.
pub const QUEUE_GROUP: &str = "faultline-nats-auth-callout";

/// Decides who may connect.
pub struct Authorizer {
    verifier: TokenVerifier,
    issuer: KeyPair,
    account: String,
}

/// Shows the issuer's public key, never its seed.
impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("verifier", &self.verifier)
            .field("issuer", &self.issuer.public_key())
            .field("account", &self.account)
            .finish()
    }
}

/// What was decided about one connection, and the answer to send.
#[derive(Debug)]
pub enum Decision {
    /// Admitted as this pod, with its role's and its own permissions.
    Admitted {
        /// Who connected.
        identity: PodIdentity,
        /// The signed answer.
        response: String,
    },
    /// Refused.
    Refused {
        /// Why (also in the answer, which the server logs).
        reason: String,
        /// The signed answer.
        response: String,
    },
}

impl Authorizer {
    /// Admits pods whose tokens `verifier` accepts, into `account`, with
    /// answers signed by `issuer` (an account nkey with its seed).
    pub fn new(verifier: TokenVerifier, issuer: KeyPair, account: &str) -> Authorizer {
        Authorizer {
            verifier,
            issuer,
            account: account.to_owned(),
        }
    }

    /// The answer to one authorization request (a JWT a server signed).
    /// An error means the request itself was not a server's: it gets no
    /// answer, and the server refuses the connection at its timeout.
    pub fn decide(&self, request: &str, now_secs: u64) -> Result<Decision, nats_jwt::JwtError> {
        let request = nats_jwt::read_request(request)?;
        let user = request.connect_opts.user.as_deref().unwrap_or_default();
        let token = request.connect_opts.pass.as_deref().unwrap_or_default();
        match self.verifier.verify(user, token) {
            Ok(identity) => {
                let permissions = permissions::of(identity.role, &identity.pod);
                let response = nats_jwt::admit(
                    &request,
                    &identity.pod,
                    &permissions,
                    &self.account,
                    &self.issuer,
                    now_secs,
                )?;
                Ok(Decision::Admitted { identity, response })
            }
            Err(error) => {
                let reason = error.to_string();
                let response = nats_jwt::refuse(&request, &reason, &self.issuer, now_secs)?;
                Ok(Decision::Refused { reason, response })
            }
        }
    }
}

/// Answers authorization requests until `shutdown` resolves.
pub async fn serve(
    nats: async_nats::Client,
    authorizer: Authorizer,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut requests = nats
        .queue_subscribe(nats_jwt::AUTH_CALLOUT_SUBJECT, QUEUE_GROUP.to_owned())
        .await?;
    tracing::info!("Answering NATS authorization requests.");
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = requests.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let Some(reply) = message.reply else {
            continue;
        };
        // Encrypted requests (an `xkey` in the server's callout block) are
        // not configured here: such a request is not read.
        let Ok(request) = std::str::from_utf8(&message.payload) else {
            tracing::warn!("An authorization request that is not text: ignored.");
            continue;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default();
        let response = match authorizer.decide(request, now) {
            Ok(Decision::Admitted { identity, response }) => {
                tracing::info!(pod = %identity.pod, role = identity.role.as_str(), "Admitted.");
                response
            }
            Ok(Decision::Refused { reason, response }) => {
                tracing::warn!(%reason, "Refused a connection.");
                response
            }
            Err(error) => {
                tracing::warn!(%error, "An authorization request no server signed: ignored.");
                continue;
            }
        };
        if let Err(error) = nats.publish(reply, response.into()).await {
            tracing::warn!(%error, "Could not answer an authorization request.");
        }
    }
    faultline_bus::flush_before_exit(&nats, std::time::Duration::from_secs(1)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_cluster::nats_callout::ServiceAccountIssuer;
    use faultline_protocol::cluster::Role;

    #[test]
    fn a_pod_is_admitted_with_its_own_permissions_and_a_stranger_is_refused() {
        let cluster = ServiceAccountIssuer::new("k1").expect("a key");
        let authorizer = Authorizer::new(
            pod_identity::tests::verifier(&cluster),
            KeyPair::new_account(),
            nats_jwt::GLOBAL_ACCOUNT,
        );
        let server = KeyPair::new_server();
        let token = cluster
            .token(Role::Worker, "worker-x1", |_| {})
            .expect("a token");
        let request = nats_jwt::tests::request_from(&server, "worker-x1", &token);
        match authorizer.decide(&request, 1).expect("a server's request") {
            Decision::Admitted { identity, .. } => {
                assert_eq!(identity.role, Role::Worker);
                assert_eq!(identity.pod, "worker-x1");
            }
            refused => panic!("{refused:?}"),
        }
        let request = nats_jwt::tests::request_from(&server, "worker-x2", &token);
        assert!(matches!(
            authorizer.decide(&request, 1).expect("a server's request"),
            Decision::Refused { .. }
        ));
        // Not from a server: no answer at all.
        let forged = nats_jwt::tests::request_from(&KeyPair::new_user(), "worker-x1", &token);
        assert!(authorizer.decide(&forged, 1).is_err());
    }
}
