//! What the generator loads: an HTTP endpoint or a NATS subject.
//!
//! A [`Target`] opens connections and sends one request on one of them.
//! The engine owns timing and recording, so a target only says how a
//! request ended. HTTP goes through [`crate::http1`], a minimal HTTP/1.1
//! client (no pool, no redirects, no decompression): one request at a time
//! per connection, like wrk, so the generator costs as little CPU as
//! possible on a machine it shares with the system under test.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::http1::{self, BadPath, Method};
use crate::recorder::Outcome;
use crate::transfers::TransferBook;

/// Something to load.
pub trait Target: Send + Sync + 'static {
    /// One connection (or one slot on a shared one).
    type Connection: Send + 'static;

    /// Opens a connection; a failure is recorded against the request that
    /// needed it.
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Outcome>> + Send;

    /// Whether an idle connection can still be used (the server may have
    /// closed it).
    fn is_open(&self, _connection: &Self::Connection) -> bool {
        true
    }

    /// Sends request number `seq` and waits for its answer. An
    /// [`Outcome::Connection`] drops the connection; the next request opens
    /// a new one.
    fn send(
        &self,
        connection: &mut Self::Connection,
        seq: u64,
    ) -> impl Future<Output = Outcome> + Send;
}

/// The requests an HTTP target sends.
#[derive(Debug)]
pub enum Requests {
    /// The same request every time.
    Fixed {
        /// GET or POST.
        method: Method,
        /// Path and query.
        path: String,
        /// JSON body, empty for none.
        body: Bytes,
    },
    /// A POST of a JSON object with a routing key added: `"key":
    /// "key-<n>"` for request `n` modulo `keys`.
    Keyed {
        /// Path and query.
        path: String,
        /// The object the key is added to.
        body: serde_json::Map<String, serde_json::Value>,
        /// How many distinct keys.
        keys: u64,
    },
    /// A new cross-shard transfer each time, with its own idempotency key;
    /// the book remembers each one's answer for the invariant check.
    Transfers(Arc<TransferBook>),
}

/// An HTTP/1.1 server.
#[derive(Debug)]
pub struct HttpTarget {
    addr: SocketAddr,
    /// The `Host` header's value.
    host: String,
    requests: Prepared,
}

/// [`Requests`], with a fixed request already serialised.
#[derive(Debug)]
enum Prepared {
    Fixed(Bytes),
    Keyed {
        path: String,
        body: serde_json::Map<String, serde_json::Value>,
        keys: u64,
    },
    Transfers(Arc<TransferBook>),
}

/// Where transfers go.
const TRANSFERS_PATH: &str = "/v1/transfers";

impl HttpTarget {
    /// Loads `addr` with `requests`; refuses a path that cannot stand on a
    /// request line. A fixed request is serialised here, once, not for
    /// every request.
    pub fn new(addr: SocketAddr, requests: Requests) -> Result<HttpTarget, BadPath> {
        let host = addr.to_string();
        let requests = match requests {
            Requests::Fixed { method, path, body } => {
                http1::check_path(&path)?;
                Prepared::Fixed(Bytes::from(http1::encode_request(
                    method,
                    &path,
                    &host,
                    &[],
                    &body,
                )))
            }
            Requests::Keyed { path, body, keys } => {
                http1::check_path(&path)?;
                Prepared::Keyed {
                    path,
                    body,
                    keys: keys.max(1),
                }
            }
            Requests::Transfers(book) => Prepared::Transfers(book),
        };
        Ok(HttpTarget {
            addr,
            host,
            requests,
        })
    }

    /// Request `seq`, serialised.
    fn request(&self, seq: u64) -> Bytes {
        match &self.requests {
            Prepared::Fixed(request) => request.clone(),
            Prepared::Keyed { path, body, keys } => {
                let mut body = body.clone();
                body.insert("key".to_owned(), format!("key-{}", seq % keys).into());
                let body = serde_json::Value::Object(body).to_string();
                Bytes::from(http1::encode_request(
                    Method::Post,
                    path,
                    &self.host,
                    &[],
                    body.as_bytes(),
                ))
            }
            Prepared::Transfers(book) => {
                let (key, body) = book.request(seq);
                Bytes::from(http1::encode_request(
                    Method::Post,
                    TRANSFERS_PATH,
                    &self.host,
                    &[("Idempotency-Key", &key)],
                    &body,
                ))
            }
        }
    }
}

impl Target for HttpTarget {
    type Connection = http1::Connection;

    async fn connect(&self) -> Result<Self::Connection, Outcome> {
        http1::Connection::open(self.addr)
            .await
            .map_err(|_| Outcome::Connection)
    }

    fn is_open(&self, connection: &Self::Connection) -> bool {
        connection.reusable()
    }

    async fn send(&self, connection: &mut Self::Connection, seq: u64) -> Outcome {
        let request = self.request(seq);
        let answer = match connection.exchange(&request).await {
            // The server closed an idle kept-alive connection: send again
            // on a fresh one (a transfer carries its idempotency key, so a
            // resend is never applied twice).
            Err(http1::Error::ClosedBeforeAnswer) => match self.connect().await {
                Ok(fresh) => {
                    *connection = fresh;
                    connection.exchange(&request).await
                }
                Err(outcome) => return outcome,
            },
            answer => answer,
        };
        let Ok(response) = answer else {
            return Outcome::Connection;
        };
        if let Prepared::Transfers(book) = &self.requests {
            book.answered(seq, response.status, &response.body);
        }
        if (200..300).contains(&response.status) {
            Outcome::Ok
        } else {
            Outcome::Status(response.status)
        }
    }
}

/// Request/reply on a NATS subject: the bus alone, the baseline for what
/// the HTTP path adds.
#[derive(Debug)]
pub struct NatsTarget {
    clients: Vec<async_nats::Client>,
    subject: async_nats::Subject,
    payload: Bytes,
    next_client: AtomicUsize,
}

impl NatsTarget {
    /// Opens `clients` connections to `url`. Requests are spread over them;
    /// each connection carries many requests at once, as services do.
    pub async fn connect(
        urls: &[String],
        clients: usize,
        subject: &str,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> anyhow::Result<NatsTarget> {
        let mut connected = Vec::new();
        for _ in 0..clients.max(1) {
            connected.push(
                async_nats::ConnectOptions::new()
                    .request_timeout(Some(timeout))
                    .connect(urls)
                    .await?,
            );
        }
        Ok(NatsTarget {
            clients: connected,
            subject: subject.to_owned().into(),
            payload,
            next_client: AtomicUsize::new(0),
        })
    }
}

impl Target for NatsTarget {
    /// Which of the shared clients this slot uses.
    type Connection = usize;

    async fn connect(&self) -> Result<usize, Outcome> {
        Ok(self.next_client.fetch_add(1, Ordering::Relaxed) % self.clients.len())
    }

    async fn send(&self, client: &mut usize, _seq: u64) -> Outcome {
        use async_nats::client::RequestErrorKind;
        match self.clients[*client]
            .request(self.subject.clone(), self.payload.clone())
            .await
        {
            Ok(_) => Outcome::Ok,
            Err(error) => match error.kind() {
                RequestErrorKind::TimedOut => Outcome::Timeout,
                RequestErrorKind::NoResponders => Outcome::Other("no_responders"),
                _ => Outcome::Other("nats_error"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kept_alive_connection_the_server_closed_is_replaced_without_an_error() {
        let addr = crate::http1::tests::closing_server().await;
        let target = HttpTarget::new(
            addr,
            Requests::Fixed {
                method: Method::Get,
                path: "/".to_owned(),
                body: Bytes::new(),
            },
        )
        .expect("valid path");
        let mut connection = target.connect().await.expect("connect");
        // The server answers one request per connection, then closes it
        // when the next arrives: every request after the first meets a
        // closed connection and must go again on a fresh one.
        for seq in 0..3 {
            assert_eq!(
                target.send(&mut connection, seq).await,
                Outcome::Ok,
                "{seq}"
            );
        }
    }

    #[test]
    fn keyed_calls_carry_their_key_in_turn() {
        let body = serde_json::json!({"op": "echo", "message": "hi"});
        let target = HttpTarget::new(
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            Requests::Keyed {
                path: "/v1/call".to_owned(),
                body: body.as_object().cloned().expect("an object"),
                keys: 3,
            },
        )
        .expect("valid path");
        let key = |seq| {
            let request = target.request(seq);
            let text = std::str::from_utf8(&request).expect("ascii").to_owned();
            let json = &text[text.find("\r\n\r\n").expect("a head") + 4..];
            let json: serde_json::Value = serde_json::from_str(json).expect("json");
            assert_eq!(json["message"], "hi");
            json["key"].as_str().expect("a key").to_owned()
        };
        assert_eq!(
            (0..4).map(key).collect::<Vec<_>>(),
            ["key-0", "key-1", "key-2", "key-0"]
        );
    }

    #[test]
    fn a_path_that_cannot_stand_on_a_request_line_is_refused() {
        let fixed = |path: &str| Requests::Fixed {
            method: Method::Post,
            path: path.to_owned(),
            body: Bytes::from_static(b"{}"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        assert!(HttpTarget::new(addr, fixed("/v1/call")).is_ok());
        assert_eq!(
            HttpTarget::new(addr, fixed("/v1/ca ll")).err(),
            Some(BadPath("/v1/ca ll".to_owned()))
        );
    }
}
