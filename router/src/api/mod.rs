//! The router's HTTP server (`http_addr`): HTTP/1.1 with keep-alive on
//! threads of its own — one per connection, at most `http_max_connections`
//! (more are answered 503 and closed) — serving the dashboard, `/metrics`,
//! `/health`, `/api/*` ([`crate::http`]) and the HTTP API v1 ([`v1`]).
//!
//! Owns: reading requests (head ≤ 16 KiB, body ≤ 1 MiB with a
//! `Content-Length`; a request must arrive whole within 30 s, an idle
//! connection closes after 30 s), writing answers, server-sent events.
//!
//! Does not own: the router's state. Everything reaches the router
//! through its sockets (jobs through the frontend like any client's,
//! status and actions through the admin socket), events from the shared
//! window the router's event writer fills: nothing here can block the
//! router's loop.

pub mod idempotency;
pub mod v1;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest request head (request line and headers).
const MAX_HEAD: usize = 16 << 10;
/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;
/// How long a request may take to arrive, and an idle connection lives.
const IDLE: Duration = Duration::from_secs(30);

/// What the HTTP server needs to know.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The admin socket to connect to (None: CURVE-only, no HTTP access).
    pub admin_addr: Option<String>,
    /// The frontend to send jobs to (None: CURVE-only).
    pub frontend_addr: Option<String>,
    /// The router's data_dir (admin token, client tokens, idempotency log).
    pub data_dir: PathBuf,
    pub max_connections: usize,
    pub idempotency_ttl: f64,
}

/// One request as read.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    /// The path without the query, `%XX` not decoded.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub url_len: usize,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response { status, content_type: "application/json", body: v.to_string().into_bytes(), headers: Vec::new() }
    }

    pub fn raw_json(status: u16, body: String) -> Response {
        Response { status, content_type: "application/json", body: body.into_bytes(), headers: Vec::new() }
    }

    pub fn error(status: u16, why: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": why.into() }))
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// What a route gives back.
pub enum Outcome {
    Answer(Response),
    /// Server-sent events from the window, for ever.
    Stream(v1::EventStream),
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Starts the server on `listener` (a thread accepting, one per connection).
pub fn serve(listener: TcpListener, shared: crate::http::SharedSnapshot, cfg: ApiConfig) -> std::io::Result<()> {
    let ctx = Arc::new(v1::Api::new(shared, cfg));
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("emq-http".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            if active.load(Ordering::Relaxed) >= ctx.cfg.max_connections {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let body = r#"{"error":"too many connections (http_max_connections)"}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}",
                    body.len()
                );
                continue;
            }
            active.fetch_add(1, Ordering::Relaxed);
            let guard = ActiveGuard(active.clone());
            let ctx = ctx.clone();
            let spawned = std::thread::Builder::new().name("emq-http-conn".into()).spawn(move || {
                let _guard = guard;
                connection(stream, &ctx);
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "http: cannot start a connection thread");
            }
        }
    })?;
    Ok(())
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why reading a request stopped.
enum ReadError {
    /// The peer closed, or went idle: nothing to answer.
    Closed,
    /// Answer this, then close.
    Answer(Response),
}

/// Serves one connection until it closes.
fn connection(stream: TcpStream, api: &v1::Api) {
    let mut links = api.take_links();
    serve_connection(stream, api, &mut links);
    api.give_back(links);
}

fn serve_connection(mut stream: TcpStream, api: &v1::Api, links: &mut v1::Links) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_write_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let (req, keep_alive) = match read_request(&mut stream, &mut buf) {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(ReadError::Answer(resp)) => {
                let _ = write_response(&mut stream, &resp, false);
                // A lingering close: what the client still sends is read
                // (a little, briefly) so the kernel does not answer it with
                // a reset that could destroy our answer before it is read.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut sink = [0u8; 8192];
                for _ in 0..256 {
                    if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
                        break;
                    }
                }
                return;
            }
        };
        match api.route(&req, links) {
            Outcome::Answer(resp) => {
                if write_response(&mut stream, &resp, keep_alive).is_err() || !keep_alive {
                    return;
                }
            }
            Outcome::Stream(s) => {
                s.run(&mut stream, api);
                return;
            }
        }
    }
}

/// Reads one request from `stream` (bytes beyond it stay in `buf`).
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Request, bool), ReadError> {
    let deadline = std::time::Instant::now() + IDLE;
    let mut chunk = [0u8; 8192];
    // The head.
    let head_len = loop {
        if let Some(i) = find_head_end(buf) {
            break i;
        }
        if buf.len() > MAX_HEAD {
            // The request line alone past the limit: the URL is too long.
            if !buf[..MAX_HEAD].windows(2).any(|w| w == b"\r\n") {
                return Err(ReadError::Answer(Response::error(414, "URL longer than 16 KiB")));
            }
            return Err(ReadError::Answer(Response::error(431, "request head longer than 16 KiB")));
        }
        if std::time::Instant::now() >= deadline && !buf.is_empty() {
            return Err(ReadError::Answer(Response::error(408, "request not complete within 30 s")));
        }
        let room = (MAX_HEAD + 1 - buf.len()).min(chunk.len()).max(1);
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) if !buf.is_empty() => {
                return Err(ReadError::Answer(Response::error(408, "request not complete within 30 s")))
            }
            Err(_) => return Err(ReadError::Closed),
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ReadError::Answer(Response::error(400, "incomplete request head")))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::Answer(Response::error(431, "more than 64 headers")));
        }
        Err(e) => return Err(ReadError::Answer(Response::error(400, format!("malformed request: {e}")))),
    }
    let method = parsed.method.unwrap_or("").to_owned();
    let target = parsed.path.unwrap_or("/").to_owned();
    let version = parsed.version.unwrap_or(1);
    let mut req = Request { method, url_len: target.len(), ..Default::default() };
    for h in parsed.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_owned();
        req.headers.push((h.name.to_ascii_lowercase(), value));
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    req.path = path.to_owned();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        req.query.push((url_decode(k), url_decode(v)));
    }
    buf.drain(..head_len);
    let connection = req.header("connection").map(str::to_ascii_lowercase);
    let keep_alive = match version {
        0 => connection.as_deref() == Some("keep-alive"),
        _ => connection.as_deref() != Some("close"),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Answer(Response::error(
            411,
            "chunked request bodies are not taken: send Content-Length",
        )));
    }
    // Two different lengths: which one a proxy in front believed is
    // unknowable (request smuggling) — refused.
    let mut lengths = req.headers.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| v.as_str());
    if let Some(first) = lengths.next() {
        if lengths.any(|v| v != first) {
            return Err(ReadError::Answer(Response::error(400, "conflicting Content-Length headers")));
        }
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return Err(ReadError::Answer(Response::error(400, "Content-Length is not a number"))),
        },
    };
    if len > MAX_BODY {
        return Err(ReadError::Answer(Response::error(413, format!("body larger than {MAX_BODY} bytes"))));
    }
    while buf.len() < len {
        if std::time::Instant::now() >= deadline {
            return Err(ReadError::Answer(Response::error(408, "body not complete within 30 s")));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Answer(Response::error(408, "body not complete within 30 s"))),
        }
    }
    req.body = buf.drain(..len).collect();
    Ok((req, keep_alive))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// `%XX` and `+` of a query component.
pub fn url_decode(s: &str) -> String {
    crate::http::percent_decode(&s.replace('+', " "))
}

fn write_response(stream: &mut TcpStream, r: &Response, keep_alive: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (n, v) in &r.headers {
        // Values come from us (ids, paths): no CR/LF, but be sure.
        if !v.contains(['\r', '\n']) {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    head.push_str(if keep_alive { "Connection: keep-alive\r\n\r\n" } else { "Connection: close\r\n\r\n" });
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    stream.write_all(&out)?;
    stream.flush()
}
