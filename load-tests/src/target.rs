//! What the generator loads: an HTTP endpoint or a NATS subject.
//!
//! A [`Target`] opens connections and sends one request on one of them.
//! The engine owns timing and recording, so a target only says how a
//! request ended. HTTP goes through hyper's bare HTTP/1.1 connection (no
//! pool, no redirects, no decompression): one request at a time per
//! connection, like wrk, so the generator costs as little CPU as possible
//! on a machine it shares with the system under test.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;

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
        /// GET, POST...
        method: Method,
        /// Path and query.
        path: String,
        /// JSON body, empty for none.
        body: Bytes,
    },
    /// A new cross-shard transfer each time, with its own idempotency key;
    /// the book remembers each one's answer for the invariant check.
    Transfers(Arc<TransferBook>),
}

/// An HTTP/1.1 server.
#[derive(Debug)]
pub struct HttpTarget {
    addr: SocketAddr,
    method: Method,
    uri: Uri,
    /// Host, and Content-Type when there is a body.
    headers: HeaderMap,
    requests: Requests,
}

impl HttpTarget {
    /// Loads `addr` with `requests`; refuses a path that is not a valid
    /// request target. Method, path and headers are parsed here, once,
    /// not for every request.
    pub fn new(addr: SocketAddr, requests: Requests) -> Result<HttpTarget, hyper::http::Error> {
        let (method, path, json) = match &requests {
            Requests::Fixed { method, path, body } => {
                (method.clone(), path.as_str(), !body.is_empty())
            }
            Requests::Transfers(_) => (Method::POST, "/v1/transfers", true),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::try_from(addr.to_string())?);
        if json {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        Ok(HttpTarget {
            addr,
            method,
            uri: Uri::try_from(path)?,
            headers,
            requests,
        })
    }

    /// Request `seq`, from the parts parsed in [`HttpTarget::new`].
    fn request(&self, seq: u64) -> Request<Full<Bytes>> {
        let (body, key) = match &self.requests {
            Requests::Fixed { body, .. } => (body.clone(), None),
            Requests::Transfers(book) => {
                let (key, body) = book.request(seq);
                (body, HeaderValue::try_from(key).ok())
            }
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        if let Some(key) = key {
            request.headers_mut().insert("idempotency-key", key);
        }
        request
    }
}

impl Target for HttpTarget {
    type Connection = SendRequest<Full<Bytes>>;

    async fn connect(&self) -> Result<Self::Connection, Outcome> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|_| Outcome::Connection)?;
        stream.set_nodelay(true).map_err(|_| Outcome::Connection)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Outcome::Connection)?;
        tokio::spawn(connection);
        Ok(sender)
    }

    fn is_open(&self, sender: &Self::Connection) -> bool {
        !sender.is_closed()
    }

    async fn send(&self, sender: &mut Self::Connection, seq: u64) -> Outcome {
        if sender.ready().await.is_err() {
            return Outcome::Connection;
        }
        let response = match sender.send_request(self.request(seq)).await {
            Ok(response) => response,
            Err(_) => return Outcome::Connection,
        };
        let status = response.status().as_u16();
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return Outcome::Connection,
        };
        if let Requests::Transfers(book) = &self.requests {
            book.answered(seq, status, &body);
        }
        if (200..300).contains(&status) {
            Outcome::Ok
        } else {
            Outcome::Status(status)
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
        url: &str,
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
                    .connect(url)
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
