//! The client side: the browser's part of the seeds' story, on the engine.
//!
//! A [`ClientConn`] is one HTTP/1.1 request over one TCP connection the engine opened
//! ([`crate::tcp::Tcp::connect`]), in the clear or through a TLS client session
//! ([`crate::tls::TlsClientSession`]): it writes the request once the connection (and the TLS
//! handshake) is up, reads the response ([`response`]), then closes (close_notify, FIN). Like
//! the server side it is sans-IO over a [`Transport`]: [`crate::app::Apps`] drives it from TCP
//! events, [`crate::stack::Stack::http_request`] starts it and
//! [`crate::stack::Stack::poll_client_event`] reports how it ended.
//!
//! Name resolution comes first and is the stack's ([`crate::dns`]); the routing decision (on
//! the link or through the gateway) and ARP for the next hop are the stack's too, exactly as
//! for the server side's replies.

pub mod response;
#[cfg(all(feature = "xdp", feature = "trace"))]
pub mod run;

use crate::https::{CipherInput, Transport};
use crate::tcp::CloseReason;
use crate::time::Instant;
use crate::tls::{TlsClientSession, TlsError};
use response::{Response, ResponseError, ResponseLimits, ResponseParser};
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// An `http://` or `https://` URL: what the client needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `https`.
    pub tls: bool,
    /// Host name or IPv4 literal, lowercased.
    pub host: String,
    /// Port (default 80 or 443).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// A URL that does not parse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("bad URL {url:?}: {why}; write http://HOST[:PORT]/PATH or https://HOST[:PORT]/PATH")]
pub struct UrlError {
    url: String,
    why: &'static str,
}

impl FromStr for Url {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| UrlError {
            url: s.to_string(),
            why,
        };
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(err("only http:// and https:// are supported"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') {
            return Err(err("user information is not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| err("the port is not 1-65535"))?,
            ),
            None => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty()
            || host.len() > 253
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(err("the host is not a DNS name or an IPv4 address"));
        }
        let path = path.split('#').next().unwrap_or("");
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(err("the path holds spaces or control characters"));
        }
        Ok(Url {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            write!(f, "{scheme}://{}{}", self.host, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// Why a request failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be opened or ended early.
    #[error("TCP: {0}")]
    Tcp(String),
    /// The TLS session failed (certificate, protocol).
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The response was malformed, too large or cut short.
    #[error("HTTP: {0}")]
    Http(#[from] ResponseError),
    /// The request did not complete within its deadline.
    #[error("no complete response within {0:?}: the server or the path to it is too slow (raise --timeout)")]
    Timeout(std::time::Duration),
}

impl ClientError {
    /// The TCP connection ended for `reason` before the response was complete.
    pub fn closed(reason: CloseReason) -> Self {
        ClientError::Tcp(match reason {
            CloseReason::Refused => "connection refused: nothing listens on that port".into(),
            CloseReason::Timeout => {
                "no answer: retransmissions exhausted (is the host or its gateway reachable?)"
                    .into()
            }
            CloseReason::Reset => "the server reset the connection".into(),
            other => format!("the connection ended early ({other:?})"),
        })
    }
}

/// What a request tells when it ends.
#[derive(Debug)]
pub struct ClientEvent {
    /// The tag given with the request.
    pub tag: u64,
    /// The response, or why there is none.
    pub result: Result<Response, ClientError>,
    /// Whether the TLS session was resumed (None: plain HTTP or no handshake).
    pub resumed: Option<bool>,
    /// The connection ends after this request (its last, or a failure).
    pub last: bool,
    /// When the request started: the connection's opening for its first request, the previous
    /// response's end for the next ones on a keep-alive connection (engine clock).
    pub started_at: Instant,
    /// When the connection was established (engine clock).
    pub connected_at: Option<Instant>,
    /// When the TLS handshake finished (or the connection was established, without TLS).
    pub handshake_at: Option<Instant>,
    /// When the response was complete (or the request failed).
    pub done_at: Instant,
}

/// A request to make.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// What to get.
    pub url: Url,
    /// HEAD instead of GET.
    pub head: bool,
    /// Response bounds.
    pub limits: ResponseLimits,
    /// Returned in the [`ClientEvent`]s.
    pub tag: u64,
    /// Each request (connection and handshake included for the first) must finish within
    /// this.
    pub timeout: std::time::Duration,
    /// Requests to make one after another on the connection (keep-alive; at least 1). The
    /// last asks the server to close; a server that closes earlier ends the series.
    pub requests: u64,
}

/// A finished request, waiting to be reported.
#[derive(Debug)]
struct Done {
    result: Result<Response, ClientError>,
    started_at: Instant,
    done_at: Instant,
    last: bool,
}

/// The requests and responses of one connection, apart from its transport and TLS session.
#[derive(Debug)]
struct Exchange {
    /// The request to send while more follow (`Connection: keep-alive`).
    again: Vec<u8>,
    /// The last request (`Connection: close`).
    last: Vec<u8>,
    /// Bytes of the current request sent.
    sent: usize,
    /// Requests after the current one.
    remaining: u64,
    limits: ResponseLimits,
    head: bool,
    parser: ResponseParser,
    started_at: Instant,
    /// The last response is complete (or the connection failed): close_notify and FIN next.
    closing: bool,
    done: VecDeque<Done>,
}

impl Exchange {
    fn request(&self) -> &[u8] {
        if self.remaining > 0 {
            &self.again
        } else {
            &self.last
        }
    }

    /// The current request ended with `r`: the next one starts on a keep-alive connection,
    /// else the connection closes.
    fn complete(&mut self, now: Instant, r: Result<Response, ClientError>) {
        if self.closing {
            return;
        }
        let go_on = self.remaining > 0 && matches!(&r, Ok(resp) if !resp.close);
        self.done.push_back(Done {
            result: r,
            started_at: self.started_at,
            done_at: now,
            last: !go_on,
        });
        if go_on {
            self.remaining -= 1;
            self.sent = 0;
            self.parser = ResponseParser::new(self.limits, self.head);
            self.started_at = now;
        } else {
            self.closing = true;
        }
    }

    /// Feeds response bytes; completes each response as it becomes whole.
    fn feed(&mut self, now: Instant, mut data: &[u8]) {
        while !data.is_empty() && !self.closing {
            match self.parser.feed(data) {
                Ok(n) => {
                    data = &data[n..];
                    if self.parser.is_done() {
                        let r = self.parser.take();
                        self.complete(now, Ok(r));
                    }
                }
                Err(e) => self.complete(now, Err(e.into())),
            }
        }
    }

    /// The stream ended: a close-delimited body completes, anything else fails.
    fn end_of_stream(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        let r = self.parser.finish().map(|_| self.parser.take());
        self.complete(now, r.map_err(Into::into));
    }
}

/// One connection's requests. See the [module docs](self).
pub struct ClientConn {
    tls: Option<TlsClientSession>,
    x: Exchange,
    input: CipherInput,
    /// The server finished sending (TCP FIN).
    eof: bool,
    tag: u64,
    timeout: std::time::Duration,
    connected_at: Option<Instant>,
    handshake_at: Option<Instant>,
}

impl fmt::Debug for ClientConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConn")
            .field("tag", &self.tag)
            .field("tls", &self.tls.is_some())
            .field("sent", &self.x.sent)
            .field("remaining", &self.x.remaining)
            .field("eof", &self.eof)
            .field("closing", &self.x.closing)
            .finish()
    }
}

impl ClientConn {
    /// The requests of `req`, started at `now`, through `tls` when given (made for the URL's
    /// host by the caller).
    pub fn new(req: &ClientRequest, tls: Option<TlsClientSession>, now: Instant) -> Self {
        let method = if req.head { "HEAD" } else { "GET" };
        let host = if req.url.port == if req.url.tls { 443 } else { 80 } {
            req.url.host.clone()
        } else {
            format!("{}:{}", req.url.host, req.url.port)
        };
        let request = |connection: &str| {
            format!(
                "{method} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: handshake/{}\r\nAccept: */*\r\nConnection: {connection}\r\n\r\n",
                req.url.path,
                env!("CARGO_PKG_VERSION")
            )
            .into_bytes()
        };
        ClientConn {
            tls,
            x: Exchange {
                again: request("keep-alive"),
                last: request("close"),
                sent: 0,
                remaining: req.requests.max(1) - 1,
                limits: req.limits,
                head: req.head,
                parser: ResponseParser::new(req.limits, req.head),
                started_at: now,
                closing: false,
                done: VecDeque::new(),
            },
            input: CipherInput::default(),
            eof: false,
            tag: req.tag,
            timeout: req.timeout,
            connected_at: None,
            handshake_at: None,
        }
    }

    /// How long the whole request may take.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// The TCP connection is established.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at.get_or_insert(now);
        if self.tls.is_none() {
            self.handshake_at.get_or_insert(now);
        }
    }

    /// The server finished sending (TCP FIN).
    pub fn transport_closed(&mut self) {
        self.eof = true;
    }

    /// True once the last request has its outcome (the connection may still be closing).
    pub fn is_finished(&self) -> bool {
        self.x.closing
    }

    /// When the current request started (its deadline runs from there).
    pub fn request_started(&self) -> Instant {
        self.x.started_at
    }

    /// Ends the current request with `err` (and the connection with it) unless it is over.
    pub fn fail(&mut self, now: Instant, err: ClientError) {
        self.x.remaining = 0;
        self.x.complete(now, Err(err));
    }

    /// The next finished request to report.
    pub fn take_event(&mut self) -> Option<ClientEvent> {
        let d = self.x.done.pop_front()?;
        Some(ClientEvent {
            tag: self.tag,
            result: d.result,
            resumed: self.tls.as_ref().and_then(|t| t.info()).map(|i| i.resumed),
            last: d.last,
            started_at: d.started_at,
            connected_at: self.connected_at,
            handshake_at: self.handshake_at,
            done_at: d.done_at,
        })
    }

    /// Moves the request forward as far as `io` allows. Returns true when the connection should
    /// be closed (the response is complete or failed, and everything to send was handed over).
    pub fn service<T: Transport + ?Sized>(
        &mut self,
        io: &mut T,
        now: Instant,
        scratch: &mut [u8],
    ) -> bool {
        if self.connected_at.is_none() {
            return false;
        }
        if self.tls.is_some() {
            self.service_tls(io, now, scratch)
        } else {
            self.service_plain(io, now, scratch)
        }
    }

    fn service_plain<T: Transport + ?Sized>(
        &mut self,
        io: &mut T,
        now: Instant,
        scratch: &mut [u8],
    ) -> bool {
        let x = &mut self.x;
        loop {
            if x.sent < x.request().len() {
                let n = io.send(&x.request()[x.sent..]);
                x.sent += n;
            }
            let n = io.recv(scratch);
            if n == 0 || x.closing {
                break;
            }
            x.feed(now, &scratch[..n]);
        }
        if self.eof {
            x.end_of_stream(now);
        }
        x.closing
    }

    fn service_tls<T: Transport + ?Sized>(
        &mut self,
        io: &mut T,
        now: Instant,
        scratch: &mut [u8],
    ) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return true;
        };
        let x = &mut self.x;
        loop {
            let mut progress = CipherInput::send(tls, io, scratch);
            if tls.is_dead() || x.closing {
                // Only the alert or close_notify remained to send.
                return !tls.has_ciphertext();
            }
            match self.input.receive(tls, io) {
                Ok(took) => progress |= took,
                Err(e) => {
                    // The session queued its alert: it goes out on the next pass.
                    x.complete(now, Err(e.into()));
                    continue;
                }
            }
            if tls.is_handshaking() {
                if self.eof && self.input.finished() {
                    x.complete(
                        now,
                        Err(ClientError::Tcp(
                            "the server closed the connection during the TLS handshake".into(),
                        )),
                    );
                    continue;
                }
                if !progress {
                    return false;
                }
                continue;
            }
            self.handshake_at.get_or_insert(now);
            loop {
                if x.sent < x.request().len() {
                    let n = tls.write_plaintext(&x.request()[x.sent..]);
                    x.sent += n;
                    progress |= n > 0;
                }
                let n = tls.read_plaintext(scratch);
                if n == 0 || x.closing {
                    break;
                }
                progress = true;
                x.feed(now, &scratch[..n]);
            }
            if tls.peer_closed() || (self.eof && self.input.finished()) {
                x.end_of_stream(now);
            }
            if x.closing {
                tls.close();
                progress = true;
            }
            if !progress {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u: Url = "https://WWW.Example.test/a/b?c=d#frag".parse().unwrap();
        assert_eq!(
            u,
            Url {
                tls: true,
                host: "www.example.test".into(),
                port: 443,
                path: "/a/b?c=d".into()
            }
        );
        assert_eq!(u.to_string(), "https://www.example.test/a/b?c=d");
        let u: Url = "http://198.18.0.1:8080".parse().unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 8080, "/"));
        assert_eq!(u.to_string(), "http://198.18.0.1:8080/");
        let u: Url = "http://h?x".parse().unwrap();
        assert_eq!(u.path, "/?x");
        for bad in [
            "ftp://x/",
            "https://",
            "https://a:0/",
            "https://a:99999/",
            "https://u@h/",
            "https://h h/",
            "https://h/a b",
            "www.example.test",
        ] {
            let e = bad.parse::<Url>().unwrap_err().to_string();
            assert!(e.contains("write http://"), "{bad}: {e}");
        }
    }
}
