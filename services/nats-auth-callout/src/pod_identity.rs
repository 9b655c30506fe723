//! Who a connecting pod is: its Kubernetes service-account token, checked.
//!
//! Each Faultline pod mounts a *projected* service-account token with the
//! audience `nats` and presents it as its NATS password, with its pod name
//! (its instance id) as the user. The token is a JWT signed by the cluster's
//! service-account issuer; its `kubernetes.io` claim names the namespace,
//! the service account and the pod it was issued to. A token is bound to
//! its pod: the kubelet rotates it, and it expires within the hour.
//!
//! The checks: the signature against the cluster's published keys (its
//! JWKS, `kubectl get --raw /openid/v1/jwks`), the issuer, the audience,
//! the expiry, the namespace, and the service account, which says the role
//! (`faultline-worker` is a worker, and so on). The user name must be the
//! pod named in the token: the instance id is what its permissions are
//! built from, so a worker cannot claim another worker's subjects.
//!
//! Pure: the keys are given, nothing is fetched, so this is unit-tested.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use faultline_protocol::cluster::Role;

/// The prefix of the service accounts Faultline's pods run as: the role
/// follows it (`faultline-load-balancer`).
pub const SERVICE_ACCOUNT_PREFIX: &str = "faultline-";

/// A pod's checked identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// Its role, from its service account.
    pub role: Role,
    /// Its pod name: the instance id.
    pub pod: String,
}

/// Why a pod was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No user name or no token was presented.
    #[error("no pod name and service-account token presented")]
    NoCredentials,
    /// The token's header is unreadable or names no key.
    #[error("unreadable token header: {0}")]
    Header(String),
    /// An algorithm other than the cluster's (RS256 or ES256).
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    /// The token's key id is not among the cluster's keys.
    #[error("token signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The signature, issuer, audience or expiry did not check out.
    #[error("token refused: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// A token for another namespace.
    #[error("token for namespace {found:?}, not {expected:?}")]
    Namespace {
        /// The token's.
        found: String,
        /// This deployment's.
        expected: String,
    },
    /// A token not bound to a pod (a long-lived secret-based one).
    #[error("token is not bound to a pod")]
    NotAPod,
    /// A service account that is no Faultline role's.
    #[error("service account {0:?} is no Faultline role's")]
    ServiceAccount(String),
    /// The user name is not the pod the token was issued to.
    #[error("user {user:?} presented the token of pod {pod:?}")]
    NotItsToken {
        /// The name presented.
        user: String,
        /// The token's pod.
        pod: String,
    },
}

/// Checks pods' tokens against one cluster's keys.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: JwkSet,
    issuer: String,
    audience: String,
    namespace: String,
}

#[derive(Deserialize)]
struct TokenClaims {
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: String,
    #[serde(default)]
    pod: Option<Named>,
    serviceaccount: Named,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

impl TokenVerifier {
    /// A verifier for tokens `issuer` signed with one of `keys`, for
    /// `audience`, in `namespace`.
    pub fn new(keys: JwkSet, issuer: &str, audience: &str, namespace: &str) -> TokenVerifier {
        TokenVerifier {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// The identity of the pod that connects as `user` with `token`.
    pub fn verify(&self, user: &str, token: &str) -> Result<PodIdentity, IdentityError> {
        if user.is_empty() || token.is_empty() {
            return Err(IdentityError::NoCredentials);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| IdentityError::Header(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(IdentityError::Algorithm(header.alg));
        }
        let kid = header
            .kid
            .ok_or_else(|| IdentityError::Header("no key id".into()))?;
        let jwk = self
            .keys
            .find(&kid)
            .ok_or_else(|| IdentityError::UnknownKey(kid.clone()))?;
        let key = DecodingKey::from_jwk(jwk)?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // The API server's clock and ours may differ a little.
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &key, &validation)?
            .claims
            .kubernetes;
        if claims.namespace != self.namespace {
            return Err(IdentityError::Namespace {
                found: claims.namespace,
                expected: self.namespace.clone(),
            });
        }
        let pod = claims.pod.ok_or(IdentityError::NotAPod)?.name;
        let account = claims.serviceaccount.name;
        let role = account
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|role| Role::ALL.into_iter().find(|r| r.as_str() == role))
            .ok_or(IdentityError::ServiceAccount(account.clone()))?;
        if pod != user {
            return Err(IdentityError::NotItsToken {
                user: user.to_owned(),
                pod,
            });
        }
        Ok(PodIdentity { role, pod })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use faultline_cluster::nats_callout::{NAMESPACE, ServiceAccountIssuer, TOKEN_ISSUER};

    /// A verifier of `issuer`'s tokens, as the callout runs.
    pub(crate) fn verifier(issuer: &ServiceAccountIssuer) -> TokenVerifier {
        let keys = serde_json::from_value(issuer.jwks()).expect("a JWKS");
        TokenVerifier::new(keys, TOKEN_ISSUER, "nats", NAMESPACE)
    }

    fn issuer(kid: &str) -> ServiceAccountIssuer {
        ServiceAccountIssuer::new(kid).expect("a key")
    }

    fn token(
        issuer: &ServiceAccountIssuer,
        role: Role,
        pod: &str,
        adjust: impl FnOnce(&mut serde_json::Value),
    ) -> String {
        issuer.token(role, pod, adjust).expect("a token")
    }

    #[test]
    fn a_pods_own_token_names_its_role_and_id() {
        let cluster = issuer("k1");
        let own = token(&cluster, Role::Worker, "worker-7f9c-x2", |_| {});
        assert_eq!(
            verifier(&cluster)
                .verify("worker-7f9c-x2", &own)
                .expect("admitted"),
            PodIdentity {
                role: Role::Worker,
                pod: "worker-7f9c-x2".into()
            }
        );
        let own = token(&cluster, Role::LoadBalancer, "lb-1", |_| {});
        assert_eq!(
            verifier(&cluster).verify("lb-1", &own).expect("ok").role,
            Role::LoadBalancer
        );
    }

    #[test]
    fn every_other_token_is_refused() {
        let cluster = issuer("k1");
        let verifier = verifier(&cluster);
        let refused = |user: &str, token: &str| verifier.verify(user, token).expect_err("refused");
        let forged =
            |adjust: fn(&mut serde_json::Value)| token(&cluster, Role::Worker, "worker-a", adjust);

        let own = forged(|_| {});
        assert!(matches!(
            refused("worker-b", &own),
            IdentityError::NotItsToken { .. }
        ));
        assert!(matches!(
            refused("worker-a", ""),
            IdentityError::NoCredentials
        ));
        let expired = forged(|claims| {
            claims["exp"] = serde_json::json!(jsonwebtoken::get_current_timestamp() - 600);
        });
        assert!(matches!(
            refused("worker-a", &expired),
            IdentityError::Token(_)
        ));
        let audience = forged(|claims| {
            claims["aud"] = serde_json::json!(["https://kubernetes.default.svc"]);
        });
        assert!(matches!(
            refused("worker-a", &audience),
            IdentityError::Token(_)
        ));
        let namespace = forged(|claims| {
            claims["kubernetes.io"]["namespace"] = serde_json::json!("default");
        });
        assert!(matches!(
            refused("worker-a", &namespace),
            IdentityError::Namespace { .. }
        ));
        let account = forged(|claims| {
            claims["kubernetes.io"]["serviceaccount"]["name"] = serde_json::json!("default");
        });
        assert!(matches!(
            refused("worker-a", &account),
            IdentityError::ServiceAccount(_)
        ));
        let unbound = forged(|claims| {
            if let Some(kubernetes) = claims["kubernetes.io"].as_object_mut() {
                kubernetes.remove("pod");
            }
        });
        assert!(matches!(
            refused("worker-a", &unbound),
            IdentityError::NotAPod
        ));
        // Another cluster's key with the same key id: the signature fails.
        let stranger = token(&issuer("k1"), Role::Worker, "worker-a", |_| {});
        assert!(matches!(
            refused("worker-a", &stranger),
            IdentityError::Token(_)
        ));
        let unknown = token(&issuer("k2"), Role::Worker, "worker-a", |_| {});
        assert!(matches!(
            refused("worker-a", &unknown),
            IdentityError::UnknownKey(_)
        ));
    }
}
