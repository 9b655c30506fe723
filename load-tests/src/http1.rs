//! A minimal HTTP/1.1 client: one request at a time on a kept-alive
//! connection, as wrk sends them.
//!
//! Why not hyper: the generator shares two cores with the system under
//! test, and its own ceiling must be at least 0.9x wrk's on the same
//! target, or its figures would measure the generator. hyper's bare
//! connection reached 0.82x to 0.92x of wrk here; the cost is its
//! generality (a connection task per socket, typed header maps built and
//! dropped per request, body streams). A load generator needs none of it:
//! the request is serialised once and written with one call, the answer's
//! head is parsed in place with `httparse`, and the body is sliced out of
//! the read buffer by its length. That brought the ceiling to 0.95x to
//! 1.05x of wrk in the same runs.
//!
//! What it supports: `Content-Length` and chunked bodies, bodies read to
//! the end of the connection, and `Connection: close`. What it does not:
//! pipelining, `Expect: 100-continue`, upgrades, TLS. A server may close an
//! idle kept-alive connection at any time; an exchange on a reused
//! connection that sees the close before any byte of the answer reports
//! [`Error::ClosedBeforeAnswer`], and the caller sends again on a fresh
//! connection, as browsers and hyper's pool do.
//!
//! The head and body parsing ([`parse_head`], [`chunked_body`]) is pure
//! and unit-tested; [`Connection`] is the I/O around it.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The methods the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET, with no body.
    Get,
    /// POST, with a JSON body.
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// A request target that cannot go on a request line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "bad request target {0:?}: it must start with '/' and hold no spaces or control characters"
)]
pub struct BadPath(pub String);

/// Checks that `path` can stand on a request line.
pub fn check_path(path: &str) -> Result<(), BadPath> {
    if path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(BadPath(path.to_owned()))
    }
}

/// Serialises a request: the request line, `Host`, the given headers, a
/// `Content-Type: application/json` and `Content-Length` when there is a
/// body, then the body. `path` must have passed [`check_path`]; header
/// names and values must be visible ASCII (the callers' are constants and
/// idempotency keys, which are).
pub fn encode_request(
    method: Method,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    let mut line = |parts: &[&str]| {
        for part in parts {
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    };
    line(&[method.as_str(), " ", path, " HTTP/1.1"]);
    line(&["Host: ", host]);
    for (name, value) in headers {
        line(&[name, ": ", value]);
    }
    if !body.is_empty() || method == Method::Post {
        line(&["Content-Type: application/json"]);
        line(&["Content-Length: ", &body.len().to_string()]);
    }
    line(&[]);
    out.extend_from_slice(body);
    out
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// An answer's parsed head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// Bytes the head took, up to and including the blank line.
    pub len: usize,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
}

/// An answer that is not HTTP/1.1 as this client understands it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed HTTP answer: {0}")]
pub struct Malformed(pub &'static str);

/// Headers an answer may have; more is refused as malformed.
const MAX_HEADERS: usize = 32;

/// Parses an answer's head from the start of `buf`: `Ok(None)` while it is
/// incomplete. 1xx answers are not expected (the client never asks for
/// them) and are refused.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed("too many headers")),
        Err(_) => return Err(Malformed("bad status line or header")),
    };
    let status = response.code.ok_or(Malformed("no status"))?;
    if status < 200 {
        return Err(Malformed("unexpected 1xx answer"));
    }
    // HTTP/1.0 closes by default, 1.1 keeps alive by default.
    let mut keep_alive = response.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| Malformed("header value"))?;
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = value
                .trim()
                .parse::<usize>()
                .map_err(|_| Malformed("Content-Length"))?;
            if length.is_some_and(|known| known != parsed) {
                return Err(Malformed("two different Content-Length headers"));
            }
            length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    // RFC 9112 section 6.3: no body for 204 and 304; chunked wins over a
    // length; neither means the body runs to the close.
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        len,
        framing,
        keep_alive,
    }))
}

/// Decodes a chunked body from the start of `buf`: `Ok(None)` while it is
/// incomplete, else the body and the bytes it took (trailers included).
pub fn chunked_body(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Malformed> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(Malformed("chunk size")),
        };
        at += size_len;
        if size == 0 {
            // Trailer fields, if any, end with a blank line.
            let rest = &buf[at..];
            if rest.starts_with(b"\r\n") {
                return Ok(Some((body, at + 2)));
            }
            return Ok(rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|end| (body, at + end + 4)));
        }
        let size = usize::try_from(size).map_err(|_| Malformed("chunk size"))?;
        let end = at.checked_add(size).ok_or(Malformed("chunk size"))?;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(Malformed("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&buf[at..end]);
        at = end + 2;
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection had served an answer before, and was closed before
    /// any byte of this one: the server dropped an idle connection, and
    /// the request can go again on a fresh one.
    #[error("the server closed the kept-alive connection before answering")]
    ClosedBeforeAnswer,
    /// The connection broke.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The answer was not understood; the connection cannot be trusted.
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

/// Read buffer growth step: a typical small answer arrives in one read.
const READ_CHUNK: usize = 16 * 1024;

/// One client connection.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    answered: u64,
    reusable: bool,
}

impl Connection {
    /// Connects to `addr`, with Nagle's algorithm off: a request is one
    /// small write, and waiting to coalesce it would only add latency.
    pub async fn open(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            answered: 0,
            reusable: true,
        })
    }

    /// Whether another request may be sent on it (the last answer did not
    /// say `Connection: close`, and nothing broke).
    pub fn reusable(&self) -> bool {
        self.reusable
    }

    /// Sends `request` (a whole serialised request) and reads its answer.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Response, Error> {
        let reused = self.answered > 0;
        let result = self.exchange_once(request).await;
        match &result {
            Ok(_) => self.answered += 1,
            Err(_) => self.reusable = false,
        }
        match result {
            Err(Error::Io(error)) if reused && self.buf.is_empty() && closed(&error) => {
                Err(Error::ClosedBeforeAnswer)
            }
            other => other,
        }
    }

    async fn exchange_once(&mut self, request: &[u8]) -> Result<Response, Error> {
        // Nothing is pipelined, so anything left over is noise from an
        // answer that already ended.
        self.buf.clear();
        self.stream.write_all(request).await?;
        let head = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            self.read_more().await?;
        };
        if !head.keep_alive {
            self.reusable = false;
        }
        let body = match head.framing {
            Framing::Length(length) => {
                while self.buf.len() < head.len + length {
                    self.read_more().await?;
                }
                self.buf.advance(head.len);
                self.buf.split_to(length).freeze()
            }
            Framing::Chunked => loop {
                if let Some((body, used)) = chunked_body(&self.buf[head.len..])? {
                    self.buf.advance(head.len + used);
                    break Bytes::from(body);
                }
                self.read_more().await?;
            },
            Framing::UntilClose => {
                while self.stream.read_buf(&mut self.buf).await? > 0 {}
                self.buf.advance(head.len);
                self.buf.split().freeze()
            }
        };
        Ok(Response {
            status: head.status,
            body,
        })
    }

    /// Reads whatever has arrived; the end of the stream is an error here
    /// (the answer is not complete).
    async fn read_more(&mut self) -> io::Result<()> {
        self.buf.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }
}

/// Whether `error` is the peer closing or resetting the connection.
fn closed(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes())
            .expect("well formed")
            .expect("complete")
    }

    #[test]
    fn encodes_a_post_with_its_length_and_headers() {
        let request = encode_request(
            Method::Post,
            "/v1/transfers",
            "127.0.0.1:8080",
            &[("idempotency-key", "k-1")],
            b"{}",
        );
        assert_eq!(
            String::from_utf8(request).expect("ascii"),
            "POST /v1/transfers HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nidempotency-key: k-1\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        let get = encode_request(Method::Get, "/", "h", &[], b"");
        assert_eq!(get, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    #[test]
    fn paths_must_fit_on_a_request_line() {
        assert_eq!(check_path("/v1/call?x=1"), Ok(()));
        for bad in ["", "v1/call", "/a b", "/a\r\nX: y"] {
            assert_eq!(check_path(bad), Err(BadPath(bad.to_owned())), "{bad:?}");
        }
    }

    #[test]
    fn a_head_is_incomplete_until_its_blank_line() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for end in 0..text.find("\r\n\r\n").expect("blank line") + 3 {
            assert_eq!(parse_head(&text.as_bytes()[..end]), Ok(None), "{end}");
        }
        assert_eq!(
            head(text),
            Head {
                status: 200,
                len: text.len() - 5,
                framing: Framing::Length(5),
                keep_alive: true
            }
        );
    }

    #[test]
    fn framing_and_keep_alive_follow_rfc_9112() {
        let chunked =
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(chunked.framing, Framing::Chunked);
        let to_close = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            (to_close.framing, to_close.keep_alive),
            (Framing::UntilClose, false)
        );
        let closing = head("HTTP/1.1 503 x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((closing.status, closing.keep_alive), (503, false));
        let old = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!old.keep_alive);
        let old_kept =
            head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(old_kept.keep_alive);
        let no_content = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(
            (no_content.framing, no_content.keep_alive),
            (Framing::Length(0), true)
        );
    }

    #[test]
    fn malformed_heads_are_named() {
        for (bad, why) in [
            ("HTTP/1.1 abc\r\n\r\n", "bad status line or header"),
            ("HTTP/1.1 100 Continue\r\n\r\n", "unexpected 1xx answer"),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "two different Content-Length headers",
            ),
        ] {
            assert_eq!(parse_head(bad.as_bytes()), Err(Malformed(why)), "{bad:?}");
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            parse_head(many.as_bytes()),
            Err(Malformed("too many headers"))
        );
    }

    #[test]
    fn chunked_bodies_decode_with_and_without_trailers() {
        let plain = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(
            chunked_body(plain),
            Ok(Some((b"hello world".to_vec(), plain.len() - 4)))
        );
        let trailers = b"2\r\nhi\r\n0\r\nX-Checksum: 1\r\n\r\n";
        assert_eq!(
            chunked_body(trailers),
            Ok(Some((b"hi".to_vec(), trailers.len())))
        );
        assert_eq!(
            chunked_body(b"2\r\nhiX\r\n0\r\n\r\n"),
            Err(Malformed("chunk not followed by CRLF"))
        );
        assert_eq!(chunked_body(b"zz\r\n"), Err(Malformed("chunk size")));
    }

    proptest! {
        /// Any split of a chunked body: every strict prefix is incomplete,
        /// the whole decodes to the original.
        #[test]
        fn chunked_prefixes_are_incomplete(data in proptest::collection::vec(any::<u8>(), 0..200), size in 1usize..50) {
            let mut wire = Vec::new();
            for chunk in data.chunks(size) {
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            for end in 0..wire.len() {
                prop_assert_eq!(chunked_body(&wire[..end]), Ok(None));
            }
            prop_assert_eq!(chunked_body(&wire), Ok(Some((data, wire.len()))));
        }
    }

    /// A server on loopback that answers the first request on each
    /// connection, then closes it without answering the second: the
    /// keep-alive race, on purpose.
    pub(crate) async fn closing_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0; 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    // Read the next request, then close without a word.
                    let _ = socket.read(&mut buf).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_close_before_the_answer_on_a_reused_connection_is_told_apart() {
        let addr = closing_server().await;
        let request = encode_request(Method::Get, "/", "test", &[], b"");
        let mut connection = Connection::open(addr).await.expect("connect");
        let first = connection.exchange(&request).await.expect("first answer");
        assert_eq!((first.status, &first.body[..]), (200, &b"ok"[..]));
        assert!(connection.reusable());
        let second = connection.exchange(&request).await;
        assert!(
            matches!(second, Err(Error::ClosedBeforeAnswer)),
            "{second:?}"
        );
        assert!(!connection.reusable());
    }

    #[tokio::test]
    async fn a_fresh_connection_closed_before_the_answer_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let request = encode_request(Method::Get, "/", "test", &[], b"");
        let mut connection = Connection::open(addr).await.expect("connect");
        let answer = connection.exchange(&request).await;
        assert!(matches!(answer, Err(Error::Io(_))), "{answer:?}");
    }
}
