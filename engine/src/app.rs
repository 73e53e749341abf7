//! Built-in applications on top of [`Tcp`]: a TCP echo service and a plain HTTP/1.1 responder.
//!
//! Apps are driven by TCP [`Event`]s once per batch (not per packet). They never block and never
//! buffer without bound: they read only as much as TCP can accept for sending, so a slow reader
//! closes the receive window instead of growing a queue (backpressure end to end).
//!
//! The HTTP responder parses requests as a stream (no per-request allocation): request line,
//! `Content-Length`, `Connection`; keep-alive and pipelining (answered in order); 400 for
//! malformed requests, 404 for unknown paths, 405 for other methods, 413 for oversized bodies,
//! 431 for oversized headers, 505 for other HTTP versions.

use crate::tcp::{ConnId, Event, Tcp};
use serde::Deserialize;

/// Settings of the built-in apps.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// TCP echo service port.
    pub echo: Option<u16>,
    /// Plain HTTP port.
    pub http: Option<u16>,
    /// The body served at `/` (default: a small HTML page).
    #[serde(skip)]
    pub http_body: Option<Vec<u8>>,
}

/// The page served at `/` by default.
pub const DEFAULT_PAGE: &[u8] = b"<!doctype html>\n<html><head><title>handshake</title></head>\n<body><h1>Hello from handshake</h1>\n<p>This page crossed a user-space TCP/IP stack on AF_XDP.</p></body></html>\n";

/// Longest request head (request line + headers) accepted.
const MAX_HEAD: usize = 8192;
/// Largest request body accepted (and discarded).
const MAX_BODY: u64 = 1 << 20;
/// Longest path remembered.
const MAX_PATH: usize = 128;

/// Counters of the apps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppStats {
    /// Connections accepted by the echo service.
    pub echo_conns: u64,
    /// Bytes echoed.
    pub echo_bytes: u64,
    /// HTTP connections accepted.
    pub http_conns: u64,
    /// HTTP responses by status: 200, 400, 404, 405, 413, 431, 505.
    pub http_status: [u64; 7],
}

const STATUSES: [(u16, &str); 7] = [
    (200, "OK"),
    (400, "Bad Request"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
    (413, "Content Too Large"),
    (431, "Request Header Fields Too Large"),
    (505, "HTTP Version Not Supported"),
];

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

/// Per-connection HTTP parser state (fixed size, recycled).
#[derive(Clone, Debug)]
struct HttpConn {
    phase: Phase,
    /// The current line (truncated beyond its capacity; only prefixes matter).
    line: [u8; 160],
    line_len: usize,
    line_overflow: bool,
    head_len: usize,
    method_get: bool,
    method_head: bool,
    method_ok: bool,
    path: [u8; MAX_PATH],
    path_len: usize,
    http10: bool,
    keep_alive: bool,
    content_length: u64,
    status: u16,
    /// The response head being sent, and how much of head+body is already queued.
    resp_head: [u8; 256],
    resp_head_len: usize,
    resp_sent: usize,
    resp_body: bool,
    close_after: bool,
    /// Input read from TCP and not yet parsed.
    input: Box<[u8]>,
    in_off: usize,
    in_len: usize,
}

impl HttpConn {
    fn new() -> Self {
        HttpConn {
            phase: Phase::Line,
            line: [0; 160],
            line_len: 0,
            line_overflow: false,
            head_len: 0,
            method_get: false,
            method_head: false,
            method_ok: false,
            path: [0; MAX_PATH],
            path_len: 0,
            http10: false,
            keep_alive: true,
            content_length: 0,
            status: 0,
            resp_head: [0; 256],
            resp_head_len: 0,
            resp_sent: 0,
            resp_body: false,
            close_after: false,
            input: vec![0; 2048].into_boxed_slice(),
            in_off: 0,
            in_len: 0,
        }
    }

    /// Makes a recycled state fresh for a new connection (keeps its buffers).
    fn reset_connection(&mut self) {
        self.reset_request();
        self.resp_head_len = 0;
        self.resp_sent = 0;
        self.resp_body = false;
        self.close_after = false;
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
        self.status = 0;
        self.keep_alive = true;
        self.http10 = false;
    }

    fn fail(&mut self, status: u16) {
        self.status = status;
        self.close_after = true;
        self.phase = Phase::Respond;
    }

    fn request_line(&mut self) {
        let line = &self.line[..self.line_len];
        let mut parts = line.split(|b| *b == b' ');
        let (Some(method), Some(path), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.fail(400);
        };
        if self.line_overflow && path.len() + method.len() + 2 >= self.line.len() {
            // The path was cut: we cannot tell which resource it names.
            self.status = 404;
        }
        self.method_get = method == b"GET";
        self.method_head = method == b"HEAD";
        self.method_ok = self.method_get || self.method_head;
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
        let n = path.len().min(MAX_PATH);
        self.path[..n].copy_from_slice(&path[..n]);
        self.path_len = n;
        self.phase = Phase::Headers;
    }

    fn header_line(&mut self) {
        let line = &self.line[..self.line_len];
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return self.fail(400);
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            if self.line_overflow {
                return self.fail(400);
            }
            let Some(n) = parse_u64(value) else {
                return self.fail(400);
            };
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
                    if self.head_len > MAX_HEAD {
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
                            if self.status == 0 && self.content_length > MAX_BODY {
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

/// What a connection is attached to.
#[derive(Debug)]
enum Slot {
    Free,
    Echo { peer_closed: bool },
    Http(Box<HttpConn>),
}

/// The built-in apps of one worker.
pub struct Apps {
    echo: Option<u16>,
    http: Option<u16>,
    body: Vec<u8>,
    slots: Vec<Slot>,
    /// Recycled parser states: the boxes move between here and the slots without copying.
    #[allow(clippy::vec_box)]
    spare_http: Vec<Box<HttpConn>>,
    scratch: Box<[u8]>,
    stats: AppStats,
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apps")
            .field("echo", &self.echo)
            .field("http", &self.http)
            .finish()
    }
}

impl Apps {
    /// Apps per `cfg`, for a TCP engine of `max_flows` connections.
    pub fn new(cfg: &AppConfig, max_flows: usize) -> Self {
        Apps {
            echo: cfg.echo,
            http: cfg.http,
            body: cfg
                .http_body
                .clone()
                .unwrap_or_else(|| DEFAULT_PAGE.to_vec()),
            slots: (0..max_flows).map(|_| Slot::Free).collect(),
            spare_http: Vec::new(),
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
            stats: AppStats::default(),
        }
    }

    /// Ports to listen on.
    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.echo.into_iter().chain(self.http)
    }

    /// Counters.
    pub fn stats(&self) -> &AppStats {
        &self.stats
    }

    /// Handles one TCP event.
    pub fn handle_event(&mut self, tcp: &mut Tcp, ev: Event) {
        match ev {
            Event::Accepted { conn, listen_port } => {
                let Some(slot) = self.slots.get_mut(conn.index() as usize) else {
                    let _ = tcp.abort(conn);
                    return;
                };
                if Some(listen_port) == self.echo {
                    *slot = Slot::Echo { peer_closed: false };
                    self.stats.echo_conns += 1;
                } else if Some(listen_port) == self.http {
                    let mut h = self
                        .spare_http
                        .pop()
                        .unwrap_or_else(|| Box::new(HttpConn::new()));
                    h.reset_connection();
                    *slot = Slot::Http(h);
                    self.stats.http_conns += 1;
                }
                self.service(tcp, conn);
            }
            Event::Readable { conn } | Event::Writable { conn } => self.service(tcp, conn),
            Event::PeerClosed { conn } => {
                match self.slots.get_mut(conn.index() as usize) {
                    Some(Slot::Echo { peer_closed }) => *peer_closed = true,
                    Some(Slot::Http(h)) => {
                        if h.phase == Phase::Line && h.line_len == 0 {
                            h.phase = Phase::Done;
                        } else {
                            h.close_after = true;
                        }
                    }
                    _ => {}
                }
                self.service(tcp, conn);
            }
            Event::Closed { conn, .. } => {
                if let Some(slot) = self.slots.get_mut(conn.index() as usize) {
                    if let Slot::Http(h) = std::mem::replace(slot, Slot::Free) {
                        self.spare_http.push(h);
                    } else {
                        *slot = Slot::Free;
                    }
                }
            }
            Event::Connected { .. } => {}
        }
    }

    fn service(&mut self, tcp: &mut Tcp, conn: ConnId) {
        let Some(slot) = self.slots.get_mut(conn.index() as usize) else {
            return;
        };
        match slot {
            Slot::Free => {}
            Slot::Echo { peer_closed } => {
                loop {
                    let cap = tcp.send_capacity(conn).unwrap_or(0);
                    if cap == 0 {
                        break;
                    }
                    let want = cap.min(self.scratch.len());
                    let n = match tcp.recv(conn, &mut self.scratch[..want]) {
                        Ok(n) if n > 0 => n,
                        _ => break,
                    };
                    let sent = tcp.send(conn, &self.scratch[..n]).unwrap_or(0);
                    debug_assert_eq!(sent, n, "send capacity was checked");
                    self.stats.echo_bytes += sent as u64;
                    if n < want {
                        break; // a short read emptied the receive buffer
                    }
                }
                if *peer_closed && tcp.recv_available(conn).unwrap_or(0) == 0 {
                    let _ = tcp.close(conn);
                }
            }
            Slot::Http(h) => Self::service_http(tcp, conn, h, &self.body, &mut self.stats),
        }
    }

    fn service_http(
        tcp: &mut Tcp,
        conn: ConnId,
        h: &mut HttpConn,
        body: &[u8],
        stats: &mut AppStats,
    ) {
        loop {
            match h.phase {
                Phase::Done => {
                    let _ = tcp.close(conn);
                    return;
                }
                Phase::Respond => {
                    if h.resp_head_len == 0 {
                        Self::prepare_response(h, body.len(), stats);
                    }
                    // Queue as much of head + body as TCP accepts; resume on Writable.
                    let total = h.resp_head_len + if h.resp_body { body.len() } else { 0 };
                    while h.resp_sent < total {
                        let chunk: &[u8] = if h.resp_sent < h.resp_head_len {
                            &h.resp_head[h.resp_sent..h.resp_head_len]
                        } else {
                            &body[h.resp_sent - h.resp_head_len..]
                        };
                        let n = tcp.send(conn, chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        h.resp_sent += n;
                    }
                    let close = h.close_after || !h.keep_alive;
                    h.resp_head_len = 0;
                    h.resp_sent = 0;
                    if close {
                        h.phase = Phase::Done;
                    } else {
                        h.reset_request();
                    }
                }
                _ => {
                    // Parse buffered input first (pipelined requests), then read more. Reading
                    // stops while a response is pending, so a client that pipelines without
                    // reading fills its own window, not our memory.
                    if h.in_off < h.in_len {
                        let (off, len) = (h.in_off, h.in_len);
                        // Move the buffer out while the parser borrows `h` (no copy, no allocation).
                        let input = std::mem::take(&mut h.input);
                        h.in_off += h.feed(&input[off..len]);
                        h.input = input;
                        continue;
                    }
                    h.in_off = 0;
                    h.in_len = tcp.recv(conn, &mut h.input).unwrap_or(0);
                    if h.in_len == 0 {
                        return;
                    }
                }
            }
        }
    }

    fn prepare_response(h: &mut HttpConn, body_len: usize, stats: &mut AppStats) {
        use std::io::Write;
        let mut status = h.status;
        if status == 0 {
            status = if !h.method_ok {
                405
            } else if &h.path[..h.path_len] == b"/" || &h.path[..h.path_len] == b"/index.html" {
                200
            } else {
                404
            };
        }
        let idx = STATUSES.iter().position(|(s, _)| *s == status).unwrap_or(1);
        stats.http_status[idx] += 1;
        let (code, reason) = STATUSES[idx];
        let ok = code == 200;
        let len = if ok { body_len } else { 0 };
        if code >= 400 && code != 404 && code != 405 {
            h.close_after = true;
        }
        let close = h.close_after || !h.keep_alive;
        let mut w = &mut h.resp_head[..];
        let before = w.len();
        let _ = write!(
            w,
            "HTTP/1.1 {code} {reason}\r\nServer: handshake\r\nContent-Type: text/html\r\nContent-Length: {len}\r\n{}\r\n",
            if close { "Connection: close\r\n" } else if h.http10 { "Connection: keep-alive\r\n" } else { "" }
        );
        let n = before - w.len();
        h.resp_head_len = n;
        h.resp_sent = 0;
        h.resp_body = ok && h.method_get;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<(u16, bool)> {
        let mut h = HttpConn::new();
        let mut out = vec![];
        let mut off = 0;
        let mut stats = AppStats::default();
        while off < input.len() {
            off += h.feed(&input[off..]);
            if h.phase == Phase::Respond {
                Apps::prepare_response(&mut h, 10, &mut stats);
                let head = String::from_utf8_lossy(&h.resp_head[..h.resp_head_len]).to_string();
                let code: u16 = head[9..12].parse().unwrap();
                let close = h.close_after || !h.keep_alive;
                out.push((code, close));
                h.resp_head_len = 0;
                if close {
                    break;
                }
                h.reset_request();
            }
        }
        out
    }

    #[test]
    fn pipelined_keep_alive_requests() {
        let r = parse_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(r, vec![(200, false), (404, false), (200, true)]);
    }

    #[test]
    fn byte_at_a_time_is_the_same() {
        let req =
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n";
        let mut h = HttpConn::new();
        let mut codes = vec![];
        let mut stats = AppStats::default();
        for b in req.iter() {
            assert!(h.feed(std::slice::from_ref(b)) <= 1);
            if h.phase == Phase::Respond {
                Apps::prepare_response(&mut h, 0, &mut stats);
                codes.push((h.status, h.keep_alive));
                h.resp_head_len = 0;
                h.reset_request();
            }
        }
        assert_eq!(codes, vec![(0, true), (0, false)]);
    }

    #[test]
    fn errors() {
        assert_eq!(parse_all(b"GARBAGE\r\n\r\n"), vec![(400, true)]);
        assert_eq!(
            parse_all(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"),
            vec![(405, false)]
        );
        assert_eq!(parse_all(b"GET / HTTP/2.0\r\n\r\n"), vec![(505, true)]);
        assert_eq!(
            parse_all(b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            vec![(413, true)]
        );
        assert_eq!(
            parse_all(b"GET / HTTP/1.1\r\nContent-Length: x1\r\n\r\n"),
            vec![(400, true)]
        );
        assert_eq!(
            parse_all(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            vec![(400, true)]
        );
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..1000 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        assert_eq!(parse_all(&big), vec![(431, true)]);
        assert_eq!(parse_all(b"GET nopath HTTP/1.1\r\n\r\n"), vec![(400, true)]);
    }
}
