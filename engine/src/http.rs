//! A sans-IO HTTP/1.1 responder, shared by plain HTTP (on TCP) and HTTPS (on TLS plaintext).
//!
//! [`HttpConn`] parses requests as a stream (no per-request allocation): request line,
//! `Content-Length`, `Connection`; keep-alive and pipelining (answered in order); 400 for
//! malformed requests, 404 for unknown paths, 405 for other methods, 408 when a request stalls
//! (the caller decides when, see [`HttpConn::timeout`]), 413 for oversized bodies, 431 for
//! oversized heads, 505 for other HTTP versions. It moves bytes through a [`ByteStream`] (a TCP
//! connection, or a TLS session's plaintext side) and never reads more while a response is
//! pending, so a client that pipelines without reading fills its own window, not our memory.
//!
//! What is served is up to a [`Handler`]: the built-in [`StaticPage`] and [`Directory`], or the
//! user's own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The page served at `/` by default.
pub const DEFAULT_PAGE: &[u8] = b"<!doctype html>\n<html><head><title>handshake</title></head>\n<body><h1>Hello from handshake</h1>\n<p>This page crossed a user-space TCP/IP stack on AF_XDP.</p></body></html>\n";

/// Longest request target accepted (longer is answered 414).
const MAX_PATH: usize = 256;
/// Longest line kept (request line or header line); only prefixes of header lines matter.
const MAX_LINE: usize = MAX_PATH + 32;

/// Size limits of requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head (request line + headers) accepted; longer gets 431.
    pub max_head: usize,
    /// Largest request body accepted (and discarded); larger gets 413.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8192,
            max_body: 1 << 20,
        }
    }
}

/// Response statuses the responder sends, in the order of [`HttpStats::status`].
pub const STATUSES: [(u16, &str); 9] = [
    (200, "OK"),
    (400, "Bad Request"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
    (408, "Request Timeout"),
    (413, "Content Too Large"),
    (414, "URI Too Long"),
    (431, "Request Header Fields Too Large"),
    (505, "HTTP Version Not Supported"),
];

/// Counters of an HTTP service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Connections accepted.
    pub conns: u64,
    /// Responses by status, in the order of [`STATUSES`].
    pub status: [u64; 9],
}

impl HttpStats {
    /// Responses sent with `code`.
    pub fn responses(&self, code: u16) -> u64 {
        STATUSES
            .iter()
            .position(|(c, _)| *c == code)
            .map_or(0, |i| self.status[i])
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &HttpStats) {
        self.conns += other.conns;
        for (a, b) in self.status.iter_mut().zip(other.status) {
            *a += b;
        }
    }
}

/// A byte stream the responder reads requests from and writes responses to.
pub trait ByteStream {
    /// Reads up to `buf.len()` bytes; 0 when nothing is available now.
    fn recv(&mut self, buf: &mut [u8]) -> usize;
    /// Queues up to `data.len()` bytes; returns how many were taken (0 when full now).
    fn send(&mut self, data: &[u8]) -> usize;
}

/// A resource to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The body (shared, never copied per request).
    pub body: Arc<[u8]>,
    /// The `Content-Type` header value.
    pub content_type: &'static str,
}

/// What the responder serves: maps a GET/HEAD path to a page.
///
/// `path` is the request target's path, percent-decoded, without the query; it always starts
/// with `/`. Returning `None` answers 404. Handlers are shared by all connections of a worker or
/// pool thread, so they must not block.
pub trait Handler: Send + Sync {
    /// The page at `path`, if any.
    fn get(&self, path: &str) -> Option<Page>;
}

/// Serves one page at `/` and `/index.html`.
#[derive(Clone, Debug)]
pub struct StaticPage(pub Page);

impl StaticPage {
    /// An HTML page with `body`.
    pub fn html(body: &[u8]) -> Self {
        StaticPage(Page {
            body: body.into(),
            content_type: "text/html",
        })
    }
}

impl Default for StaticPage {
    fn default() -> Self {
        StaticPage::html(DEFAULT_PAGE)
    }
}

impl Handler for StaticPage {
    fn get(&self, path: &str) -> Option<Page> {
        (path == "/" || path == "/index.html").then(|| self.0.clone())
    }
}

/// Why a [`Directory`] could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// Reading the tree failed.
    #[error("cannot read {path}: {source} (check that --root names a readable directory)")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The tree is larger than the configured bound.
    #[error(
        "{root} holds more than {limit} bytes of files; serve a smaller tree or raise max_bytes"
    )]
    TooLarge {
        /// The root.
        root: PathBuf,
        /// The bound.
        limit: u64,
    },
}

/// Serves the regular files under a directory, loaded into memory once at start (bounded), so
/// that serving never touches the disk. `/` and `/dir/` serve `index.html` of that directory.
/// Only files found under the root at load time exist: there is no way to name anything else
/// (no path traversal), and symbolic links are not followed.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    files: HashMap<String, Page>,
    bytes: u64,
}

impl Directory {
    /// Loads the files under `root`, at most `max_bytes` in total.
    pub fn load(root: &Path, max_bytes: u64) -> Result<Self, DirectoryError> {
        let mut d = Directory::default();
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let io = |source| DirectoryError::Io {
                path: dir.clone(),
                source,
            };
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                let ty = entry.file_type().map_err(io)?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let url = format!("{prefix}/{name}");
                if ty.is_dir() {
                    stack.push((entry.path(), url));
                } else if ty.is_file() {
                    let path = entry.path();
                    let body = std::fs::read(&path).map_err(|source| DirectoryError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    d.bytes += body.len() as u64;
                    if d.bytes > max_bytes {
                        return Err(DirectoryError::TooLarge {
                            root: root.to_path_buf(),
                            limit: max_bytes,
                        });
                    }
                    let page = Page {
                        body: body.into(),
                        content_type: content_type(&name),
                    };
                    if name == "index.html" {
                        // `/dir/` names the directory's index (inserted here, so that serving
                        // never builds a string).
                        d.files.insert(format!("{prefix}/"), page.clone());
                    }
                    d.files.insert(url, page);
                }
            }
        }
        Ok(d)
    }

    /// Number of paths served (files, and directories with an `index.html`).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when no file is served.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Total bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Handler for Directory {
    fn get(&self, path: &str) -> Option<Page> {
        self.files.get(path).cloned()
    }
}

/// The content type for a file name, by extension.
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "txt" => "text/plain",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the request line.
    Line,
    /// Reading header lines.
    Headers,
    /// Discarding `n` body bytes.
    Body(u64),
    /// Writing a response; the parser resumes after it.
    Respond,
    /// The connection is finishing (close after the response).
    Done,
}

/// Per-connection responder state (fixed size, recycled between connections).
#[derive(Clone, Debug)]
pub struct HttpConn {
    phase: Phase,
    limits: Limits,
    /// The current line (truncated beyond its capacity; only prefixes matter).
    line: [u8; MAX_LINE],
    line_len: usize,
    line_overflow: bool,
    head_len: usize,
    method_get: bool,
    method_ok: bool,
    path: [u8; MAX_PATH],
    path_len: usize,
    http10: bool,
    keep_alive: bool,
    content_length: u64,
    /// A Content-Length field was seen in this request.
    content_length_seen: bool,
    status: u16,
    /// The response head being sent, its body, and how much of head+body is already queued.
    resp_head: [u8; 256],
    resp_head_len: usize,
    resp_body: Option<Arc<[u8]>>,
    resp_sent: usize,
    close_after: bool,
    /// The peer finished sending: once the input runs dry, the connection is done.
    peer_fin: bool,
    /// Responses queued in full so far (tells one request from the next).
    responses: u64,
    /// Input read and not yet parsed.
    input: Box<[u8]>,
    in_off: usize,
    in_len: usize,
}

impl Default for HttpConn {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl HttpConn {
    /// A fresh state with `limits`.
    pub fn new(limits: Limits) -> Self {
        HttpConn {
            phase: Phase::Line,
            limits,
            line: [0; MAX_LINE],
            line_len: 0,
            line_overflow: false,
            head_len: 0,
            method_get: false,
            method_ok: false,
            path: [0; MAX_PATH],
            path_len: 0,
            http10: false,
            keep_alive: true,
            content_length: 0,
            content_length_seen: false,
            status: 0,
            resp_head: [0; 256],
            resp_head_len: 0,
            resp_body: None,
            resp_sent: 0,
            close_after: false,
            peer_fin: false,
            responses: 0,
            input: vec![0; 2048].into_boxed_slice(),
            in_off: 0,
            in_len: 0,
        }
    }

    /// Makes a recycled state fresh for a new connection (keeps its buffers).
    pub fn reset(&mut self, limits: Limits) {
        self.limits = limits;
        self.reset_request();
        self.resp_head_len = 0;
        self.resp_body = None;
        self.resp_sent = 0;
        self.close_after = false;
        self.peer_fin = false;
        self.in_off = 0;
        self.in_len = 0;
    }

    fn reset_request(&mut self) {
        self.phase = Phase::Line;
        self.line_len = 0;
        self.line_overflow = false;
        self.head_len = 0;
        self.path_len = 0;
        self.content_length = 0;
        self.content_length_seen = false;
        self.status = 0;
        self.keep_alive = true;
        self.http10 = false;
    }

    /// True while a request has begun to arrive and is not read to its end (its deadline runs
    /// from its first byte, not from the latest).
    pub fn in_request(&self) -> bool {
        matches!(self.phase, Phase::Line | Phase::Headers | Phase::Body(_)) && !self.is_idle()
    }

    /// Responses queued in full so far.
    pub fn responses(&self) -> u64 {
        self.responses
    }

    /// Whether bytes moved between `before` (`(in_request, responses)` taken before a service
    /// call) and now restart the request/idle deadline: anything but more of the same request.
    pub fn restarts_deadline(&self, before: (bool, u64)) -> bool {
        !(before.0 && self.in_request() && before.1 == self.responses)
    }

    /// True between requests: nothing of a request has arrived and no response is pending.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Line && self.head_len == 0 && self.in_off >= self.in_len
    }

    /// True once the connection should be closed (after [`HttpConn::service`] returned true).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The peer finished sending: the complete requests still buffered are answered, a partial
    /// one never will be, then the connection finishes.
    pub fn peer_closed(&mut self) {
        self.peer_fin = true;
    }

    /// The caller's deadline passed: a request in progress is answered 408 and the connection
    /// closes; an idle keep-alive connection just finishes. A response being sent is left alone
    /// (its progress is the peer's reading, governed by TCP).
    pub fn timeout(&mut self) {
        match self.phase {
            Phase::Respond | Phase::Done => {}
            _ if self.is_idle() => self.phase = Phase::Done,
            _ => self.fail(408),
        }
    }

    fn fail(&mut self, status: u16) {
        self.status = status;
        self.close_after = true;
        self.phase = Phase::Respond;
    }

    fn request_line(&mut self) {
        if self.line_overflow {
            // The target did not fit: we cannot tell which resource it names (RFC 9112 §3).
            return self.fail(414);
        }
        let line = &self.line[..self.line_len];
        let mut parts = line.split(|b| *b == b' ');
        let (Some(method), Some(path), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.fail(400);
        };
        self.method_get = method == b"GET";
        self.method_ok = self.method_get || method == b"HEAD";
        match version {
            b"HTTP/1.1" => self.http10 = false,
            b"HTTP/1.0" => {
                self.http10 = true;
                self.keep_alive = false;
            }
            v if v.starts_with(b"HTTP/") => {
                self.status = 505;
                self.close_after = true;
            }
            _ => return self.fail(400),
        }
        if path.is_empty() || path[0] != b'/' && path != b"*" {
            return self.fail(400);
        }
        if path.len() > MAX_PATH {
            return self.fail(414);
        }
        let n = path.len();
        self.path[..n].copy_from_slice(path);
        self.path_len = n;
        self.phase = Phase::Headers;
    }

    fn header_line(&mut self) {
        let line = &self.line[..self.line_len];
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return self.fail(400);
        };
        let name = &line[..colon];
        // RFC 9112 §5.1: no whitespace between the name and the colon (nor a folded line,
        // §5.2, which starts with it): answered 400, so that a proxy in front cannot read
        // the field differently.
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return self.fail(400);
        }
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            if self.line_overflow {
                return self.fail(400);
            }
            let Some(n) = parse_u64(value) else {
                return self.fail(400);
            };
            // RFC 9112 §6.3: Content-Length fields that disagree make the framing unknowable
            // (request smuggling): 400. Repeats of the same value are accepted.
            if self.content_length_seen && n != self.content_length {
                return self.fail(400);
            }
            self.content_length_seen = true;
            self.content_length = n;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked request bodies are not supported by this responder.
            self.fail(400);
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_token(value, b"close") {
                self.keep_alive = false;
            } else if contains_token(value, b"keep-alive") {
                self.keep_alive = true;
            }
        }
    }

    /// Consumes input bytes; returns how many were used (stops when a response must be sent).
    fn feed(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            match self.phase {
                Phase::Respond | Phase::Done => return i,
                Phase::Body(left) => {
                    let n = (left.min((data.len() - i) as u64)) as usize;
                    i += n;
                    let left = left - n as u64;
                    self.phase = if left == 0 {
                        Phase::Respond
                    } else {
                        Phase::Body(left)
                    };
                }
                Phase::Line | Phase::Headers => {
                    let b = data[i];
                    i += 1;
                    self.head_len += 1;
                    if self.head_len > self.limits.max_head {
                        self.fail(431);
                        return i;
                    }
                    if b == b'\n' {
                        if self.line_len > 0 && self.line[self.line_len - 1] == b'\r' {
                            self.line_len -= 1;
                        }
                        if self.phase == Phase::Line {
                            if self.line_len == 0 && !self.line_overflow {
                                // Tolerate empty lines before a request (RFC 9112 §2.2).
                                self.head_len = 0;
                                continue;
                            }
                            self.request_line();
                        } else if self.line_len == 0 && !self.line_overflow {
                            // End of the head.
                            if self.status == 0 && self.content_length > self.limits.max_body {
                                self.fail(413);
                                return i;
                            }
                            self.phase = if self.content_length > 0 && self.status == 0 {
                                Phase::Body(self.content_length)
                            } else {
                                Phase::Respond
                            };
                        } else {
                            self.header_line();
                        }
                        self.line_len = 0;
                        self.line_overflow = false;
                    } else if self.line_len < self.line.len() {
                        self.line[self.line_len] = b;
                        self.line_len += 1;
                    } else {
                        self.line_overflow = true;
                    }
                }
            }
        }
        i
    }

    /// Moves the connection forward as far as `io` allows: reads and parses requests, writes
    /// responses. Returns true when the connection is finished and the caller should close it
    /// (after everything queued on `io` is sent).
    pub fn service<S: ByteStream + ?Sized>(
        &mut self,
        io: &mut S,
        handler: &dyn Handler,
        stats: &mut HttpStats,
    ) -> bool {
        loop {
            match self.phase {
                Phase::Done => return true,
                Phase::Respond => {
                    if self.resp_head_len == 0 {
                        self.prepare_response(handler, stats);
                    }
                    // Queue as much of head + body as the stream accepts; resume when called again.
                    let body_len = self.resp_body.as_ref().map_or(0, |b| b.len());
                    let total = self.resp_head_len + body_len;
                    while self.resp_sent < total {
                        let n = if self.resp_sent < self.resp_head_len {
                            io.send(&self.resp_head[self.resp_sent..self.resp_head_len])
                        } else {
                            let body = self.resp_body.as_deref().unwrap_or(&[]);
                            io.send(&body[self.resp_sent - self.resp_head_len..])
                        };
                        if n == 0 {
                            return false;
                        }
                        self.resp_sent += n;
                    }
                    let close = self.close_after || !self.keep_alive;
                    self.responses += 1;
                    self.resp_head_len = 0;
                    self.resp_sent = 0;
                    self.resp_body = None;
                    if close {
                        self.phase = Phase::Done;
                    } else {
                        self.reset_request();
                    }
                }
                _ => {
                    // Parse buffered input first (pipelined requests), then read more.
                    if self.in_off < self.in_len {
                        let (off, len) = (self.in_off, self.in_len);
                        // Move the buffer out while the parser borrows `self` (no copy, no
                        // allocation).
                        let input = std::mem::take(&mut self.input);
                        self.in_off += self.feed(&input[off..len]);
                        self.input = input;
                        continue;
                    }
                    self.in_off = 0;
                    self.in_len = io.recv(&mut self.input);
                    if self.in_len == 0 {
                        if self.peer_fin {
                            self.phase = Phase::Done;
                            return true;
                        }
                        return false;
                    }
                }
            }
        }
    }

    fn prepare_response(&mut self, handler: &dyn Handler, stats: &mut HttpStats) {
        use std::io::Write;
        let mut status = self.status;
        let mut page = None;
        if status == 0 {
            status = if !self.method_ok {
                405
            } else {
                let mut buf = [0u8; MAX_PATH];
                page = decode_path(&self.path[..self.path_len], &mut buf)
                    .and_then(|n| std::str::from_utf8(&buf[..n]).ok())
                    .and_then(|p| handler.get(p));
                if page.is_some() {
                    200
                } else {
                    404
                }
            };
        }
        let idx = STATUSES.iter().position(|(s, _)| *s == status).unwrap_or(1);
        stats.status[idx] += 1;
        let (code, reason) = STATUSES[idx];
        if code >= 400 && code != 404 && code != 405 {
            self.close_after = true;
        }
        let close = self.close_after || !self.keep_alive;
        let (len, ctype) = page
            .as_ref()
            .map_or((0, "text/html"), |p| (p.body.len(), p.content_type));
        let mut w = &mut self.resp_head[..];
        let before = w.len();
        let _ = write!(
            w,
            "HTTP/1.1 {code} {reason}\r\nServer: handshake\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n{}\r\n",
            if close {
                "Connection: close\r\n"
            } else if self.http10 {
                "Connection: keep-alive\r\n"
            } else {
                ""
            }
        );
        self.resp_head_len = before - w.len();
        self.resp_sent = 0;
        self.resp_body = if self.method_get {
            page.map(|p| p.body)
        } else {
            None
        };
    }
}

/// Decodes the path of a request target into `out`: without the query, percent-decoded.
/// Returns its length, or `None` if it is malformed (answered 404). `*` is not a path.
fn decode_path(target: &[u8], out: &mut [u8; MAX_PATH]) -> Option<usize> {
    let raw = target.split(|b| *b == b'?').next().unwrap_or(&[]);
    if raw.first() != Some(&b'/') {
        return None;
    }
    let (mut i, mut n) = (0, 0);
    while i < raw.len() {
        // Decoding only shortens: `n <= i < raw.len() <= MAX_PATH`.
        if raw[i] == b'%' {
            let hex = |j: usize| raw.get(j).and_then(|c| (*c as char).to_digit(16));
            let (h, l) = (hex(i + 1)?, hex(i + 2)?);
            out[n] = (h * 16 + l) as u8;
            i += 3;
        } else {
            out[n] = raw[i];
            i += 1;
        }
        n += 1;
    }
    Some(n)
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &v[s..e.max(s)]
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as u64)
    })
}

fn contains_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|b| *b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory stream: `input` is what the peer sent, `output` what we wrote; `room` bounds
    /// how much `send` takes per call (0 = unbounded), to exercise partial writes.
    #[derive(Default)]
    struct Mem {
        input: Vec<u8>,
        pos: usize,
        chunk: usize,
        output: Vec<u8>,
        room: usize,
    }

    impl ByteStream for Mem {
        fn recv(&mut self, buf: &mut [u8]) -> usize {
            let mut n = buf.len().min(self.input.len() - self.pos);
            if self.chunk > 0 {
                n = n.min(self.chunk);
            }
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            n
        }
        fn send(&mut self, data: &[u8]) -> usize {
            let n = if self.room > 0 {
                data.len().min(self.room)
            } else {
                data.len()
            };
            self.output.extend_from_slice(&data[..n]);
            n
        }
    }

    /// Runs `input` through a fresh connection; returns (status, close, body) per response.
    fn exchange(
        input: &[u8],
        handler: &dyn Handler,
        chunk: usize,
        room: usize,
    ) -> Vec<(u16, bool, Vec<u8>)> {
        let mut h = HttpConn::default();
        let mut io = Mem {
            input: input.to_vec(),
            chunk,
            room,
            ..Mem::default()
        };
        let mut stats = HttpStats::default();
        for _ in 0..100_000 {
            if h.service(&mut io, handler, &mut stats) || io.pos == io.input.len() && h.is_idle() {
                break;
            }
        }
        let out = io.output;
        let mut res = vec![];
        let mut rest = &out[..];
        while !rest.is_empty() {
            let end = rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a head")
                + 4;
            let head = std::str::from_utf8(&rest[..end]).unwrap();
            let code: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let close = head.contains("Connection: close");
            let body_len = if code == 200 {
                len.min(rest.len() - end)
            } else {
                0
            };
            res.push((code, close, rest[end..end + body_len].to_vec()));
            rest = &rest[end + body_len..];
        }
        let total: u64 = stats.status.iter().sum();
        assert_eq!(total as usize, res.len(), "every response is counted once");
        res
    }

    fn page() -> StaticPage {
        StaticPage::html(b"0123456789")
    }

    #[test]
    fn pipelined_keep_alive_requests() {
        let r = exchange(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\n\r\nGET /index.html HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            &page(),
            0,
            0,
        );
        assert_eq!(
            r,
            vec![
                (200, false, b"0123456789".to_vec()),
                (404, false, vec![]),
                (200, true, b"0123456789".to_vec())
            ]
        );
    }

    #[test]
    fn byte_at_a_time_and_one_byte_writes_are_the_same() {
        let req =
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /?q=1 HTTP/1.0\r\n\r\n";
        let whole = exchange(req, &page(), 0, 0);
        assert_eq!(whole, exchange(req, &page(), 1, 1));
        assert_eq!(
            whole,
            vec![
                (200, false, b"0123456789".to_vec()),
                (200, true, b"0123456789".to_vec())
            ]
        );
    }

    #[test]
    fn head_has_length_but_no_body() {
        let mut h = HttpConn::default();
        let mut io = Mem {
            input: b"HEAD / HTTP/1.1\r\n\r\n".to_vec(),
            ..Mem::default()
        };
        let mut stats = HttpStats::default();
        assert!(!h.service(&mut io, &page(), &mut stats));
        let out = String::from_utf8(io.output).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nServer: handshake\r\nContent-Type: text/html\r\nContent-Length: 10\r\n\r\n"
        );
        assert_eq!(stats.responses(200), 1);
    }

    #[test]
    fn errors() {
        let p = page();
        let one = |req: &[u8]| {
            let r = exchange(req, &p, 0, 0);
            r.iter()
                .map(|(c, close, _)| (*c, *close))
                .collect::<Vec<_>>()
        };
        assert_eq!(one(b"GARBAGE\r\n\r\n"), vec![(400, true)]);
        assert_eq!(
            one(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"),
            vec![(405, false)]
        );
        assert_eq!(one(b"GET / HTTP/2.0\r\n\r\n"), vec![(505, true)]);
        assert_eq!(
            one(b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            vec![(413, true)]
        );
        assert_eq!(
            one(b"GET / HTTP/1.1\r\nContent-Length: x1\r\n\r\n"),
            vec![(400, true)]
        );
        assert_eq!(
            one(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            vec![(400, true)]
        );
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..1000 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        assert_eq!(one(&big), vec![(431, true)]);
        assert_eq!(one(b"GET nopath HTTP/1.1\r\n\r\n"), vec![(400, true)]);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1000));
        assert_eq!(one(long.as_bytes()), vec![(414, true)]);
        assert_eq!(one(b"GET /%zz HTTP/1.1\r\n\r\n"), vec![(404, false)]);
    }

    #[test]
    fn limits_are_configurable() {
        let mut h = HttpConn::new(Limits {
            max_head: 64,
            max_body: 4,
        });
        let mut stats = HttpStats::default();
        let mut io = Mem {
            input: b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            ..Mem::default()
        };
        assert!(h.service(&mut io, &page(), &mut stats));
        assert_eq!(stats.responses(413), 1);
        h.reset(Limits {
            max_head: 20,
            max_body: 4,
        });
        let mut io = Mem {
            input: b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec(),
            ..Mem::default()
        };
        assert!(h.service(&mut io, &page(), &mut stats));
        assert_eq!(stats.responses(431), 1);
    }

    #[test]
    fn stalled_request_gets_408_idle_connection_just_closes() {
        let mut stats = HttpStats::default();
        let mut h = HttpConn::default();
        let mut io = Mem {
            input: b"GET / HTTP/1.1\r\nHost: sl".to_vec(),
            ..Mem::default()
        };
        assert!(!h.service(&mut io, &page(), &mut stats));
        assert!(!h.is_idle());
        h.timeout();
        assert!(h.service(&mut io, &page(), &mut stats));
        assert!(String::from_utf8_lossy(&io.output).starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert!(String::from_utf8_lossy(&io.output).contains("Connection: close\r\n"));

        let mut h = HttpConn::default();
        let mut io = Mem {
            input: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            ..Mem::default()
        };
        assert!(!h.service(&mut io, &page(), &mut stats));
        assert!(h.is_idle());
        let before = io.output.len();
        h.timeout();
        assert!(h.service(&mut io, &page(), &mut stats));
        assert_eq!(
            io.output.len(),
            before,
            "an idle connection closes without a response"
        );
        assert_eq!(stats.responses(408), 1);
    }

    #[test]
    fn peer_close_answers_complete_requests_then_finishes() {
        let mut stats = HttpStats::default();
        let mut h = HttpConn::default();
        let mut io = Mem {
            input: b"GET / HTTP/1.1\r\n\r\nGET /".to_vec(),
            ..Mem::default()
        };
        assert!(!h.service(&mut io, &page(), &mut stats));
        h.peer_closed();
        assert!(h.service(&mut io, &page(), &mut stats));
        assert_eq!(stats.responses(200), 1);
        assert_eq!(
            io.output.iter().filter(|b| **b == b'\n').count(),
            5,
            "one response"
        );

        // Requests still buffered when the FIN arrives are all answered first.
        let mut h = HttpConn::default();
        let mut io = Mem {
            input: b"GET / HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n".to_vec(),
            chunk: 4096,
            room: 20,
            ..Mem::default()
        };
        h.peer_closed();
        let mut done = false;
        for _ in 0..100 {
            done = h.service(&mut io, &page(), &mut stats);
            if done {
                break;
            }
        }
        assert!(done);
        assert_eq!((stats.responses(200), stats.responses(404)), (2, 1));
    }

    #[test]
    fn directory_serves_files_and_nothing_else() {
        let root = std::env::temp_dir().join(format!("hs-http-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("index.html"), b"<h1>root</h1>").unwrap();
        std::fs::write(root.join("sub/index.html"), b"sub").unwrap();
        std::fs::write(root.join("sub/a b.txt"), b"space").unwrap();
        std::fs::write(root.join("data.bin"), [0u8, 1, 2]).unwrap();
        let outside = root.with_extension("secret");
        std::fs::write(&outside, b"secret").unwrap();
        let d = Directory::load(&root, 1 << 20).unwrap();
        assert_eq!((d.len(), d.bytes()), (4 + 2, 13 + 3 + 5 + 3));
        assert_eq!(d.get("/").unwrap().body.as_ref(), b"<h1>root</h1>");
        assert_eq!(d.get("/sub/").unwrap().body.as_ref(), b"sub");
        assert_eq!(
            d.get("/data.bin").unwrap().content_type,
            "application/octet-stream"
        );
        assert_eq!(d.get("/sub/a b.txt").unwrap().content_type, "text/plain");
        let r = exchange(b"GET /sub/a%20b.txt HTTP/1.1\r\n\r\n", &d, 0, 0);
        assert_eq!(r, vec![(200, false, b"space".to_vec())]);
        let name = outside.file_name().unwrap().to_str().unwrap();
        for attempt in [
            format!("GET /../{name} HTTP/1.1\r\n\r\n"),
            format!("GET /%2e%2e/{name} HTTP/1.1\r\n\r\n"),
            format!("GET /sub/../../{name} HTTP/1.1\r\n\r\n"),
            "GET //etc/passwd HTTP/1.1\r\n\r\n".to_string(),
            "GET /sub HTTP/1.1\r\n\r\n".to_string(),
        ] {
            assert_eq!(
                exchange(attempt.as_bytes(), &d, 0, 0),
                vec![(404, false, vec![])],
                "{attempt}"
            );
        }
        assert!(matches!(
            Directory::load(&root, 10),
            Err(DirectoryError::TooLarge { limit: 10, .. })
        ));
        let e = Directory::load(&root.join("missing"), 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("--root"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_file(&outside).unwrap();
    }

    /// RFC 9112 §6.3: Content-Length fields that disagree are answered 400 and the rest is not
    /// served as a pipelined request (request smuggling); the same value twice is accepted.
    #[test]
    fn conflicting_content_lengths_are_rejected() {
        let r = exchange(
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\nContent-Length: 0\r\n\r\nGET /index.html HTTP/1.1\r\n\r\n",
            &page(),
            0,
            0,
        );
        let codes: Vec<u16> = r.iter().map(|x| x.0).collect();
        assert_eq!(codes, [400]);
        let r = exchange(
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            &page(),
            0,
            0,
        );
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<u16>>(), [200]);
    }

    /// RFC 9112 §5.1 and §5.2: whitespace before the colon, or a folded line, is answered 400.
    #[test]
    fn whitespace_in_a_field_name_or_a_folded_line_is_rejected() {
        for req in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 27\r\n\r\nGET /index.html HTTP/1.1\r\n\r\n"[..],
            &b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c: d\r\n\r\n"[..],
        ] {
            let r = exchange(req, &page(), 0, 0);
            let codes: Vec<u16> = r.iter().map(|x| x.0).collect();
            assert_eq!(codes, [400], "{}", String::from_utf8_lossy(req));
        }
    }
}
