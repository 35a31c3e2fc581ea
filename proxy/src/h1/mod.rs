//! The HTTP/1.1 upstream path of plain-text clusters, run in the request's own task.
//!
//! hyper's client drives every upstream connection from a task of its own: a proxied
//! request crosses to that task over a channel, its response head comes back over a
//! oneshot and its body over another channel, so each request costs several task
//! wake-ups and hand-offs, which profiling showed to be most of the proxy's user-space
//! time (bench/RESULTS.md). Here the request future writes the request head on a pooled
//! connection itself and reads the response head (parsed by httparse); the response
//! body is a `Body` that reads the same socket as the downstream connection polls it,
//! and gives the connection back to its endpoint's pool once the body is complete. The
//! downstream and upstream connections then run as one state machine, as in nginx and
//! HAProxy.
//!
//! It carries body-less requests (`attempt` decides); requests with bodies, protocol
//! upgrades, TLS and HTTP/2 upstreams go through hyper's client (`upstream`). Framing
//! follows RFC 9112 §6: no body for HEAD, 1xx, 204 and 304; chunked when it is the final
//! transfer coding; else Content-Length (conflicting values are refused); else until the
//! upstream closes. A connection is reused only after a complete response that did not
//! ask to close it, and a pooled connection the upstream closed meanwhile (the
//! keep-alive race) is replaced by a new one before anything was answered on it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod pool;
pub use pool::Pool;

/// Idle time before TCP keepalive probes on upstream connections (hyper's client in
/// `upstream` uses it too).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Largest response head (and trailer section) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 128;
/// Bytes read from the upstream at a time.
/// hyper's client starts at 8 KiB too; with one connection per request in flight, a
/// larger buffer shows in the peak memory of an h2c benchmark (~640 upstream connections).
const READ_SIZE: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {0}: {1}")]
    Connect(Authority, String),
    #[error("{0}: {1}")]
    Exchange(Authority, String),
}

/// Sends `req` (its body is not sent: the caller passes only body-less requests) to
/// `to` on an idle pooled connection or a new one, and reads the response head.
pub async fn send<B>(
    pool: &Arc<Pool>,
    to: &Authority,
    connect_timeout: Duration,
    req: &Request<B>,
) -> Result<Response<Body>, Error> {
    let no_body = req.method() == Method::HEAD;
    let no_answer = || Error::Exchange(to.clone(), NO_ANSWER.into());
    if let Some(conn) = pool.checkout() {
        match exchange(conn, req, to, no_body).await {
            Ok((res, conn, framing)) => return Ok(Body::start(res, conn, framing, pool)),
            // Closed before answering: most often the upstream dropped the idle
            // connection just as it was taken, and the request never reached it; then it
            // goes on a new connection. Once the head was written, that cannot be told
            // from an upstream that acted on the request and died: only an idempotent
            // request is sent again then.
            Err(Failed::Closed { sent }) if !sent || is_idempotent(req.method()) => {}
            Err(Failed::Closed { .. }) => return Err(no_answer()),
            Err(Failed::Other(why)) => return Err(Error::Exchange(to.clone(), why)),
        }
    }
    let stream = connect(to, connect_timeout).await?;
    pool.opened.inc();
    let conn = Conn {
        stream,
        buf: BytesMut::with_capacity(READ_SIZE),
        head: Vec::with_capacity(1024),
    };
    match exchange(conn, req, to, no_body).await {
        Ok((res, conn, framing)) => Ok(Body::start(res, conn, framing, pool)),
        Err(Failed::Closed { .. }) => Err(no_answer()),
        Err(Failed::Other(why)) => Err(Error::Exchange(to.clone(), why)),
    }
}

async fn connect(to: &Authority, timeout: Duration) -> Result<TcpStream, Error> {
    let host = to.host().trim_start_matches('[').trim_end_matches(']');
    let port = to.port_u16().unwrap_or(80);
    let fail = |why: String| Error::Connect(to.clone(), why);
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| fail(format!("no connection within {timeout:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    // Best effort: a socket without keepalive probes still works.
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    Ok(stream)
}

/// The request head in HTTP/1.1 origin form. `HeaderMap` values cannot hold CR or LF.
fn write_head<B>(out: &mut Vec<u8>, req: &Request<B>, to: &Authority) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        &b"/"[..]
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let h = req.headers();
    if !h.contains_key(header::HOST) {
        field(out, b"host", to.as_str().as_bytes());
    }
    for (name, value) in h {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // RFC 9110 §8.6: a method that defines a meaning for content says it has none.
    let contentless = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if !contentless && !h.contains_key(header::CONTENT_LENGTH) {
        field(out, b"content-length", b"0");
    }
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

const NO_ANSWER: &str = "the upstream closed the connection without answering";

/// Methods whose repetition has the effect of one request (RFC 9110 §9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

enum Failed {
    /// The connection was closed (or reset) before any byte of an answer; `sent`: after
    /// the request head was written to it.
    Closed {
        sent: bool,
    },
    Other(String),
}

/// A connection and its buffers, which it keeps while pooled: the read buffer's memory
/// comes back once the last body frame cut from it has been written downstream, so a
/// busy connection allocates nothing per exchange.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    buf: BytesMut,
    /// The request head being written.
    head: Vec<u8>,
}

/// How the response body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

type Head = (http::response::Parts, Conn, (Framing, bool));

/// Writes the request head and reads the response head (skipping 1xx interim answers).
async fn exchange<B>(
    mut conn: Conn,
    req: &Request<B>,
    to: &Authority,
    no_body: bool,
) -> Result<Head, Failed> {
    let closed = |e: io::Error, sent: bool| match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => Failed::Closed { sent },
        _ => Failed::Other(e.to_string()),
    };
    conn.head.clear();
    write_head(&mut conn.head, req, to);
    conn.stream
        .write_all(&conn.head)
        .await
        .map_err(|e| closed(e, false))?;
    let Conn {
        mut stream,
        mut buf,
        head,
    } = conn;
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            match parse_head(&buf, no_body).map_err(Failed::Other)? {
                Parsed::Partial if buf.len() > MAX_HEAD => {
                    return Err(Failed::Other(format!(
                        "response head larger than {MAX_HEAD} bytes"
                    )))
                }
                Parsed::Partial => {}
                Parsed::Interim(n) => {
                    buf.advance(n);
                    continue;
                }
                Parsed::Final(n, parts, framing) => {
                    buf.advance(n);
                    return Ok((parts, Conn { stream, buf, head }, framing));
                }
            }
        }
        buf.reserve(READ_SIZE);
        match stream.read_buf(&mut buf).await {
            Ok(0) if !answered => return Err(Failed::Closed { sent: true }),
            Ok(0) => {
                return Err(Failed::Other(
                    "connection closed in the response head".into(),
                ))
            }
            Ok(_) => answered = true,
            Err(e) if !answered => return Err(closed(e, true)),
            Err(e) => return Err(Failed::Other(e.to_string())),
        }
    }
}

enum Parsed {
    Partial,
    /// A 1xx answer of this many bytes, to skip.
    Interim(usize),
    /// The final head's length, the head, its framing and whether the connection can
    /// carry another request afterwards.
    Final(usize, http::response::Parts, (Framing, bool)),
}

fn parse_head(buf: &[u8], no_body: bool) -> Result<Parsed, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut fields);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    let code = r.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status {code}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("101 Switching Protocols to a request that asked for no upgrade".into());
    }
    if status.is_informational() {
        return Ok(Parsed::Interim(n));
    }
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let mut length: Option<u64> = None;
    let mut coded = false;
    let mut chunked = false;
    // `close` wins over `keep-alive` wherever each appears; HTTP/1.0 closes unless
    // asked to keep the connection.
    let (mut close, mut keep_alive) = (false, false);
    let mut listed = false;
    for f in r.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", f.name))?;
        if name == header::CONTENT_LENGTH {
            // Digits only (RFC 9110 §8.6): `+5` or `5, 5` would parse elsewhere.
            let n = std::str::from_utf8(f.value)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values".into());
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
            // Only the final coding says how the message ends.
            chunked = std::str::from_utf8(f.value)
                .ok()
                .and_then(|s| s.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name == header::CONNECTION {
            for token in std::str::from_utf8(f.value).unwrap_or("").split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                } else if !token.is_empty() {
                    listed = true;
                }
            }
        }
        // Hop-by-hop fields end here (the response never switches protocols): not
        // copied only to be stripped again.
        if crate::headers::is_hop_by_hop(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| format!("invalid value of header {}", f.name))?;
        headers.append(name, value);
    }
    if listed {
        for f in r.headers.iter() {
            if f.name.eq_ignore_ascii_case("connection") {
                crate::headers::remove_listed(&mut headers, f.value, false);
            }
        }
    }
    let framing =
        if no_body || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Done
        } else if chunked {
            Framing::Chunked(Chunk::Size)
        } else if coded {
            Framing::UntilClose
        } else {
            length.map_or(Framing::UntilClose, Framing::Length)
        };
    // A message with both Transfer-Encoding and Content-Length, or Transfer-Encoding in
    // HTTP/1.0, may be an attempt at smuggling: serve it by its Transfer-Encoding (the
    // Content-Length goes), but never reuse the connection (RFC 9112 §6.1, §6.3). Nor
    // after a 204 that announced content: it may still come, as the next answer.
    if coded && length.is_some() {
        headers.remove(header::CONTENT_LENGTH);
    }
    let suspect = (coded && (length.is_some() || version == Version::HTTP_10))
        || (status == StatusCode::NO_CONTENT && (coded || length.is_some_and(|l| l > 0)));
    let close = close || (version == Version::HTTP_10 && !keep_alive);
    let reusable = !close && framing != Framing::UntilClose && !suspect;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Parsed::Final(n, parts, (framing, reusable)))
}

/// A chunk-size line at the start of `buf` (RFC 9112 §7.1): hex digits, optional
/// extensions (ignored, but they must be text), CRLF. `None` until the line is complete;
/// else the bytes it takes and the size. Stricter than httparse's, which takes an empty
/// size or a bare LF: a proxy must not read a chunk boundary where the upstream did not.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, String> {
    const MAX_LINE: usize = 1024;
    let Some(lf) = buf.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') else {
        return if buf.len() > MAX_LINE {
            Err("chunk size line too long".into())
        } else {
            Ok(None)
        };
    };
    let line = buf[..lf]
        .strip_suffix(b"\r")
        .ok_or("chunk size line not ended by CRLF")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size".into());
    }
    let ext = line[digits..].trim_ascii_start();
    if !ext.is_empty()
        && (ext[0] != b';' || ext.iter().any(|&b| b.is_ascii_control() && b != b'\t'))
    {
        return Err("invalid chunk extension".into());
    }
    let size = line[..digits].iter().fold(0u64, |n, &b| {
        n << 4 | u64::from((b as char).to_digit(16).unwrap_or(0))
    });
    Ok(Some((lf + 1, size)))
}

/// An upstream response body read straight from its connection.
pub struct Body {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Body")
            .field("framing", &self.framing)
            .finish()
    }
}

enum Step {
    Frame(Frame<Bytes>),
    NeedMore,
    Done,
}

impl Body {
    fn start(
        parts: http::response::Parts,
        conn: Conn,
        (framing, reusable): (Framing, bool),
        pool: &Arc<Pool>,
    ) -> Response<Body> {
        let mut body = Body {
            conn: Some(conn),
            framing,
            reusable,
            pool: pool.clone(),
        };
        if framing == Framing::Done || framing == Framing::Length(0) {
            body.finish();
        }
        Response::from_parts(parts, body)
    }

    /// The body is complete: its connection goes back to the pool if it can be reused
    /// and nothing came after the response.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                self.pool.checkin(conn);
            }
        }
    }

    /// The next frame the buffer holds, if any.
    fn step(&mut self) -> Result<Step, String> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Step::Done);
        };
        let buf = &mut conn.buf;
        loop {
            match &mut self.framing {
                Framing::Done => return Ok(Step::Done),
                Framing::UntilClose if buf.is_empty() => return Ok(Step::NeedMore),
                Framing::UntilClose => return Ok(Step::Frame(Frame::data(buf.split().freeze()))),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = (*left).min(buf.len() as u64);
                    *left -= take;
                    let data = buf.split_to(take as usize).freeze();
                    if *left == 0 {
                        self.framing = match self.framing {
                            Framing::Length(_) => Framing::Done,
                            _ => Framing::Chunked(Chunk::DataEnd),
                        };
                    }
                    return Ok(Step::Frame(Frame::data(data)));
                }
                Framing::Chunked(Chunk::Size) => match chunk_size(buf)? {
                    Some((n, size)) => {
                        buf.advance(n);
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    None => return Ok(Step::NeedMore),
                },
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        return Ok(Step::Done);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let parsed = httparse::parse_headers(buf, &mut fields);
                    // httparse ends a line (and the section) at a bare LF; the chunk
                    // lines here need CRLF, and so does the end of the body.
                    if let Ok(httparse::Status::Complete((n, _))) = parsed {
                        if buf[..n]
                            .iter()
                            .enumerate()
                            .any(|(i, &b)| b == b'\n' && (i == 0 || buf[i - 1] != b'\r'))
                        {
                            return Err("trailer section line not ended by CRLF".into());
                        }
                    }
                    let (n, trailers) = match parsed {
                        Ok(httparse::Status::Complete((n, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                if let (Ok(k), Ok(v)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) {
                                    trailers.append(k, v);
                                }
                            }
                            (n, trailers)
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                            return Err("trailer section too large".into())
                        }
                        Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                        Err(e) => return Err(format!("malformed trailers: {e}")),
                    };
                    buf.advance(n);
                    self.framing = Framing::Done;
                    return Ok(Step::Frame(Frame::trailers(trailers)));
                }
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let step = this.step().map_err(|why| {
                this.conn = None;
                io::Error::new(io::ErrorKind::InvalidData, why)
            });
            match step? {
                Step::Frame(f) => {
                    if this.framing == Framing::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Step::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::NeedMore => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Err(e) = std::task::ready!(conn.stream.poll_read_ready(cx)) {
                this.conn = None;
                return Poll::Ready(Some(Err(e)));
            }
            conn.buf.reserve(READ_SIZE);
            match conn.stream.try_read_buf(&mut conn.buf) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before the body was complete",
                    ))));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
