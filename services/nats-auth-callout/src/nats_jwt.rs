//! The JWTs of NATS's auth callout: reading the server's authorization
//! request, and writing the user it admits and the response that carries
//! it.
//!
//! NATS JWTs are ordinary three-part JWTs whose signature is an ed25519
//! signature by an nkey (`"alg": "ed25519-nkey"`); the claims' `iss` is the
//! signer's public nkey, whose first letter says what it is (`N` a server,
//! `A` an account, `U` a user). The exchange, with the fields this module
//! reads and writes (nats-server's `server/auth_callout.go` is the
//! reference):
//!
//! 1. A client connects. The server makes a fresh user nkey for it and
//!    publishes an *authorization request*, signed by the server, on
//!    `$SYS.REQ.USER.AUTH`: `nats.user_nkey` (that fresh key),
//!    `nats.server_id.id`, and `nats.connect_opts` (what the client sent:
//!    `user`, `pass`, `auth_token`).
//! 2. The callout answers with an *authorization response* signed by the
//!    issuer account the server is configured to trust: `sub` is the fresh
//!    user nkey, `aud` the server's id (so a response cannot be replayed
//!    for another connection or server), and `nats.jwt` a *user* JWT with
//!    the same subject and the permissions, or `nats.error`.
//!
//! Pure: no I/O, so everything here is unit-tested.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::{KeyPair, KeyPairType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use faultline_protocol::permissions::{self, Permissions};

/// The header of every NATS JWT.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// The subject nats-server sends authorization requests to.
pub const AUTH_CALLOUT_SUBJECT: &str = "$SYS.REQ.USER.AUTH";

/// The account a user is placed in when the server defines none (the
/// global account of a configuration without `accounts`).
pub const GLOBAL_ACCOUNT: &str = "$G";

/// Why a JWT was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or not JSON.
    #[error("malformed JWT: {0}")]
    Malformed(String),
    /// The header names another algorithm than NATS's.
    #[error("not an ed25519-nkey JWT")]
    WrongAlgorithm,
    /// `iss` is not a public nkey of the kind expected.
    #[error("issuer {0:?} is not a {1:?} nkey")]
    WrongIssuer(String, KeyPairType),
    /// The signature does not verify with `iss`'s key.
    #[error("the signature does not match the issuer")]
    BadSignature,
    /// A claim type other than the one expected.
    #[error("a {found:?} claim where an {expected:?} was expected")]
    WrongType {
        /// What `nats.type` was.
        found: String,
        /// What it had to be.
        expected: &'static str,
    },
    /// Signing failed (the key has no seed).
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// The parts of an authorization request the callout reads.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationRequest {
    /// The server that asks.
    pub server_id: ServerId,
    /// The fresh user nkey the answer must be about.
    pub user_nkey: String,
    /// What the client sent in its CONNECT.
    #[serde(default)]
    pub connect_opts: ConnectOptions,
    /// Where the client connects from, as the server saw it.
    #[serde(default)]
    pub client_info: ClientInfo,
    #[serde(rename = "type")]
    kind: String,
}

/// The asking server.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerId {
    /// Its id: the response's audience.
    pub id: String,
    /// Its name, for logs.
    #[serde(default)]
    pub name: String,
}

/// The credentials a client presented.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectOptions {
    /// `user`.
    #[serde(default)]
    pub user: Option<String>,
    /// `pass`.
    #[serde(default)]
    pub pass: Option<String>,
}

/// The connecting client, as the server saw it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientInfo {
    /// Its address.
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<N> {
    iss: String,
    nats: N,
}

/// Decodes an authorization request and checks that a server signed it.
pub fn read_request(token: &str) -> Result<AuthorizationRequest, JwtError> {
    let request: AuthorizationRequest = verified(token, KeyPairType::Server)?;
    if request.kind != "authorization_request" {
        return Err(JwtError::WrongType {
            found: request.kind,
            expected: "authorization_request",
        });
    }
    Ok(request)
}

/// The `nats` part of a JWT signed by a key of kind `issuer`, once its
/// signature is checked.
fn verified<N: DeserializeOwned>(token: &str, issuer: KeyPairType) -> Result<N, JwtError> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three parts".into()));
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|error| JwtError::Malformed(error.to_string()))
    };
    let header: serde_json::Value = serde_json::from_slice(&decode(header)?)
        .map_err(|error| JwtError::Malformed(error.to_string()))?;
    if header["alg"] != "ed25519-nkey" {
        return Err(JwtError::WrongAlgorithm);
    }
    let body = decode(claims)?;
    let envelope: Envelope<N> =
        serde_json::from_slice(&body).map_err(|error| JwtError::Malformed(error.to_string()))?;
    let key = KeyPair::from_public_key(&envelope.iss)
        .ok()
        .filter(|key| key.key_pair_type() == issuer)
        .ok_or_else(|| JwtError::WrongIssuer(envelope.iss.clone(), issuer))?;
    let signed_part = &token[..token.rfind('.').unwrap_or_default()];
    key.verify(signed_part.as_bytes(), &decode(signature)?)
        .map_err(|_| JwtError::BadSignature)?;
    Ok(envelope.nats)
}

/// The claims every NATS JWT carries.
#[derive(Serialize)]
struct Claims<'a, N> {
    jti: String,
    iat: u64,
    iss: String,
    sub: &'a str,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    nats: N,
}

/// A user's rights as a user JWT states them.
#[derive(Serialize)]
struct UserClaims {
    #[serde(rename = "pub")]
    publish: Allow,
    #[serde(rename = "sub")]
    subscribe: Allow,
    /// It may answer the requests it receives (their reply subject is
    /// another instance's inbox) without a right to publish there.
    resp: Responses,
    // No limits beyond the account's, as nats-server's own tools write.
    subs: i64,
    data: i64,
    payload: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

#[derive(Serialize)]
struct Responses {
    max: u32,
    /// Nanoseconds.
    ttl: u128,
}

#[derive(Serialize)]
struct Allow {
    allow: Vec<String>,
}

#[derive(Serialize)]
struct ResponseClaims {
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

/// The response admitting the requested connection as `name`, with
/// `permissions`, in `account`; signed by `issuer`.
pub fn admit(
    request: &AuthorizationRequest,
    name: &str,
    permissions: &Permissions,
    account: &str,
    issuer: &KeyPair,
    now_secs: u64,
) -> Result<String, JwtError> {
    let user = sign(
        &Claims {
            jti: jti(),
            iat: now_secs,
            iss: issuer.public_key(),
            sub: &request.user_nkey,
            // Where the user is placed: an account name.
            aud: account,
            name: Some(name),
            nats: UserClaims {
                publish: Allow {
                    allow: permissions.publish.clone(),
                },
                subscribe: Allow {
                    allow: permissions.subscribe.clone(),
                },
                resp: Responses {
                    max: permissions::RESPONSES_PER_REQUEST,
                    ttl: permissions::RESPONSE_WINDOW.as_nanos(),
                },
                subs: -1,
                data: -1,
                payload: -1,
                kind: "user",
                version: 2,
            },
        },
        issuer,
    )?;
    respond(request, Some(user), None, issuer, now_secs)
}

/// The response refusing the requested connection, saying why (the
/// server logs it; the client only learns it was not authorized).
pub fn refuse(
    request: &AuthorizationRequest,
    reason: &str,
    issuer: &KeyPair,
    now_secs: u64,
) -> Result<String, JwtError> {
    respond(request, None, Some(reason.to_owned()), issuer, now_secs)
}

fn respond(
    request: &AuthorizationRequest,
    jwt: Option<String>,
    error: Option<String>,
    issuer: &KeyPair,
    now_secs: u64,
) -> Result<String, JwtError> {
    sign(
        &Claims {
            jti: jti(),
            iat: now_secs,
            iss: issuer.public_key(),
            // About this connection's fresh key, for this server only.
            sub: &request.user_nkey,
            aud: &request.server_id.id,
            name: None,
            nats: ResponseClaims {
                jwt,
                error,
                kind: "authorization_response",
                version: 2,
            },
        },
        issuer,
    )
}

fn sign<C: Serialize>(claims: &C, key: &KeyPair) -> Result<String, JwtError> {
    let body = serde_json::to_vec(claims).map_err(|error| JwtError::Sign(error.to_string()))?;
    let signed_part = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(body)
    );
    let signature = key
        .sign(signed_part.as_bytes())
        .map_err(|error| JwtError::Sign(error.to_string()))?;
    Ok(format!(
        "{signed_part}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// A unique id for a JWT (the server does not check how it is made).
fn jti() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request as nats-server writes one, signed by `server`.
    pub(crate) fn request_from(server: &KeyPair, user: &str, pass: &str) -> String {
        #[derive(Serialize)]
        struct Request<'a> {
            server_id: serde_json::Value,
            user_nkey: String,
            connect_opts: serde_json::Value,
            #[serde(rename = "type")]
            kind: &'a str,
            version: u8,
        }
        sign(
            &Claims {
                jti: jti(),
                iat: 1,
                iss: server.public_key(),
                sub: "ACCOUNT",
                aud: "nats-authorization-request",
                name: None,
                nats: Request {
                    server_id: serde_json::json!({ "id": server.public_key(), "name": "n1" }),
                    user_nkey: KeyPair::new_user().public_key(),
                    connect_opts: serde_json::json!({ "user": user, "pass": pass, "protocol": 1 }),
                    kind: "authorization_request",
                    version: 2,
                },
            },
            server,
        )
        .expect("a server key signs")
    }

    fn claims_of(token: &str) -> serde_json::Value {
        let body = token.split('.').nth(1).expect("three parts");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).expect("base64url")).expect("json")
    }

    #[test]
    fn a_servers_request_is_read_and_a_forged_or_altered_one_is_not() {
        let server = KeyPair::new_server();
        let token = request_from(&server, "worker-1", "secret");
        let request = read_request(&token).expect("a server's request");
        assert_eq!(request.connect_opts.user.as_deref(), Some("worker-1"));
        assert_eq!(request.server_id.id, server.public_key());

        // Signed by an account, not a server: refused.
        let account = KeyPair::new_account();
        assert!(matches!(
            read_request(&request_from(&account, "worker-1", "secret")),
            Err(JwtError::WrongIssuer(..))
        ));
        // Claims changed after signing: refused.
        let mut parts: Vec<&str> = token.split('.').collect();
        let altered = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).expect("b64"))
                .expect("utf8")
                .replace("worker-1", "worker-2"),
        );
        parts[1] = &altered;
        assert!(matches!(
            read_request(&parts.join(".")),
            Err(JwtError::BadSignature)
        ));
        assert!(matches!(
            read_request("not.a-jwt"),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn an_admission_is_about_this_connection_for_this_server_with_the_permissions() {
        let server = KeyPair::new_server();
        let issuer = KeyPair::new_account();
        let request = read_request(&request_from(&server, "worker-1", "t")).expect("request");
        let permissions = Permissions {
            publish: vec!["a.b".into()],
            subscribe: vec!["c.> q".into()],
        };
        let response = admit(
            &request,
            "worker-1",
            &permissions,
            GLOBAL_ACCOUNT,
            &issuer,
            10,
        )
        .expect("signed");
        let claims = claims_of(&response);
        assert_eq!(claims["iss"], issuer.public_key());
        assert_eq!(claims["sub"], request.user_nkey);
        assert_eq!(claims["aud"], server.public_key());
        assert_eq!(claims["nats"]["type"], "authorization_response");
        // The response verifies with the issuer's public key, as the
        // server checks it.
        let envelope: serde_json::Value =
            verified(&response, KeyPairType::Account).expect("verifies");
        let user = claims_of(envelope["jwt"].as_str().expect("a user JWT"));
        assert_eq!(user["sub"], request.user_nkey);
        assert_eq!(user["aud"], GLOBAL_ACCOUNT);
        assert_eq!(user["name"], "worker-1");
        assert_eq!(user["nats"]["pub"]["allow"], serde_json::json!(["a.b"]));
        assert_eq!(user["nats"]["sub"]["allow"], serde_json::json!(["c.> q"]));
        assert_eq!(user["nats"]["resp"]["max"], 1);

        let refusal = refuse(&request, "no", &issuer, 10).expect("signed");
        let claims = claims_of(&refusal);
        assert_eq!(claims["nats"]["error"], "no");
        assert!(claims["nats"].get("jwt").is_none());
    }
}
